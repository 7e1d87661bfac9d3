"""The model registry: logging a trained model as a pyfunc, registering it, guarding the
champion alias; and, for the people who use the model, finding a version by URI,
listing and moving aliases, loading it for prediction, and logging evaluations."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from pdml_ray.config import Config, ConfigError
from pdml_ray.data import dataset_class
from pdml_ray.service.pyfunc_model import CONFIG_FILE, DATA_FOLDER, WEIGHTS_FILE
from pdml_ray.service.tracking import experiment_id, tracking_uri_scope

if TYPE_CHECKING:
    from pdml_ray.inference import SceneParser

log = logging.getLogger(__name__)

VAL_MIOU_TAG = "val_miou"
LOADER_MODULE = "pdml_ray.service.pyfunc_model"

SIGNATURE = ModelSignature(
    # No input schema: the pyfunc checks its input itself (pyfunc_model.as_images), because
    # the scoring server would cast a request to a schema's dtype first (floats to uint8,
    # silently) and a tensor spec cannot accept both (N, H, W, 3) and (H, W, 3).
    # Unnamed output spec: the pyfunc returns a plain array, not {name: array}.
    inputs=None,
    outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]),
)


def input_example() -> np.ndarray:
    """What the logged model shows a user to send: one 16 x 16 RGB image, uint8
    ``(1, 16, 16, 3)`` (MLflow stores it as ``{"inputs": ...}`` JSON beside the model)."""
    return np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)


def _requirements() -> list[str]:
    import PIL
    import pyarrow
    import scipy
    import torchvision
    import yaml

    def pin(name: str, version: str) -> str:
        return f"{name}=={version.split('+')[0]}"

    return [pin("torch", torch.__version__), pin("torchvision", torchvision.__version__),
            pin("numpy", np.__version__), pin("pillow", PIL.__version__),
            pin("pyyaml", yaml.__version__), pin("scipy", scipy.__version__),
            pin("pyarrow", pyarrow.__version__), pin("mlflow", mlflow.__version__)]


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    model_uri: str  # runs:/<run>/model
    val_miou: float
    is_champion: bool


def log_and_register(cfg: Config, *, run_id: str, state_dict: dict, val_miou: float,
                     per_class_iou: list[float] | None = None) -> RegisteredModel:
    """Log the pyfunc into ``run_id``, register it, and move the champion alias if better."""
    dataset = dataset_class(cfg.data.dataset)
    with tempfile.TemporaryDirectory() as folder, tracking_uri_scope(cfg.mlflow.tracking_uri):
        data = Path(folder) / DATA_FOLDER
        data.mkdir()
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, data / WEIGHTS_FILE)
        (data / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
        metadata = {"classes": list(dataset.classes),
                    "palette": [list(color) for color in dataset.palette],
                    "val_miou": val_miou, "per_class_iou": per_class_iou or [],
                    "pdml_ray_version": importlib.metadata.version("pdml_ray")}
        with mlflow.start_run(run_id=run_id, nested=False):
            # Data only, and the name of the loader module: loading runs the installed
            # pdml_ray, not code shipped inside the registry (docs/robustness.md).
            info = mlflow.pyfunc.log_model(
                name="model", loader_module=LOADER_MODULE, data_path=str(data),
                pip_requirements=_requirements(), signature=SIGNATURE,
                input_example=input_example(), metadata=metadata)
        version = mlflow.register_model(info.model_uri, cfg.mlflow.registered_model).version
    client = MlflowClient(cfg.mlflow.tracking_uri)
    name = cfg.mlflow.registered_model
    client.set_model_version_tag(name, version, VAL_MIOU_TAG, f"{val_miou:.6f}")
    promoted = promote_if_better(client, name, version, val_miou, alias=cfg.mlflow.champion_alias)
    return RegisteredModel(name, str(version), info.model_uri, val_miou, promoted)


def champion_score(client: MlflowClient, name: str, alias: str) -> tuple[str, float] | None:
    """(version, val mIoU) of the current alias holder, or None if there is none."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    score = version.tags.get(VAL_MIOU_TAG)
    return version.version, float(score) if score is not None else float("-inf")


def promote_if_better(client: MlflowClient, name: str, version: str, val_miou: float, *,
                      alias: str = "champion") -> bool:
    """Move ``alias`` to ``version`` only if its val mIoU beats the current holder's.

    MLflow has no compare-and-set for aliases: two runs finishing together both read the
    same holder, and the one that writes last wins even if it is the worse. So after
    moving the alias this re-reads it and, if a worse version holds it, puts it on the
    best version registered since the holder that was compared against (any version when
    there was none). Returns whether ``version`` holds the alias at the end.
    """
    current = champion_score(client, name, alias)
    if current is not None and current[1] >= val_miou:
        log.info("%s@%s stays at version %s (val mIoU %.4f >= %.4f)", name, alias, current[0],
                 current[1], val_miou)
        return False
    client.set_registered_model_alias(name, alias, version)
    holder = _settle_alias(client, name, alias, since=current[0] if current else None)
    if holder == str(version):
        log.info("%s@%s -> version %s (val mIoU %.4f)", name, alias, version, val_miou)
    else:
        log.info("%s@%s -> version %s, registered meanwhile with a better val mIoU than "
                 "version %s (%.4f)", name, alias, holder, version, val_miou)
    return holder == str(version)


def _settle_alias(client: MlflowClient, name: str, alias: str, since: str | None,
                  rounds: int = 5) -> str | None:
    """Re-read ``alias`` until it holds the best-scored version newer than ``since``;
    returns the version holding it."""
    holder = None
    for _ in range(rounds):
        scored = [(float(v.tags[VAL_MIOU_TAG]), -int(v.version), str(v.version))
                  for v in client.search_model_versions(f"name = {filter_value(name)}")
                  if VAL_MIOU_TAG in v.tags and (since is None or int(v.version) > int(since))]
        current = champion_score(client, name, alias)
        holder = current[0] if current else None
        if not scored or current is None:  # nothing to compare, or the alias was removed
            return holder
        best_score, _, best = max(scored)  # ties: the older version, as a tie keeps the holder
        if str(holder) == best or current[1] >= best_score:
            return str(holder)
        client.set_registered_model_alias(name, alias, best)
    return str(holder) if holder is not None else None


# -- finding, describing and loading registered models ---------------------------------
class ModelNotFound(FileNotFoundError):
    """A model URI names no model; the message names the URI and what does exist."""


@dataclass(frozen=True)
class ModelRef:
    """The parts of a model URI: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``runs:/RUN_ID/PATH``."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None


URI_FORMS = ("models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest or "
             "runs:/RUN_ID/model")
LATEST = "latest"  # MLflow's models:/NAME/latest: the highest version number


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string (``name = 'x'``); a value holding both
    quote characters cannot be written in one, and is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ModelNotFound(f"{value}: holds both ' and \", which an MLflow search cannot match")


def parse_model_uri(uri: str) -> ModelRef:
    """Split a model URI; raises :class:`ModelNotFound` for any other form."""
    if uri.startswith("models:/"):
        rest = uri[len("models:/"):].strip("/")
        if "@" in rest and "/" not in rest:
            name, alias = rest.split("@", 1)
            if name and alias:
                return ModelRef(uri, name=name, alias=alias)
        elif rest.count("/") == 1:
            name, version = rest.split("/")
            if name and version.isdigit():
                return ModelRef(uri, name=name, version=str(int(version)))
            if name and version == LATEST:
                return ModelRef(uri, name=name, version=LATEST)
    elif uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].strip("/").partition("/")
        if run_id and path:
            return ModelRef(uri, run_id=run_id, path=path)
    raise ModelNotFound(f"{uri}: not a model URI this project reads; use {URI_FORMS}")


def _registered_model(client: MlflowClient, name: str, uri: str):
    try:
        return client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        names = [model.name for model in client.search_registered_models(max_results=50)]
        known = ", ".join(sorted(names)) or "none"
        raise ModelNotFound(f"{uri}: no registered model {name!r} (registered models: "
                            f"{known})") from None


def _aliases_text(model) -> str:
    aliases = sorted(model.aliases.items())
    return ", ".join(f"@{alias} -> version {version}" for alias, version in aliases) or "none"


def resolve_model_version(client: MlflowClient, uri: str) -> ModelVersion:
    """The registered ``ModelVersion`` a model URI points at.

    ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` are looked up directly;
    ``models:/NAME/latest`` and ``runs:/RUN_ID/...`` give the newest version of that
    model or registered from that run.

    Raises:
        ModelNotFound: unknown model, version, alias or run, naming what exists instead.
    """
    ref = parse_model_uri(uri)
    if ref.run_id is not None:
        versions = client.search_model_versions(f"run_id = {filter_value(ref.run_id)}")
        if versions:
            return max(versions, key=lambda version: int(version.version))
        try:
            client.get_run(ref.run_id)
        except mlflow.exceptions.MlflowException:
            raise ModelNotFound(f"{uri}: no run {ref.run_id} in the tracking store") from None
        raise ModelNotFound(f"{uri}: run {ref.run_id} has no registered model version "
                            "(register it, or use the URI with predict/evaluate directly)")
    model = _registered_model(client, ref.name, uri)
    if ref.alias is not None:
        if ref.alias not in model.aliases:
            raise ModelNotFound(f"{uri}: model {ref.name!r} has no alias @{ref.alias} (aliases: "
                                f"{_aliases_text(model)})")
        return client.get_model_version_by_alias(ref.name, ref.alias)
    if ref.version == LATEST:
        versions = client.search_model_versions(f"name = {filter_value(ref.name)}")
        if not versions:
            raise ModelNotFound(f"{uri}: model {ref.name!r} has no versions")
        return max(versions, key=lambda version: int(version.version))
    try:
        return client.get_model_version(ref.name, ref.version)
    except mlflow.exceptions.MlflowException:
        versions = sorted(int(v.version) for v in
                          client.search_model_versions(f"name = {filter_value(ref.name)}"))
        raise ModelNotFound(f"{uri}: model {ref.name!r} has no version {ref.version} (versions: "
                            f"{', '.join(map(str, versions)) or 'none'})") from None


@dataclass(frozen=True)
class VersionRow:
    """One line of ``jobs.registry list``."""

    version: int
    val_miou: float | None
    run_id: str
    created_ms: int
    aliases: tuple[str, ...]


def list_versions(client: MlflowClient, name: str) -> list[VersionRow]:
    """Every version of registered model ``name``, newest first; raises ModelNotFound."""
    model = _registered_model(client, name, f"models:/{name}")
    holders: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        holders.setdefault(str(version), []).append(alias)
    rows = []
    for version in client.search_model_versions(f"name = {filter_value(name)}"):
        score = version.tags.get(VAL_MIOU_TAG)
        rows.append(VersionRow(int(version.version), float(score) if score is not None else None,
                               version.run_id or "", int(version.creation_timestamp or 0),
                               tuple(holders.get(str(version.version), ()))))
    return sorted(rows, key=lambda row: -row.version)


class InvalidAlias(ConfigError):
    """An alias MLflow would refuse; the message says which names it takes."""


ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")


def check_alias(alias: str) -> None:
    """Refuse, before anything is read or moved, an alias MLflow would not store."""
    if ALIAS.fullmatch(alias) is None:
        raise InvalidAlias(f"--alias {alias!r}: an alias is 1 to 255 letters, digits, '_' or "
                           "'-'")
    if alias.lower() == LATEST or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidAlias(f"--alias {alias!r}: reserved by MLflow (models:/NAME/latest and "
                           "version numbers such as v3); choose another name")


def move_alias(client: MlflowClient, uri: str, alias: str) -> tuple[ModelVersion, str | None]:
    """Point ``alias`` at the version ``uri`` names, whatever its score (an explicit
    choice, unlike :func:`promote_if_better`); returns (that version, previous holder's
    version or None)."""
    check_alias(alias)
    version = resolve_model_version(client, uri)
    previous = champion_score(client, version.name, alias)
    client.set_registered_model_alias(version.name, alias, version.version)
    log.info("%s@%s -> version %s (was %s)", version.name, alias, version.version,
             previous[0] if previous else "unset")
    return version, (str(previous[0]) if previous else None)


def remove_alias(client: MlflowClient, name: str, alias: str) -> str:
    """Delete ``alias`` of model ``name``; returns the version that held it."""
    model = _registered_model(client, name, f"models:/{name}@{alias}")
    if alias not in model.aliases:
        raise ModelNotFound(f"models:/{name}@{alias}: model {name!r} has no alias @{alias} "
                            f"(aliases: {_aliases_text(model)})")
    client.delete_registered_model_alias(name, alias)
    return str(model.aliases[alias])


@contextmanager
def _mlflow_scope(tracking_uri: str) -> Iterator[None]:
    """The fluent API pointed at ``tracking_uri`` and artifact downloads without their
    progress bars (they would interleave with the jobs' own), both undone on exit."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with tracking_uri_scope(tracking_uri):
            yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def _download(uri: str, path: str, folder: str) -> Path:
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{path}",
                                                        dst_path=folder))
    except mlflow.exceptions.MlflowException as exc:
        raise ModelNotFound(f"{uri}: {exc.message}") from None


def _model_files(uri: str, folder: str, *names: str) -> tuple[Model, dict[str, Path]]:
    """The model's MLmodel, and the data files ``names`` ("weights", "config")
    downloaded into ``folder``."""
    model = Model.load(_download(uri, MLMODEL_FILE_NAME, folder))
    flavor = model.flavors.get("python_function", {})
    if flavor.get("loader_module") != LOADER_MODULE or "data" not in flavor:
        raise ModelNotFound(f"{uri}: not a pdml_ray scene parser (its pyfunc loader is "
                            f"{flavor.get('loader_module')!r}, not {LOADER_MODULE!r})")
    files = {"weights": WEIGHTS_FILE, "config": CONFIG_FILE}
    return model, {name: _download(uri, f"{flavor['data']}/{files[name]}", folder)
                   for name in names}


def _download_uri(client: MlflowClient, uri: str) -> tuple[str, ModelVersion | None]:
    """(URI to download from, registered version or None): a models:/ URI is pinned to
    its version first, so an alias moving meanwhile cannot mix two versions' files."""
    ref = parse_model_uri(uri)
    if ref.run_id is not None:
        versions = client.search_model_versions(f"run_id = {filter_value(ref.run_id)}")
        return uri, max(versions, key=lambda v: int(v.version)) if versions else None
    version = resolve_model_version(client, uri)
    return f"models:/{version.name}/{version.version}", version


@dataclass(frozen=True)
class LoadedModel:
    """A scene parser read from the registry, and where it came from."""

    parser: SceneParser
    uri: str
    version: ModelVersion | None  # None for a model logged in a run but never registered
    run_id: str | None
    metadata: dict


def load_scene_parser(tracking_uri: str, uri: str, *,
                      device: str | torch.device | None = None) -> LoadedModel:
    """Download a logged model's weights and config and build a :class:`SceneParser`
    on ``device`` (None: a GPU when there is one, else the CPU).

    Only the state_dict and the JSON config are read (``torch.load(weights_only=True)``):
    the model runs on this checkout's code, and nothing pickled is executed.

    Raises:
        ModelNotFound: the URI names no model (the message says what exists).
    """
    # Imported here: it pulls in torchvision, which the registry commands do not need.
    from pdml_ray.inference import SceneParser

    client = MlflowClient(tracking_uri)
    with _mlflow_scope(tracking_uri), tempfile.TemporaryDirectory() as folder:
        source, version = _download_uri(client, uri)
        model, files = _model_files(source, folder, "weights", "config")
        state = torch.load(files["weights"], map_location="cpu", weights_only=True)
        config = json.loads(files["config"].read_text())
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = SceneParser.from_state(state, config, device=device)
    run_id = version.run_id if version is not None else model.run_id
    return LoadedModel(parser, uri, version, run_id, dict(model.metadata or {}))


@dataclass(frozen=True)
class ModelSummary:
    """What ``jobs.registry show`` prints about one registered version."""

    version: ModelVersion
    aliases: tuple[str, ...]
    val_miou: float | None
    metadata: dict  # classes, palette, val_miou, per_class_iou (logged with the model)
    config: dict  # the training config the model was trained with
    run: Run | None  # the source run, None if it was deleted


def describe_model(client: MlflowClient, tracking_uri: str, uri: str) -> ModelSummary:
    """The version ``uri`` points at, with its logged metadata and training config."""
    version = resolve_model_version(client, uri)
    source = f"models:/{version.name}/{version.version}"
    with _mlflow_scope(tracking_uri), tempfile.TemporaryDirectory() as folder:
        model, files = _model_files(source, folder, "config")
        config = json.loads(files["config"].read_text())
    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except mlflow.exceptions.MlflowException:
        run = None
    aliases = client.get_registered_model(version.name).aliases
    score = version.tags.get(VAL_MIOU_TAG)
    return ModelSummary(version, tuple(sorted(a for a, v in aliases.items()
                                              if str(v) == str(version.version))),
                        float(score) if score is not None else None,
                        dict(model.metadata or {}), config, run)


# -- evaluation runs -------------------------------------------------------------------
EVALUATED_MODEL_TAG = "pdml.evaluated_model"
EVALUATED_VERSION_TAG = "pdml.evaluated_version"


def log_evaluation(cfg: Config, loaded: LoadedModel, *, report_dir: str | Path, scores: dict,
                   params: dict[str, str], to_model_run: bool = False) -> str:
    """Log an evaluation's scores and report folder to MLflow; returns the run id.

    By default into a new run of the configured experiment, tagged with the evaluated
    model URI and version; with ``to_model_run`` into the run that trained the model,
    under ``evaluation/<report folder name>``, its metrics prefixed ``eval_``.
    """
    client = MlflowClient(cfg.mlflow.tracking_uri)
    version = loaded.version.version if loaded.version is not None else None
    if to_model_run:
        if loaded.run_id is None:
            raise ModelNotFound(f"{loaded.uri}: the model names no training run to log into")
        run_id = loaded.run_id
    else:
        exp_id = experiment_id(client, cfg.mlflow.experiment, cfg.mlflow.artifact_location)
        tags = {EVALUATED_MODEL_TAG: loaded.uri, "pdml.evaluated_run": loaded.run_id or ""}
        if version is not None:
            tags[EVALUATED_VERSION_TAG] = str(version)
        run_name = f"evaluate-{loaded.version.name}-v{version}" if version else "evaluate"
        run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    names = dataset_class(cfg.data.dataset).classes
    now = int(time.time() * 1000)
    metrics = [Metric("eval_miou", scores["miou"], now, 0),
               Metric("eval_pixel_acc", scores["pixel_acc"], now, 0)]
    metrics += [Metric(f"eval_iou_{_metric_name(name)}", iou, now, 0)
                for name, iou in zip(names, scores["per_class_iou"]) if not math.isnan(iou)]
    for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    artifact_path = f"evaluation/{Path(report_dir).name}" if to_model_run else "evaluation"
    client.log_artifacts(run_id, str(report_dir), artifact_path)
    if not to_model_run:
        client.set_terminated(run_id)
    return run_id


def _metric_name(class_name: str) -> str:
    """A class name as an MLflow metric key (letters, digits, ``_ - . /`` and spaces)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in class_name)
