"""Bad input is refused with a message that names it, through the entry point a user runs.

Each case is one row of docs/robustness.md (input, where it is caught, the exact message).
Jobs run as subprocesses and must print one ``error: ...`` line and exit 2; the Ray-side
cases (bad data found by a Train worker, a diverging loss) must come back through Ray as
that same single line, with the MLflow run marked FAILED.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.cli import run_cli
from pdml_ray.config import dump_config
from pdml_ray.data import generate_scenes
from tests.helpers import only_run, tiny_config

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def job(*args: str, tracking_uri: str | None = None) -> subprocess.CompletedProcess:
    """A job that starts no Ray (it fails before), run as a user runs it; ``tracking_uri``
    as MLFLOW_TRACKING_URI."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


# -- config: refused before anything starts ---------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=0.1"], "train.lrr: unknown key; train accepts supervision, epochs, max_steps, "
                        "batch_size, optimizer, lr, head_lr_mult, momentum, weight_decay, "
                        "poly_power, seed, amp, log_every_steps, eval_every_epochs"),
    (["loss.margin=-1"], "loss.margin: must be >= 0, got -1.0"),
    (["extension.threshold=1.5"], "extension.threshold: must lie in the open interval (0, 1), "
                                  "got 1.5"),
    (["train.batch_size=1", "ray.num_workers=2"],
     "train.batch_size: global batch 1 is smaller than ray.num_workers=2: every worker needs at "
     "least one image"),
], ids=["typo", "negative-margin", "threshold-outside-0-1", "batch-below-workers"])
def test_bad_config_values_are_refused_by_the_train_job(overrides, message, tmp_path):
    result = job("jobs.train", "--project-dir", str(tmp_path),
                 *[arg for item in overrides for arg in ("--set", item)])
    assert error_lines(result) == [f"error: {message}"]
    assert not (tmp_path / "ray_results").exists()


def test_typo_in_a_config_file_names_the_file_and_the_key(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("loss:\n  margn: 12\n")
    result = job("jobs.train", "--config", str(config), "--project-dir", str(tmp_path))
    assert error_lines(result) == [
        f"error: {config}: loss.margn: unknown key; loss accepts margin, alpha, beta, pdml_weight, "
        "pairing, subgroup_size, mining, store_weight, store_capacity, store_max_staleness, "
        "store_samples, store_shards"]


# -- data: refused by prepare_points, and nothing half-written ---------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Read-only synthetic scenes (4 train, 2 val, 32x32); tests break copies of them."""
    root = tmp_path_factory.mktemp("robust") / "scenes"
    generate_scenes(root, train=4, val=2, size=SIZE, seed=0)
    return root


def broken_copy(scenes: Path, tmp_path: Path) -> Path:
    root = tmp_path / "scenes"
    shutil.copytree(scenes, root)
    return root


def prepare_points(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return job("jobs.prepare_points", "--dataset", "synthetic", "--root", str(root),
               "--split", "train", "--out", str(out), *extra)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary file left either


def test_label_png_of_the_wrong_mode(scenes, tmp_path):
    root = broken_copy(scenes, tmp_path)
    label = root / "annotations" / "training" / "synthetic_train_00001.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(label)  # an RGB "label"
    out = tmp_path / "points.parquet"
    assert error_lines(prepare_points(root, out)) == [
        f"error: {label}: label map PNG has mode RGB; expected a single-channel PNG of class ids "
        "(mode L, P, I;16, I;16L, I;16B, I)"]
    assert_nothing_written(out)


def test_label_value_out_of_range_keeps_the_previous_points_file(scenes, tmp_path):
    root = broken_copy(scenes, tmp_path)
    out = tmp_path / "points.parquet"
    assert prepare_points(root, out).returncode == 0
    before = out.read_bytes()
    label = root / "annotations" / "training" / "synthetic_train_00002.png"
    values = np.array(Image.open(label))
    values[0, 0] = 200  # synthetic has 8 classes: stored values 1..8, 0 and 255 ignore
    Image.fromarray(values).save(label)
    assert error_lines(prepare_points(root, out, "--seed", "1")) == [
        f"error: {label}: label value(s) 200 outside 0..8 (0 and 255: ignore; synthetic has 8 "
        "classes)"]
    assert out.read_bytes() == before  # the failed run did not touch the good file
    assert not list(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("rows, message", [
    ("", "points file holds no points"),
    ("synthetic_train_00000,3,32,1\n",
     "image synthetic_train_00000: point (y=3, x=32) lies outside the image of size 32x32 (HxW)"),
    ("not_an_image,3,4,1\n", "1 image id(s) not in the synthetic train split at {root}: "
                             "not_an_image"),
    ("synthetic_train_00000,3,4,12\n", "image synthetic_train_00000: class id 12 outside 0..7"),
    ("synthetic_train_00000,3,4,1\nsynthetic_train_00000,3,4,2\n",
     "image synthetic_train_00000: pixel (y=3, x=4) is labelled with two classes, 1 and 2"),
    ("synthetic_train_00000,3,4,1,9\n",
     "line 2: 5 fields, but the header has 4 (image_id,y,x,class_id)"),
    ("synthetic_train_00000,3,99999999999999999999,1\n",
     "line 2: x = 99999999999999999999 does not fit in a 64-bit integer"),
    (",3,4,1\n", "line 2: empty image_id"),
], ids=["empty", "outside-image", "unknown-image", "class-out-of-range", "pixel-two-classes",
        "extra-field", "beyond-int64", "empty-image-id"])
def test_imported_points_are_checked(rows, message, scenes, tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\n" + rows)
    out = tmp_path / "points.parquet"
    result = prepare_points(scenes, out, "--import", str(clicks))
    assert error_lines(result) == [f"error: {clicks}: {message.format(root=scenes)}"]
    assert_nothing_written(out)


def test_json_clicks_with_a_repeated_image_key_are_refused(scenes, tmp_path):
    clicks = tmp_path / "clicks.json"
    clicks.write_text('{"synthetic_train_00000": [{"y": 1, "x": 1, "cls": 0}], '
                      '"synthetic_train_00000": [{"y": 2, "x": 2, "cls": 1}]}')
    out = tmp_path / "points.parquet"
    assert error_lines(prepare_points(scenes, out, "--import", str(clicks))) == [
        f"error: {clicks}: image synthetic_train_00000 is a key more than once; JSON would keep "
        "only its last list of points: merge them into one"]
    assert_nothing_written(out)


def test_exact_duplicate_clicks_are_dropped_and_counted(scenes, tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\n" + "synthetic_train_00000,3,4,1\n" * 2
                      + "synthetic_train_00001,5,6,2\n" * 3 + "synthetic_train_00002,7,8,3\n")
    out = tmp_path / "points.parquet"
    result = prepare_points(scenes, out, "--import", str(clicks))
    assert result.returncode == 0, result.stderr
    assert ("3 points in 4 train images of synthetic (1 without points; 3 exact duplicate "
            "point(s) dropped)") in result.stdout


def test_label_map_that_is_jpeg_data_named_png(scenes, tmp_path):
    root = broken_copy(scenes, tmp_path)
    label = root / "annotations" / "training" / "synthetic_train_00001.png"
    Image.open(label).save(label, format="JPEG")  # mode L, as an export gone wrong
    out = tmp_path / "points.parquet"
    assert error_lines(prepare_points(root, out)) == [
        f"error: {label}: label map is JPEG data, not PNG (lossy compression has changed its "
        "class ids); save label maps as PNG"]
    assert_nothing_written(out)


def test_image_with_a_broken_header_is_refused_on_import(scenes, tmp_path):
    root = broken_copy(scenes, tmp_path)
    image = root / "images" / "training" / "synthetic_train_00000.jpg"
    image.write_bytes(image.read_bytes()[:20])
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("image_id,y,x,class_id\nsynthetic_train_00000,3,4,1\n")
    out = tmp_path / "points.parquet"
    # --skip-check: the import's own header read, not the full check that runs first.
    assert error_lines(prepare_points(root, out, "--import", str(clicks), "--skip-check")) == [
        f"error: {image}: cannot read image header: not an image file (unknown format or "
        "corrupt header)"]
    assert_nothing_written(out)


def test_label_map_of_another_size_than_its_image(scenes, tmp_path):
    """Images are decoded only when a batch is loaded (in a Train worker); the dataset is
    what raises there, and the corrupt-JPEG test shows how that reaches the user."""
    from pdml_ray.data import SyntheticDataset

    root = broken_copy(scenes, tmp_path)
    label = root / "annotations" / "training" / "synthetic_train_00003.png"
    Image.open(label).resize((SIZE, SIZE // 2), Image.NEAREST).save(label)
    with pytest.raises(ValueError) as refused:
        SyntheticDataset(root, "train").load_pair(3)
    assert str(refused.value) == (f"{label}: label map is 16x32 but image "
                                  "synthetic_train_00003.jpg is 32x32 (HxW)")


def test_unknown_model_uri_is_refused_by_evaluate(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    MlflowClient(uri).search_experiments()  # an empty store
    result = job("jobs.evaluate", "--model", "models:/nope@champion", "--project-dir",
                 str(tmp_path), "--set", f"mlflow.tracking_uri={uri}")
    errors = error_lines(result)
    # jobs.evaluate is being reworked: its wording may change, the one named line may not.
    assert len(errors) == 1 and "models:/nope@champion" in errors[0]


def test_report_folder_that_is_a_file_is_refused_before_evaluating(tmp_path):
    report = tmp_path / "report.md"
    report.write_text("an earlier report")
    store = tmp_path / "m.db"
    result = job("jobs.evaluate", "--report", str(report), "--project-dir", str(tmp_path),
                 "--set", f"mlflow.tracking_uri=sqlite:///{store}")
    assert error_lines(result) == [f"error: {report}: is a file; --report must be a folder"]
    assert report.read_text() == "an earlier report" and not store.exists()


READ_ONLY_JOBS = {
    "predict": ("jobs.predict", "--input", "{photo}", "--out", "{tmp}/out"),
    "evaluate": ("jobs.evaluate", "--report", "{tmp}/report"),
    "registry-list": ("jobs.registry", "list"),
    "registry-show": ("jobs.registry", "show", "models:/pdml-scene-parser/latest"),
}


def read_only_job(name: str, tmp_path: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    args = [arg.format(photo=photo, tmp=tmp_path) for arg in READ_ONLY_JOBS[name]]
    return job(*args, "--project-dir", str(tmp_path), tracking_uri=tracking_uri)


@pytest.mark.parametrize("name", sorted(READ_ONLY_JOBS))
def test_read_only_jobs_against_an_unreachable_server_fail_in_one_line(name, tmp_path):
    # It used to take minutes of MLflow's retries (predict: 509 s) and end in a traceback.
    result = read_only_job(name, tmp_path, "http://127.0.0.1:9")
    assert error_lines(result) == [
        "error: MLflow tracking server http://127.0.0.1:9 is unreachable: <urlopen error "
        "[Errno 111] Connection refused>. Check MLFLOW_TRACKING_URI / mlflow.tracking_uri."]


@pytest.mark.parametrize("name", sorted(READ_ONLY_JOBS))
def test_read_only_jobs_refuse_a_sqlite_store_that_does_not_exist(name, tmp_path):
    # It used to create an empty database (and its folder), then find no model in it.
    missing = tmp_path / "typo" / "mlflow.db"
    result = read_only_job(name, tmp_path, f"sqlite:///{missing}")
    assert error_lines(result) == [
        f"error: MLflow store sqlite:///{missing}: no database file at {missing}; a model is "
        "read from the store training wrote to: check MLFLOW_TRACKING_URI, "
        "mlflow.tracking_uri and --project-dir (the default store is <project dir>/mlflow.db)"]
    assert not missing.parent.exists()


def test_make_synthetic_out_that_is_a_file(tmp_path):
    taken = tmp_path / "scenes"
    taken.write_text("not a folder")
    assert error_lines(job("jobs.make_synthetic", "--out", str(taken), "--train", "1", "--val",
                           "1", "--size", "16")) == [
        f"error: {taken}: is a file; --out must be a folder"]


# -- Ray side: bad data met by a worker, a diverging loss --------------------------------
@pytest.fixture(scope="module")
def train_scenes(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("robust_train") / "synthetic"


@pytest.mark.ray
def test_corrupt_jpeg_met_by_a_worker_is_one_clear_line(corrupt_jpeg_run, capsys):
    """The error of a run whose Train worker met a truncated JPEG, as the job prints it."""
    def main():
        raise corrupt_jpeg_run.error

    capsys.readouterr()  # what Ray and MLflow printed so far
    with pytest.raises(SystemExit) as exited:
        run_cli(main)
    assert exited.value.code == 2
    # The reason after the colon is Pillow's and depends on where the file breaks off.
    assert re.fullmatch(rf"error: {re.escape(corrupt_jpeg_run.image)}: cannot decode image "
                        r"\(corrupt or truncated file\?\): [^\n]+\n", capsys.readouterr().err)
    cfg = corrupt_jpeg_run.cfg
    assert only_run(cfg.mlflow.tracking_uri, cfg.mlflow.experiment).info.status == "FAILED"


@pytest.mark.ray
def test_non_finite_loss_fails_the_job_with_one_line(ray_cluster, tmp_path, train_scenes,
                                                      mlflow_uri, capsys, monkeypatch):
    """``jobs.train`` itself, in this process: it finds the session's Ray initialised and
    trains there (a job under ``ray job submit`` finds its cluster the same way)."""
    import jobs.train

    cfg = tiny_config(tmp_path, train_scenes, mlflow_uri, train={"epochs": 1, "lr": 1e30},
                      ray={"max_failures": 0}, mlflow={"register": False})
    config = tmp_path / "diverge.yaml"
    config.write_text(dump_config(cfg))
    monkeypatch.setattr(sys, "argv", ["python -m jobs.train", "--config", str(config),
                                      "--project-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exited:
        run_cli(jobs.train.main)
    assert exited.value.code == 2
    # Ray forwards the workers' own log lines (their tracebacks among them) to stderr as
    # well; what the job itself says is one line.
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert re.fullmatch(r"error: non-finite loss (nan|inf|-inf) at step \d+ \(epoch 0\); "
                        r"terms: \{.*\}\. Lower train\.lr or loss\.pdml_weight\.", errors[0])
    assert only_run(mlflow_uri, cfg.mlflow.experiment).info.status == "FAILED"
