"""Checking a split before training: every problem of every file, at once, in process and
through ``python -m jobs.check_data`` / ``jobs.prepare_points`` as a user runs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdml_ray.data import SyntheticDataset
from pdml_ray.data.check import by_file, check_item, check_item_header, missing_partners
from pdml_ray.service.train.data_check import check_split
from tests.helpers import run_job

SIZE = 32
RGB_MODE = ("label map PNG has mode RGB; expected a single-channel PNG of class ids "
            "(mode L, P, I;16, I;16L, I;16B, I)")
OUT_OF_RANGE = "label value(s) 200 outside 0..8 (0 and 255: ignore; synthetic has 8 classes)"


def file(root: Path, kind: str, index: int) -> Path:
    folder = {"image": "images", "label": "annotations", "instances": "instances"}[kind]
    suffix = ".jpg" if kind == "image" else ".png"
    return root / folder / "training" / f"synthetic_train_{index:05d}{suffix}"


@pytest.fixture
def broken(synthetic_root, tmp_path) -> Path:
    """The shared scenes with four broken train items: 0 a truncated JPEG (its header intact),
    1 an RGB label map, 2 a label value out of range, 3 a label map of half the height;
    4 and 5 are intact."""
    root = tmp_path / "scenes"
    shutil.copytree(synthetic_root, root)
    image = file(root, "image", 0)
    image.write_bytes(image.read_bytes()[:-300])  # the header intact, the body cut short
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(file(root, "label", 1))
    values = np.array(Image.open(file(root, "label", 2)))
    values[5, 7] = 200
    Image.fromarray(values).save(file(root, "label", 2))
    Image.open(file(root, "label", 3)).resize((SIZE, SIZE // 2), Image.NEAREST).save(
        file(root, "label", 3))
    return root


def expected_full(root: Path) -> list[tuple[str, str]]:
    """What decoding finds, but the truncated JPEG's reason (Pillow's words)."""
    return [
        (str(file(root, "label", 1)), RGB_MODE),
        (str(file(root, "label", 2)), OUT_OF_RANGE),
        (str(file(root, "label", 3)), "label map is 16x32 but image synthetic_train_00003.jpg "
                                      "is 32x32 (HxW)"),
        (str(file(root, "instances", 3)), "instance map is 32x32 but label map "
                                          "synthetic_train_00003.png is 16x32 (HxW)"),
    ]


def test_decoding_finds_every_problem_of_every_item(broken):
    data = SyntheticDataset(broken, "train")
    found = [problem for index in range(len(data)) for problem in check_item(data, index)]
    truncated = [p for p in found if p.path == str(file(broken, "image", 0))]
    assert len(truncated) == 1
    assert truncated[0].problem.startswith("cannot decode image (corrupt or truncated file?): ")
    assert sorted(tuple(p) for p in found if p not in truncated) == expected_full(broken)


def test_headers_find_mode_and_size_but_not_bodies_or_values(broken):
    data = SyntheticDataset(broken, "train")
    found = [tuple(p) for index in range(len(data)) for p in check_item_header(data, index)]
    assert sorted(found) == [
        (str(file(broken, "label", 1)), RGB_MODE),
        (str(file(broken, "label", 3)), "label map is 16x32 but image synthetic_train_00003.jpg "
                                        "is 32x32 (HxW)"),
    ]


def exif_turned(root: Path, index: int) -> tuple[Path, Path]:
    """Item ``index`` as a phone leaves it: the photo stored 24x32 (HxW) with EXIF
    orientation 6 (viewers show it 32x24), its label and instance maps drawn on the
    turned view. Returns the label and instance map paths."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((24, SIZE, 3), np.uint8)).save(file(root, "image", index), exif=exif)
    for kind in ("label", "instances"):
        values = np.array(Image.open(file(root, kind, index)))
        Image.fromarray(values[:, :24]).save(file(root, kind, index))
    return file(root, "label", index), file(root, "instances", index)


def test_headers_say_when_an_exif_orientation_explains_a_size_mismatch(synthetic_root,
                                                                        tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(synthetic_root, root)
    label, instances = exif_turned(root, 2)
    note = ("(HxW); the image carries EXIF orientation 6, so viewers show it turned by 90 "
            "degrees (32x24) while its stored pixels are not: label the stored pixels, or save "
            "the image with the rotation applied (PIL.ImageOps.exif_transpose)")
    data = SyntheticDataset(root, "train")
    assert [tuple(p) for p in check_item_header(data, 2)] == [
        (str(label), f"label map is 32x24 but image synthetic_train_00002.jpg is 24x32 {note}"),
        (str(instances), f"instance map is 32x24 but image synthetic_train_00002.jpg is 24x32 "
                         f"{note}")]
    # The header check and the decoding check (the dataset's own message) say the same.
    assert check_item(data, 2)[0] == check_item_header(data, 2)[0]
    # A mismatch the orientation does not explain says nothing of it.
    Image.open(label).resize((20, 32), Image.NEAREST).save(label)
    assert check_item_header(data, 2)[0].problem == ("label map is 32x20 but image "
                                                     "synthetic_train_00002.jpg is 24x32 (HxW)")


def test_missing_partners_are_all_listed(synthetic_root, tmp_path):
    root = tmp_path / "scenes"
    shutil.copytree(synthetic_root, root)
    file(root, "label", 4).unlink()
    file(root, "image", 5).unlink()
    file(root, "instances", 2).unlink()
    expected = [  # sorted by path: annotations/, images/, instances/
        (str(file(root, "label", 4)), "label map of image synthetic_train_00004.jpg not found"),
        (str(file(root, "image", 5)), "image not found (its label map synthetic_train_00005.png "
                                      "exists)"),
        (str(file(root, "instances", 2)), "instance map of image synthetic_train_00002.jpg not "
                                          "found"),
    ]
    assert sorted(tuple(p) for p in missing_partners(SyntheticDataset, root, "train")) == expected
    check = check_split("synthetic", str(root), "train")
    assert check.items == 0 and sorted(tuple(p) for p in check.problems) == expected


def test_pascal_context_split_list_names_missing_files(make_pascal_context, tmp_path):
    root = make_pascal_context(tmp_path / "pascal", train=4)
    (root / "JPEGImages" / "2008_000001.jpg").unlink()
    (root / "SegmentationClassContext" / "2008_000003.png").unlink()
    check = check_split("pascal_context", str(root), "train")
    assert [tuple(p) for p in check.problems] == [
        (str(root / "JPEGImages" / "2008_000001.jpg"), "image not found (listed in train.txt)"),
        (str(root / "SegmentationClassContext" / "2008_000003.png"),
         "label map not found (listed in train.txt)")]


def test_one_line_per_file():
    from pdml_ray.data.check import FileProblem

    lines = by_file([FileProblem("b.png", "x"), FileProblem("a.jpg", "y"),
                     FileProblem("b.png", "z")])
    assert lines == ["a.jpg: y", "b.png: x; z"]


# -- the jobs, as a user runs them -----------------------------------------------------
def test_check_data_job_reports_every_bad_file_and_fails(broken):
    result = run_job("jobs.check_data", "--dataset", "synthetic", "--root", str(broken),
                     "--split", "train")
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5  # one per file: the JPEG, three label maps, one instance map
    # Sorted by path: annotations/, images/, instances/.
    jpeg = f"error: {file(broken, 'image', 0)}: cannot decode image (corrupt or truncated file?): "
    assert errors[3].startswith(jpeg)
    assert errors[:3] + errors[4:] == [f"error: {path}: {problem}"
                                       for path, problem in expected_full(broken)]
    assert f"synthetic/train at {broken}: checked 6 images and their label maps in " in result.stdout
    assert result.stdout.rstrip().endswith("in this process: 5 files with problems")
    assert "Traceback" not in result.stderr


def test_check_data_job_passes_a_clean_dataset(synthetic_root):
    result = run_job("jobs.check_data", "--dataset", "synthetic", "--root", str(synthetic_root),
                     "--split", "both")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error" not in result.stderr
    assert result.stdout.count(": no files with problems") == 2


def test_prepare_points_checks_images_first_unless_told_not_to(synthetic_root, tmp_path):
    """prepare_points itself reads only label maps: the truncated JPEG is the check's find."""
    root = tmp_path / "scenes"
    shutil.copytree(synthetic_root, root)
    image = file(root, "image", 4)
    image.write_bytes(image.read_bytes()[:-300])  # the header intact, the body cut short
    out = tmp_path / "points.parquet"
    args = ("jobs.prepare_points", "--dataset", "synthetic", "--root", str(root), "--out", str(out))
    refused = run_job(*args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {image}: cannot decode image")
    assert not out.exists()

    skipped = run_job(*args, "--skip-check")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert out.is_file() and "checked" not in skipped.stdout
