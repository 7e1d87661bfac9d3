"""Nothing a user loads runs hidden code; no secret reaches a config, a param or a log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

from pdml_ray.config import ConfigError, from_dict, load_config, resolve_paths
from pdml_ray.service.train.checkpoint import (CHECKPOINT_FILE, CheckpointError, load_training_state,
                                         save_training_state)

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Pa55"


class RunsCode:
    """Unpickling this runs a shell command: what a booby-trapped checkpoint would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_holding_pickled_code_is_refused_without_running_it(tmp_path):
    model = nn.Linear(3, 2)
    save_training_state(tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                        scaler=None, step=7, epoch=1, config={"train": {"lr": 0.1}},
                        metrics={"val_miou": 0.5, "per_class_iou": [0.5, float("nan")]})
    state = load_training_state(tmp_path)  # what pdml_ray writes loads with weights_only=True
    assert state["step"] == 7 and torch.equal(state["model"]["weight"], model.weight.detach())

    marker = tmp_path / "code-ran"
    torch.save({**state, "metrics": RunsCode(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: refused to load: it holds Python "
                                              r"objects beyond tensors and plain values "
                                              r"\(found: posix\.system\)"):
        load_training_state(tmp_path)
    assert not marker.exists()


def test_registered_model_is_a_state_dict_and_json_config_only(tmp_path, mlflow_uri):
    from pdml_ray.data import SyntheticDataset
    from pdml_ray.models import build_model
    from pdml_ray.service.registry.register import log_and_register
    from pdml_ray.service.tracking import tracking_uri_scope

    cfg = resolve_paths(from_dict({"mlflow": {"tracking_uri": mlflow_uri,
                                              "artifact_location": str(tmp_path / "artifacts"),
                                              "registered_model": "security-check"}}), tmp_path)
    model = build_model(num_classes=len(SyntheticDataset.classes), backbone=cfg.model.backbone,
                        output_stride=cfg.model.output_stride, head=cfg.model.head)
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("security",
                                          artifact_location=cfg.mlflow.artifact_location)
    run_id = client.create_run(experiment).info.run_id
    registered = log_and_register(cfg, run_id=run_id, state_dict=model.state_dict(), val_miou=0.1)
    with tracking_uri_scope(mlflow_uri):  # models:/ URIs resolve through the global store
        folder = Path(mlflow.artifacts.download_artifacts(registered.model_uri,
                                                          dst_path=str(tmp_path / "model")))

    # Data only: the MLmodel file, environment files, the registry's name/version note,
    # the input example (JSON), a state_dict and the JSON config.
    # No pickle, no source file: nothing that came from the registry is executed.
    files = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert files == {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt",
                     "registered_model_meta", "input_example.json", "serving_input_example.json",
                     "data/scene_parser/weights.pt", "data/scene_parser/config.json"}
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    # The loader is a module of the installed pdml_ray, found by name.
    assert flavor["loader_module"] == "pdml_ray.service.registry.pyfunc_model"
    assert flavor["data"] == "data/scene_parser" and flavor.get("code") is None
    weights = torch.load(folder / "data/scene_parser/weights.pt", weights_only=True)
    assert weights.keys() == model.state_dict().keys()
    config = json.loads((folder / "data/scene_parser/config.json").read_text())
    assert config["mlflow"]["registered_model"] == "security-check"

    # And it loads and predicts through MLflow's own entry point.
    with tracking_uri_scope(mlflow_uri):
        loaded = mlflow.pyfunc.load_model(registered.model_uri)
    image = np.zeros((1, 20, 27, 3), np.uint8)
    assert loaded.predict(image).shape == (1, 20, 27)


@pytest.mark.parametrize("uri", ["https://alice:" + SECRET + "@mlflow.example.com",
                                 "http://alice:" + SECRET + "@10.0.0.5:5000",
                                 "https://" + SECRET + "@mlflow.example.com",
                                 "postgresql://alice:" + SECRET + "@db.example.com/mlflow"])
def test_tracking_uri_with_credentials_is_refused(uri, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"mlflow.tracking_uri={uri}"])
    message = str(refused.value)
    assert message.startswith("mlflow.tracking_uri: holds credentials")
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in message
    assert SECRET not in message

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: holds credentials") as refused:
        resolve_paths(from_dict({}), tmp_path)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("uri", ["https://mlflow.example.com", "http://127.0.0.1:5000",
                                 "sqlite:///runs/mlflow.db", "databricks"])
def test_tracking_uri_without_credentials_is_accepted(uri):
    assert load_config(None, [f"mlflow.tracking_uri={uri}"]).mlflow.tracking_uri == uri


def test_cli_refuses_credentials_in_the_uri_without_echoing_them(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    uri = f"https://alice:{SECRET}@mlflow.example.com"
    job = subprocess.run([sys.executable, "-m", "jobs.train", "--project-dir", str(tmp_path),
                          "--set", f"mlflow.tracking_uri={uri}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 2
    assert job.stderr.splitlines() == [
        "error: mlflow.tracking_uri: holds credentials (user:password@host); keep secrets out of "
        "URIs, configs and logs: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
        "MLFLOW_TRACKING_TOKEN) in the environment and give the URI without them"]
    assert SECRET not in job.stdout + job.stderr


def test_logged_params_and_tags_hold_no_credentials(tmp_path, mlflow_uri, monkeypatch):
    from pdml_ray.service.tracking import start_run

    # Where credentials belong: the environment, read by MLflow's HTTP client.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET + "-token")
    cfg = resolve_paths(from_dict({"mlflow": {"tracking_uri": mlflow_uri,
                                              "experiment": "security"}}), tmp_path)
    run_id = start_run(cfg, ray_run_name="no-secrets")
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.params["mlflow.tracking_uri"] == mlflow_uri
    logged = json.dumps({**run.data.params, **run.data.tags})
    assert SECRET not in logged and "alice" not in logged
