"""Bad data on Ray: a split checked by Ray tasks, the header check before training, and a
bad file met by a Train worker ending the run at once instead of being retried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pdml_ray.config import dump_config
from pdml_ray.data import DataError, ensure_synthetic, generate_scenes
from pdml_ray.service.train.data_check import as_data_error, check_split
from pdml_ray.service.train.driver import prepare_data
from tests.helpers import job_env, only_run, run_job, tiny_config


def train_file(root: Path, kind: str, index: int) -> Path:
    folder, suffix = {"image": ("images", ".jpg"), "label": ("annotations", ".png")}[kind]
    return root / folder / "training" / f"synthetic_train_{index:05d}{suffix}"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-300])  # the header intact, the body cut short


class _Broken(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise DataError("/data/x.jpg", "cannot decode image (corrupt or truncated file?): boom")


def test_a_data_error_from_a_dataloader_process_is_recognised():
    """torch re-raises a DataLoader process's DataError as RuntimeError (it cannot rebuild
    a two-argument exception); the file and the problem are read back from its text."""
    with pytest.raises(RuntimeError) as raised:
        next(iter(DataLoader(_Broken(), num_workers=1)))
    found = as_data_error(raised.value)
    assert isinstance(found, DataError)
    assert (found.source, found.problem) == ("/data/x.jpg", "cannot decode image (corrupt or "
                                                            "truncated file?): boom")
    assert as_data_error(RuntimeError("CUDA out of memory")) is None


def test_training_reads_every_header_before_workers_start(tmp_path, mlflow_uri):
    cfg = tiny_config(tmp_path, tmp_path / "synthetic", mlflow_uri)
    ensure_synthetic(cfg.data)
    root = Path(cfg.data.root)
    rgb_label = train_file(root, "label", 2)
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(rgb_label)
    short_label = root / "annotations" / "training" / "synthetic_train_00007.png"
    Image.open(short_label).resize((48, 20), Image.NEAREST).save(short_label)
    with pytest.raises(DataError) as refused:
        prepare_data(cfg)
    assert str(refused.value) == (
        f"{rgb_label}: label map PNG has mode RGB; expected a single-channel PNG of class ids "
        f"(mode L, P, I;16, I;16L, I;16B, I) (and 1 more; list them all with `python -m "
        f"jobs.check_data --dataset synthetic --root {root} --split train`)")
    assert not (tmp_path / "ray_results").exists()


@pytest.mark.ray
def test_jobs_train_says_when_an_exif_orientation_explains_a_size_mismatch(tmp_path,
                                                                           job_tmpdir):
    """A phone photo stored 36x48 (HxW) with EXIF orientation 6 (viewers show it 48x36),
    its label and instance maps drawn on the turned view: the header check before any
    worker starts says why the sizes differ, not only that they do."""
    cfg = tiny_config(tmp_path, tmp_path / "synthetic", f"sqlite:///{tmp_path / 'mlflow.db'}",
                      mlflow={"register": False})
    ensure_synthetic(cfg.data)
    root = Path(cfg.data.root)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((36, 48, 3), np.uint8)).save(train_file(root, "image", 1), exif=exif)
    label = train_file(root, "label", 1)
    for path in (label, root / "instances" / "training" / label.name):
        Image.fromarray(np.array(Image.open(path))[:, :36]).save(path)
    config_file = tmp_path / "job.yaml"
    config_file.write_text(dump_config(cfg))

    job = run_job("jobs.train", "--config", str(config_file), "--project-dir", str(tmp_path),
                  env=job_env(job_tmpdir), timeout_s=600)
    assert job.returncode == 2, job.stderr[-3000:]
    assert "Traceback" not in job.stderr
    assert [line for line in job.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {label}: label map is 48x36 but image synthetic_train_00001.jpg is 36x48 "
        "(HxW); the image carries EXIF orientation 6, so viewers show it turned by 90 degrees "
        "(48x36) while its stored pixels are not: label the stored pixels, or save the image "
        "with the rotation applied (PIL.ImageOps.exif_transpose) (and 1 more; list them all "
        f"with `python -m jobs.check_data --dataset synthetic --root {root} --split train`)"]
    assert not (tmp_path / "ray_results").exists()  # no worker started


@pytest.mark.ray
def test_a_split_is_checked_on_ray_tasks(ray_cluster, tmp_path):
    root = tmp_path / "scenes"
    generate_scenes(root, train=6, val=2, size=32, seed=1)
    truncate(train_file(root, "image", 1))
    values = np.array(Image.open(train_file(root, "label", 4)))
    values[0, 0] = 99
    Image.fromarray(values).save(train_file(root, "label", 4))

    on_ray = check_split("synthetic", str(root), "train", local_below=0, chunk_size=2)
    in_process = check_split("synthetic", str(root), "train")
    assert (on_ray.tasks, in_process.tasks, on_ray.items) == (3, 0, 6)
    assert on_ray.problems == in_process.problems
    assert [path for path, _ in on_ray.problems] == [str(train_file(root, "label", 4)),
                                                     str(train_file(root, "image", 1))]
    assert on_ray.problems[0].problem == ("label value(s) 99 outside 0..8 (0 and 255: ignore; "
                                          "synthetic has 8 classes)")


@pytest.mark.ray
def test_a_bad_file_met_by_a_worker_stops_the_run_without_retries(corrupt_jpeg_run):
    """max_failures=2 would start the two workers three times; a DataError starts them once."""
    run = corrupt_jpeg_run
    assert isinstance(run.error, DataError), repr(run.error)
    assert run.error.source == run.image
    assert run.error.problem.startswith("cannot decode image (corrupt or truncated file?): ")
    assert run.cfg.ray.max_failures == 2 and run.workers_started == run.cfg.ray.num_workers
    assert only_run(run.cfg.mlflow.tracking_uri, run.cfg.mlflow.experiment).info.status == "FAILED"
