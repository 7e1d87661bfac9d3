from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pdml_ray.data import (ADE20KDataset, DataError, PointTable, dataset_class, pad_collate,
                           write_points)
from pdml_ray.data.transforms import train_transform

IGNORE = 255
SIZE = 32  # the side of the conftest images


def label_path(root, split_folder, index=1, prefix="ADE_train"):
    return root / "annotations" / split_folder / f"{prefix}_{index:08d}.png"


def test_class_names_palette_and_derived_count():
    cls = dataset_class("ade20k")
    assert cls is ADE20KDataset and cls.num_classes == len(cls.classes) == len(cls.palette) == 150
    assert cls.classes[:3] == ("wall", "building", "sky") and cls.classes[-1] == "flag"
    assert len(set(cls.classes)) == 150
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in cls.palette)


def test_labels_are_remapped_zero_to_ignore_and_k_to_k_minus_one(ade20k_root):
    raw = np.zeros((SIZE, SIZE), dtype=np.uint8)
    raw[:8] = 1
    raw[8:16] = 150
    raw[16:24] = 255
    Image.fromarray(raw).save(label_path(ade20k_root, "validation", prefix="ADE_val"))
    mask = ADE20KDataset(ade20k_root, "val")[0]["mask"]
    assert (mask[:8] == 0).all() and (mask[8:16] == 149).all()
    assert (mask[16:24] == IGNORE).all() and (mask[24:] == IGNORE).all()


def test_root_may_be_the_parent_and_items_have_the_contracted_types(ade20k_root):
    train = ADE20KDataset(ade20k_root.parent, "train")
    assert train.root == ade20k_root and len(train) == 3
    item = train[2]
    assert set(item) == {"image", "point_labels", "mask", "image_index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
    assert item["point_labels"].dtype == item["mask"].dtype == torch.int64
    assert (item["point_labels"] == IGNORE).all()  # no points given
    assert item["image_index"].dtype == torch.int64 and item["image_index"].item() == 2
    val = ADE20KDataset(ade20k_root, "val", max_images=1)
    assert len(val) == 1 and set(val[0]) == {"image", "mask", "image_index"}


def test_train_items_carry_points_and_batch_with_default_collate(ade20k_root):
    train = ADE20KDataset(ade20k_root, "train")
    masks = [train.load_mask(i) for i in range(len(train))]
    points = {}
    for image_id, mask in zip(train.image_ids, masks):
        ys, xs = np.nonzero(mask != IGNORE)
        points[image_id] = np.stack([ys[:3], xs[:3], mask[ys[:3], xs[:3]]], axis=1)
    table = PointTable(points)
    plain = ADE20KDataset(ade20k_root, "train", points=table)
    for index, image_id in enumerate(plain.image_ids):
        point_labels = plain[index]["point_labels"]
        for y, x, cls in table.for_image(image_id):
            assert point_labels[y, x] == cls
        assert (point_labels != IGNORE).sum() == len(table.for_image(image_id))

    torch.manual_seed(0)
    augmented = ADE20KDataset(ade20k_root, "train", points=table,
                              transform=train_transform(crop_size=24, scale_min=0.5, scale_max=1.5))
    batch = next(iter(DataLoader(augmented, batch_size=3)))
    assert batch["image"].shape == (3, 3, 24, 24) and batch["point_labels"].shape == (3, 24, 24)
    assert batch["image_index"].tolist() == [0, 1, 2]
    labelled = batch["point_labels"] != IGNORE
    # Points sit on pixels whose mask class they carry, except where scaling moved the
    # mask boundary; the blocky labels keep that rare.
    agree = (batch["point_labels"][labelled] == batch["mask"][labelled]).float().mean()
    assert agree >= 0.75


def test_val_items_of_different_sizes_batch_with_pad_collate(ade20k_root):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(
        ade20k_root / "images" / "validation" / "ADE_val_00000002.jpg")
    Image.fromarray(np.ones((20, 28), dtype=np.uint8)).save(
        label_path(ade20k_root, "validation", 2, "ADE_val"))
    batch = pad_collate([item for item in ADE20KDataset(ade20k_root, "val")])
    assert batch["image"].shape == (2, 3, SIZE, SIZE)
    assert (batch["mask"][1, 20:] == IGNORE).all() and (batch["mask"][1, :20, :28] == 0).all()


# -- bad input -----------------------------------------------------------------------------
def test_missing_label_map(ade20k_root):
    path = label_path(ade20k_root, "training", 2)
    path.unlink()
    with pytest.raises(DataError,
                       match="label map of image ADE_train_00000002.jpg not found") as info:
        ADE20KDataset(ade20k_root, "train")
    assert str(path) in str(info.value)


def test_missing_image(ade20k_root):
    (ade20k_root / "images" / "training" / "ADE_train_00000003.jpg").unlink()
    with pytest.raises(DataError, match=r"ADE_train_00000003.jpg: image not found"):
        ADE20KDataset(ade20k_root, "train")


def test_size_mismatch(ade20k_root):
    wide = np.ones((SIZE, SIZE + 4), dtype=np.uint8)
    Image.fromarray(wide).save(label_path(ade20k_root, "training", 1))
    data = ADE20KDataset(ade20k_root, "train")
    message = f"label map is {SIZE}x{SIZE + 4} but image ADE_train_00000001.jpg"
    with pytest.raises(DataError, match=message):
        data[0]


def test_label_value_outside_class_range(ade20k_root):
    raw = np.ones((SIZE, SIZE), dtype=np.uint8)
    raw[0, 0] = 151
    path = label_path(ade20k_root, "training", 1)
    Image.fromarray(raw).save(path)
    with pytest.raises(DataError, match=r"label value\(s\) 151 outside 0..150") as info:
        ADE20KDataset(ade20k_root, "train")[0]
    assert str(path) in str(info.value)


def test_rgb_label_png_is_refused(ade20k_root):
    path = label_path(ade20k_root, "training", 1)
    Image.fromarray(np.ones((SIZE, SIZE, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="label map PNG has mode RGB"):
        ADE20KDataset(ade20k_root, "train")[0]


@pytest.mark.parametrize("kind", ["image", "label"])
def test_truncated_files_are_reported(ade20k_root, kind):
    path = (ade20k_root / "images" / "training" / "ADE_train_00000001.jpg" if kind == "image"
            else label_path(ade20k_root, "training", 1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot decode") as info:
        ADE20KDataset(ade20k_root, "train")[0]
    assert str(path) in str(info.value)


def test_empty_split_names_the_folder(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for sub in ("images/training", "annotations/training"):
        (root / sub).mkdir(parents=True)
    with pytest.raises(DataError, match="no .jpg or .jpeg images found") as info:
        ADE20KDataset(root, "train")
    assert str(root / "images" / "training") in str(info.value)
    with pytest.raises(DataError, match="not an ADE20K folder"):
        ADE20KDataset(tmp_path / "nowhere", "train")


def test_points_naming_unknown_images(ade20k_root, tmp_path):
    path = write_points(tmp_path / "p.parquet", {"ADE_train_00000001": [[0, 0, 1]],
                                                 "ADE_train_99999999": [[0, 0, 1]],
                                                 "ADE_val_00000001": [[1, 1, 1]]})
    with pytest.raises(DataError, match="2 image id\\(s\\) not in the ade20k train split") as info:
        ADE20KDataset(ade20k_root, "train", points=tmp_path / "p.parquet")
    assert str(tmp_path / "p.parquet") in str(info.value)
    assert "ADE_train_99999999" in str(info.value)
    assert path.num_points == 3


def test_point_out_of_bounds_names_file_image_and_coordinates(ade20k_root, tmp_path):
    write_points(tmp_path / "p.parquet", {"ADE_train_00000002": [[3, SIZE, 1]]})
    with pytest.warns(UserWarning, match="2 of 3 train images have no points"):
        data = ADE20KDataset(ade20k_root, "train", points=tmp_path / "p.parquet")
    assert (data[0]["point_labels"] == IGNORE).all()
    message = rf"p.parquet: image ADE_train_00000002: point \(y=3, x={SIZE}\)"
    with pytest.raises(DataError, match=message):
        data[1]


def test_points_for_other_classes_are_refused(ade20k_root, tmp_path):
    write_points(tmp_path / "p.parquet", {"ADE_train_00000001": [[0, 0, 1]]},
                 {"classes": ["a", "b"]})
    with pytest.raises(DataError, match="not the 150 classes of ade20k"):
        ADE20KDataset(ade20k_root, "train", points=tmp_path / "p.parquet")


def test_split_must_be_train_or_val(tmp_path, make_ade20k):
    root = make_ade20k(tmp_path, train=1, val=1)
    with pytest.raises(ValueError, match="split"):
        ADE20KDataset(root, "test")


# -- file names and links as users' folders have them ----------------------------------------
def test_upper_case_and_jpeg_suffixes_are_found(ade20k_root):
    images = ade20k_root / "images" / "training"
    (images / "ADE_train_00000001.jpg").rename(images / "ADE_train_00000001.JPG")
    (images / "ADE_train_00000002.jpg").rename(images / "ADE_train_00000002.jpeg")
    data = ADE20KDataset(ade20k_root, "train")
    assert data.image_ids == ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]
    assert data.records[0].image_path.name == "ADE_train_00000001.JPG"
    assert data[1]["image"].shape == (3, SIZE, SIZE)
    twin = (images / "ADE_train_00000003.jpg").read_bytes()
    (images / "ADE_train_00000003.JPEG").write_bytes(twin)
    with pytest.raises(DataError, match="two images share the id ADE_train_00000003: "
                                        "ADE_train_00000003.JPEG and ADE_train_00000003.jpg"):
        ADE20KDataset(ade20k_root, "train")


def test_macos_metadata_files_are_ignored(ade20k_root):
    for folder in ("images", "annotations"):
        suffix = ".jpg" if folder == "images" else ".png"
        (ade20k_root / folder / "training" / f"._ADE_train_00000001{suffix}").write_bytes(
            b"\x00\x05\x16\x07 AppleDouble")
    assert len(ADE20KDataset(ade20k_root, "train")) == 3


def test_broken_symlinks_and_folders_named_like_images_are_reported(ade20k_root):
    images = ade20k_root / "images" / "training"
    broken = images / "ADE_train_00000004.jpg"
    broken.symlink_to(ade20k_root / "elsewhere.jpg")
    with pytest.raises(DataError) as info:
        ADE20KDataset(ade20k_root, "train")
    assert str(info.value) == (f"{broken}: image is a broken symlink (to "
                               f"{ade20k_root / 'elsewhere.jpg'})")
    broken.unlink()
    folder = ade20k_root / "annotations" / "training" / "ADE_train_00000005.png"
    folder.mkdir()
    with pytest.raises(DataError) as info:
        ADE20KDataset(ade20k_root, "train")
    assert str(info.value) == f"{folder}: label map is a folder, not a file"


def test_symlink_loop_is_reported_as_a_loop(ade20k_root):
    label = label_path(ade20k_root, "training", 2)
    label.unlink()
    label.symlink_to(label)
    with pytest.raises(DataError) as info:
        ADE20KDataset(ade20k_root, "train")
    assert str(info.value) == (f"{label}: label map is a symlink loop (the link leads back to "
                               "itself)")


def test_size_mismatch_of_an_exif_rotated_photo_says_exif(ade20k_root):
    """A phone photo stored 24x32 (HxW) with orientation 6 is shown 32x24; a label map
    drawn on what the viewer showed does not fit the stored pixels."""
    image = ade20k_root / "images" / "training" / "ADE_train_00000001.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((24, SIZE, 3), np.uint8)).save(image, exif=exif)
    Image.fromarray(np.ones((SIZE, 24), np.uint8)).save(label_path(ade20k_root, "training", 1))
    with pytest.raises(DataError) as info:
        ADE20KDataset(ade20k_root, "train")[0]
    assert str(info.value) == (
        f"{label_path(ade20k_root, 'training', 1)}: label map is {SIZE}x24 but image "
        f"ADE_train_00000001.jpg is 24x{SIZE} (HxW); the image carries EXIF orientation 6, so "
        f"viewers show it turned by 90 degrees ({SIZE}x24) while its stored pixels are not: "
        "label the stored pixels, or save the image with the rotation applied "
        "(PIL.ImageOps.exif_transpose)")


def test_an_empty_image_id_is_shown_quoted(ade20k_root):
    with pytest.raises(DataError) as info:
        ADE20KDataset(ade20k_root, "train", points=PointTable({"": [[0, 0, 1]]}, source="p.csv"))
    assert str(info.value) == (f"p.csv: 1 image id(s) not in the ade20k train split at "
                               f"{ade20k_root}: ''")
