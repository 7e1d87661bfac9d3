"""Registering a sweep's best trial when a resumed sweep had already registered it: the
existing version is reported as it stands, nothing is registered twice, and no checkpoint
is read (the trial's Ray folder need not exist any more)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pdml_ray.config import from_dict, resolve_paths
from pdml_ray.data.synthetic import SYNTHETIC_CLASSES
from pdml_ray.models import build_model
from pdml_ray.service.registry.register import RegisteredModel, log_and_register
from pdml_ray.service.tune.register import register_best
from pdml_ray.service.tracking import start_run

NAME = "pdml-scene-parser"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two trials' runs, each with a registered version: the first (val mIoU 0.6) holds
    @champion, the second (0.4) does not."""
    folder = tmp_path_factory.mktemp("sweep_registry")
    cfg = resolve_paths(from_dict({
        "model": {"backbone": "resnet18", "pretrained": None, "head": "linear"},
        "ray": {"storage_path": str(folder / "ray_results")},
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                   "artifact_location": str(folder / "artifacts"), "experiment": "sweep",
                   "registered_model": NAME}}), folder)
    state = build_model(num_classes=len(SYNTHETIC_CLASSES), backbone="resnet18",
                        head="linear").state_dict()
    registered = {}
    for trial, val_miou in (("trial-a", 0.6), ("trial-b", 0.4)):
        run_id = start_run(cfg, ray_run_name=trial)
        registered[trial] = (run_id, log_and_register(cfg, run_id=run_id, state_dict=state,
                                                      val_miou=val_miou))
    return cfg, registered


def row(run_id: str, val_miou: float) -> dict:
    # ray_run_name names no folder: registering anew would have to read its checkpoint.
    return {"run_id": run_id, "val_miou": val_miou, "ray_run_name": "deleted-trial-folder"}


def versions(cfg) -> list[str]:
    return sorted(str(v.version) for v in MlflowClient(cfg.mlflow.tracking_uri)
                  .search_model_versions(f"name = '{NAME}'"))


@pytest.mark.parametrize("trial, val_miou, is_champion", [("trial-a", 0.6, True),
                                                          ("trial-b", 0.4, False)])
def test_an_already_registered_best_trial_is_reported_not_registered_again(
        store, trial, val_miou, is_champion):
    cfg, registered = store
    run_id, first = registered[trial]
    assert first.is_champion is is_champion  # as log_and_register left it
    before = versions(cfg)

    again = register_best(cfg, "resumed-sweep", [row(run_id, val_miou), row("other", 0.1)])

    assert again == RegisteredModel(NAME, first.version, again.model_uri, val_miou, is_champion)
    assert versions(cfg) == before == ["1", "2"]  # no new version
    champion = MlflowClient(cfg.mlflow.tracking_uri).get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == registered["trial-a"][1].version  # the alias did not move
    version = MlflowClient(cfg.mlflow.tracking_uri).get_model_version(NAME, first.version)
    assert version.run_id == run_id and again.model_uri == version.source


def test_a_sweep_without_a_scored_trial_registers_nothing(store):
    cfg, _ = store
    assert register_best(cfg, "empty-sweep", []) is None
    assert register_best(cfg, "failed-sweep", [row("x", float("nan"))]) is None
    assert versions(cfg) == ["1", "2"]
