"""``python -m jobs.predict`` on a registered model: here and on Ray tasks, with bad files.

The model is a randomly initialised network logged and registered exactly as training
does it (``log_and_register``): what is tested is the path from the registry to the
PNGs, not the quality of the predictions.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pdml_ray.config import from_dict, resolve_paths
from pdml_ray.data.synthetic import SYNTHETIC_PALETTE
from pdml_ray.models import build_model
from pdml_ray.service.predict import TileBar, collect_inputs, decode_image, output_stems
from pdml_ray.service.registry.register import log_and_register
from pdml_ray.service.tracking import start_run
from tests.helpers import job_env, run_job

NUM_CLASSES = len(SYNTHETIC_PALETTE)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A sqlite store holding models:/pdml-scene-parser@champion (random weights)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = resolve_paths(from_dict({
        "model": {"backbone": "resnet18", "pretrained": None, "head": "linear"},
        "mlflow": {"tracking_uri": uri, "artifact_location": str(folder / "artifacts"),
                   "experiment": "predict"}}), folder)
    model = build_model(num_classes=NUM_CLASSES, backbone="resnet18", head="linear")
    run_id = start_run(cfg, ray_run_name="hand-made")
    log_and_register(cfg, run_id=run_id, state_dict=model.state_dict(), val_miou=0.5)
    return uri


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def check_outputs(out: Path, stem: str, size: tuple[int, int]) -> None:
    """``size`` is (H, W) of the input."""
    classes = Image.open(out / f"{stem}_classes.png")
    assert classes.mode == "P" and classes.size == (size[1], size[0])
    ids = np.asarray(classes)
    assert ids.max() < NUM_CLASSES
    palette = np.asarray(classes.getpalette()[:3 * NUM_CLASSES]).reshape(-1, 3)
    assert np.array_equal(palette, np.asarray(SYNTHETIC_PALETTE))
    overlay = Image.open(out / f"{stem}_overlay.png")
    assert overlay.mode == "RGB"
    assert overlay.width > size[1] and overlay.height >= size[0]  # photo + legend panel


def test_decode_image_gives_rgb_for_every_kind_of_input():
    def encoded(image: Image.Image, **save_args) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", **save_args)
        return buffer.getvalue()

    photo = rgb(9, 14)
    grey = Image.fromarray(photo[..., 0])
    assert np.array_equal(decode_image(encoded(grey)), np.repeat(photo[..., :1], 3, axis=2))
    rgba = Image.fromarray(np.dstack([photo, np.full((9, 14), 7, np.uint8)]))
    assert np.array_equal(decode_image(encoded(rgba)), photo)  # alpha dropped
    deep = Image.fromarray(photo[..., 0].astype(np.uint16) * 257)  # mode "I;16"
    assert np.array_equal(decode_image(encoded(deep))[..., 1], photo[..., 0])  # 16 -> 8 bit
    assert decode_image(encoded(Image.fromarray(photo).convert("P"))).shape == (9, 14, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the viewer turns the image a quarter clockwise
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).shape == (14, 9, 3)
    with pytest.raises(ValueError, match="not an image"):
        decode_image(b"GIF89a but not really")


def test_the_image_bar_moves_within_one_window():
    """What jobs.predict --full-resolution shows while a large photo goes through the
    network in one pass (it used to show 0/1 until the photo was done)."""
    shown = io.StringIO()
    bar = TileBar(delay=0, file=shown, mininterval=0)
    bar(0.25, 1)
    bar(0.5, 1)
    assert "this image (1 window):  25%|" in shown.getvalue()
    assert "this image (1 window):  50%|" in shown.getvalue()
    bar(1, 1)
    assert bar.bar is None  # closed once the image is done: the next one gets a new bar


def test_inputs_and_output_names(tmp_path):
    for name in ("b.jpg", "a.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    found = collect_inputs([tmp_path, tmp_path / "b.jpg", tmp_path / "missing.jpg"])
    assert [path.name for path in found] == ["a.jpg", "a.png", "b.jpg", "missing.jpg"]
    assert output_stems(found) == ["a_jpg", "a_png", "b", "missing"]
    assert output_stems([Path("x/p.jpg"), Path("y/p.jpg")]) == ["p_jpg_1", "p_jpg_2"]
    with pytest.raises(FileNotFoundError, match="no images found"):
        collect_inputs([tmp_path / "sub", tmp_path / "nothing.jpg"])


def test_predict_here_on_mixed_images_reports_the_bad_one(registered, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"odd": (37, 61), "grey": (50, 33), "rgba": (21, 40), "palette": (30, 30)}
    save(photos / "odd.jpg", rgb(*sizes["odd"]))
    save(photos / "grey.png", rgb(*sizes["grey"], seed=1), "L")
    save(photos / "rgba.png", rgb(*sizes["rgba"], seed=2), "RGBA")
    save(photos / "palette.png", rgb(*sizes["palette"], seed=3), "P")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 half a jpeg")
    out = tmp_path / "out"
    before = os.umask(0o022)  # inherited by the job
    try:
        result = run_job("jobs.predict", "--model", "models:/pdml-scene-parser@champion",
                         "--input", str(photos), "--out", str(out), "--tile", "32", "--flip",
                         "--set", f"mlflow.tracking_uri={registered}")
    finally:
        os.umask(before)
    assert result.returncode == 1, result.stderr
    assert f"error: {photos / 'broken.jpg'}: " in result.stderr
    assert f"1 failed: {photos / 'broken.jpg'}" in result.stderr
    assert "4 of 5 images" in result.stdout
    assert "100%" in result.stderr  # the progress bar ran to the end
    for stem, size in sizes.items():
        check_outputs(out, stem, size)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in sizes for kind in ("classes", "overlay"))  # no temp files
    # Readable by others, as open() would write them (not their temporary files' 0600).
    assert {path.stat().st_mode & 0o777 for path in out.iterdir()} == {0o644}


@pytest.mark.ray
def test_predict_a_folder_on_ray_data(registered, tmp_path, job_tmpdir):
    photos = tmp_path / "many"
    photos.mkdir()
    sizes = {f"img{k:02d}": (20 + 3 * k, 41 - 2 * k) for k in range(10)}
    for k, (stem, size) in enumerate(sizes.items()):
        save(photos / f"{stem}.png", rgb(*size, seed=k))
    (photos / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = run_job("jobs.predict", "--input", str(photos), "--out", str(out),
                     "--local-below", "4", "--batch-size", "3", "--actors", "2",
                     "--set", f"mlflow.tracking_uri={registered}", env=job_env(job_tmpdir))
    assert result.returncode == 1, result.stderr
    assert f"error: {photos / 'zz_corrupt.png'}: " in result.stderr
    assert "10 of 11 images" in result.stdout
    assert "11/11" in result.stderr  # progress reached every image, chunk by chunk
    for stem, size in sizes.items():
        check_outputs(out, stem, size)
    assert result.left_running == []  # the job shut its local Ray down


@pytest.mark.ray
def test_an_actor_that_dies_fails_its_own_images_and_no_other(tmp_path, job_tmpdir):
    """An actor process that dies mid-batch (a segfault, the OOM killer) takes its batch's
    images with it; they come back as failed, named, and the other batches are written
    by the actor Ray restarts in its place (on a Ray of its own: see dying_actor_predict)."""
    from pdml_ray.service.infer.predict import LOST_BATCH
    from tests.service.dying_actor_predict import DOOMED

    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    out.mkdir()
    sizes = {f"img{k}": (12 + k, 16) for k in range(3)}
    sources = [save(photos / f"{stem}.png", rgb(*size, seed=k))
               for k, (stem, size) in enumerate(sizes.items())]
    doomed = photos / "img1_doomed.png"  # sorted between img1 and img2: batches either side
    doomed.write_bytes(DOOMED)

    job = run_job("tests.service.dying_actor_predict", str(photos), str(out), str(NUM_CLASSES),
                  env=job_env(job_tmpdir), timeout_s=600)
    assert job.returncode == 0, job.stderr[-3000:]
    outcomes = json.loads(job.stdout.strip().splitlines()[-1])
    assert sorted(source for source, _ in outcomes) == sorted(map(str, [*sources, doomed]))
    assert {source: error for source, error in outcomes if error} == {str(doomed): LOST_BATCH}
    for stem, size in sizes.items():
        check_outputs(out, stem, size)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in sizes for kind in ("classes", "overlay"))


def test_inputs_skip_this_jobs_outputs_and_macos_files_but_keep_odd_entries(tmp_path):
    for name in ("a.jpg", "a_classes.png", "a_overlay.png", "._a.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    names = [path.name for path in collect_inputs([tmp_path], out_dir=tmp_path)]
    assert names == ["a.jpg", "folder.jpg", "gone.png"]  # the last two fail, reported by name
    from pdml_ray.service.predict import read_source

    with pytest.raises(ValueError, match=r"^is a folder, not an image$"):
        read_source(tmp_path / "folder.jpg")
    with pytest.raises(ValueError) as info:
        read_source(tmp_path / "gone.png")
    assert str(info.value) == f"broken symlink (to {tmp_path / 'nowhere.png'})"
    elsewhere = collect_inputs([tmp_path], out_dir=tmp_path / "out")
    assert [path.name for path in elsewhere] == ["a.jpg", "a_classes.png", "a_overlay.png",
                                                 "folder.jpg", "gone.png"]


@pytest.mark.parametrize("where, message", [
    ("file", "{out}: is a file; --out must be a folder"),
    ("under-file", "{out}: cannot create --out there: {file} is a file"),
    ("unwritable", "{out}: cannot write --out there (in /sys/kernel): Permission denied"),
], ids=["file", "under-file", "unwritable"])
def test_bad_out_folder_is_refused_before_the_model_is_loaded(tmp_path, where, message):
    photo = save(tmp_path / "p.png", rgb(8, 8))
    taken = tmp_path / "taken"
    taken.write_text("a file")
    out = {"file": taken, "under-file": taken / "out",
           "unwritable": Path("/sys/kernel/pdml_predictions")}[where]
    store = tmp_path / "never.db"
    result = run_job("jobs.predict", "--model", "models:/nope@champion", "--input", str(photo),
                     "--out", str(out), "--set", f"mlflow.tracking_uri=sqlite:///{store}")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: {message.format(out=out, file=taken)}"]
    assert not store.exists()  # the model was never looked up


def test_predict_twice_into_its_input_folder_does_not_predict_its_outputs(registered, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    save(photos / "street.jpg", rgb(20, 30))
    for _ in range(2):
        result = run_job("jobs.predict", "--input", str(photos), "--out", str(photos),
                         "--set", f"mlflow.tracking_uri={registered}")
        assert result.returncode == 0, result.stderr
        assert "1 of 1 images" in result.stdout
    assert sorted(path.name for path in photos.iterdir()) == [
        "street.jpg", "street_classes.png", "street_overlay.png"]
