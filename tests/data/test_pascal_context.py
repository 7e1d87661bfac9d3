from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pdml_ray.data import DataError, PascalContextDataset, dataset_class

IGNORE = 255
SIZE = 32  # the side of the conftest images


def test_classes_palette_and_count():
    cls = dataset_class("pascal_context")
    assert cls is PascalContextDataset
    assert cls.num_classes == len(cls.classes) == len(cls.palette) == 59
    assert cls.classes[0] == "aeroplane" and cls.classes[-1] == "wood"
    assert "background" not in cls.classes
    assert len(set(cls.classes)) == 59


def test_background_becomes_ignore_and_k_becomes_k_minus_one(pascal_root):
    raw = np.zeros((SIZE, SIZE), dtype=np.uint8)
    raw[:10] = 1
    raw[10:20] = 59
    Image.fromarray(raw).save(pascal_root / "SegmentationClassContext" / "2009_000000.png")
    mask = PascalContextDataset(pascal_root, "val")[0]["mask"]
    assert (mask[:10] == 0).all() and (mask[10:20] == 58).all() and (mask[20:] == IGNORE).all()


def test_value_60_is_out_of_range(pascal_root):
    raw = np.full((SIZE, SIZE), 60, dtype=np.uint8)
    path = pascal_root / "SegmentationClassContext" / "2008_000001.png"
    Image.fromarray(raw).save(path)
    with pytest.raises(DataError, match=r"label value\(s\) 60 outside 0..59") as info:
        PascalContextDataset(pascal_root, "train")[1]
    assert str(path) in str(info.value)


@pytest.mark.parametrize("pointed_at", ["VOC2010", "parent", "VOCdevkit"])
def test_root_variants(tmp_path, make_pascal_context, pointed_at):
    base = tmp_path / "VOCdevkit" if pointed_at == "VOCdevkit" else tmp_path
    voc = make_pascal_context(base, train=2, val=1)
    root = {"VOC2010": voc, "parent": voc.parent, "VOCdevkit": tmp_path}[pointed_at]
    data = PascalContextDataset(root, "train")
    assert data.root == voc and data.image_ids == ["2008_000000", "2008_000001"]


def test_split_file_drives_the_listing(pascal_root):
    split_file = pascal_root / "ImageSets" / "SegmentationContext" / "train.txt"
    split_file.write_text("2008_000002\n\n2008_000000\n")
    assert PascalContextDataset(pascal_root, "train").image_ids == ["2008_000000", "2008_000002"]


def test_missing_split_file_empty_split_and_missing_files(pascal_root):
    split_file = pascal_root / "ImageSets" / "SegmentationContext" / "val.txt"
    split_file.write_text("\n")
    with pytest.raises(DataError, match="lists no images") as info:
        PascalContextDataset(pascal_root, "val")
    assert str(split_file) in str(info.value)
    split_file.unlink()
    with pytest.raises(DataError, match="split file not found"):
        PascalContextDataset(pascal_root, "val")
    (pascal_root / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(DataError, match=r"2008_000001.jpg: image not found \(listed in train"):
        PascalContextDataset(pascal_root, "train")
    (pascal_root / "SegmentationClassContext" / "2008_000000.png").unlink()
    with pytest.raises(DataError, match=r"2008_000000.png: label map not found"):
        PascalContextDataset(pascal_root, "train")


# -- split lists as editors save them ------------------------------------------------------------
def test_byte_order_mark_in_a_split_list_is_stripped(pascal_root):
    split_file = pascal_root / "ImageSets" / "SegmentationContext" / "train.txt"
    split_file.write_bytes("\ufeff2008_000001\r\n2008_000000\r\n".encode("utf-8"))
    assert PascalContextDataset(pascal_root, "train").image_ids == ["2008_000000", "2008_000001"]


def test_split_list_that_is_not_utf8_is_one_clear_error(pascal_root):
    split_file = pascal_root / "ImageSets" / "SegmentationContext" / "train.txt"
    split_file.write_bytes("2008_000000\n2008_00000\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        PascalContextDataset(pascal_root, "train")
    assert str(info.value) == (f"{split_file}: split file is not UTF-8 text (byte 0xe9 at "
                               "offset 22); save it as UTF-8")


def test_split_entry_reaching_outside_the_dataset_is_refused(pascal_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(outside / "x.jpg")
    Image.fromarray(np.ones((SIZE, SIZE), np.uint8)).save(outside / "x.png")
    split_file = pascal_root / "ImageSets" / "SegmentationContext" / "train.txt"
    split_file.write_text("2008_000000\n../../outside/x\n")
    with pytest.raises(DataError) as info:
        PascalContextDataset(pascal_root, "train")
    assert str(info.value) == (f"{split_file}: line 2: '../../outside/x' is a path, not an image "
                               "id; ids are file names without folder or extension "
                               "(e.g. 2008_000002), inside JPEGImages/")


def test_upper_case_suffix_and_symlink_loop_in_pascal(pascal_root):
    images = pascal_root / "JPEGImages"
    (images / "2008_000001.jpg").rename(images / "2008_000001.JPG")
    (images / "._2008_000001.jpg").write_bytes(b"AppleDouble")
    records = PascalContextDataset(pascal_root, "train").records
    assert records[1].image_path.name == "2008_000001.JPG"
    label = pascal_root / "SegmentationClassContext" / "2008_000002.png"
    label.unlink()
    label.symlink_to(label)
    with pytest.raises(DataError) as info:
        PascalContextDataset(pascal_root, "train")
    assert str(info.value) == (f"{label}: label map is a symlink loop (the link leads back to "
                               "itself) (listed in train.txt)")
