"""Model URIs: what ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/NAME/latest`` and ``runs:/RUN_ID/PATH`` name, and the registered version each
points at; every lookup that finds nothing says what exists instead."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.entities import model_registry
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

URI_FORMS = ("models:/NAME@ALIAS, models:/NAME/VERSION, models:/NAME/latest or "
             "runs:/RUN_ID/model")
LATEST = "latest"  # MLflow's models:/NAME/latest: the highest version number


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


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client of the model registry at ``tracking_uri``, for callers outside the service
    (the registry job), which reach MLflow only through this package."""
    return MlflowClient(tracking_uri)


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


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string (``name = 'x'``); a value holding both
    quote characters cannot be written in one, and is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ModelNotFound(f"{value}: holds both ' and \", which an MLflow search cannot match")


def newest_version(client: MlflowClient, *, name: str | None = None,
                   run_id: str | None = None) -> ModelVersion | None:
    """The highest-numbered version of model ``name``, or registered from run ``run_id``,
    or both; None when there is none."""
    conditions = [f"{key} = {filter_value(value)}"
                  for key, value in (("name", name), ("run_id", run_id)) if value is not None]
    if not conditions:
        raise ValueError("newest_version: give a model name, a run id or both")
    versions = client.search_model_versions(" and ".join(conditions))
    return max(versions, key=lambda version: int(version.version), default=None)


def registered_model(client: MlflowClient, name: str,
                     uri: str) -> model_registry.RegisteredModel:
    """Registered model ``name``; raises :class:`ModelNotFound` for ``uri`` naming the
    models that do exist."""
    try:
        return client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        names = [model.name for model in client.search_registered_models(max_results=50)]
        known = ", ".join(sorted(names)) or "none"
        raise ModelNotFound(f"{uri}: no registered model {name!r} (registered models: "
                            f"{known})") from None


def aliases_text(model: model_registry.RegisteredModel) -> str:
    """``@champion -> version 3, @staging -> version 4``, or ``none``."""
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
        newest = newest_version(client, run_id=ref.run_id)
        if newest is not None:
            return newest
        try:
            client.get_run(ref.run_id)
        except mlflow.exceptions.MlflowException:
            raise ModelNotFound(f"{uri}: no run {ref.run_id} in the tracking store") from None
        raise ModelNotFound(f"{uri}: run {ref.run_id} has no registered model version "
                            "(register it, or use the URI with predict/evaluate directly)")
    model = registered_model(client, ref.name, uri)
    if ref.alias is not None:
        if ref.alias not in model.aliases:
            raise ModelNotFound(f"{uri}: model {ref.name!r} has no alias @{ref.alias} (aliases: "
                                f"{aliases_text(model)})")
        return client.get_model_version_by_alias(ref.name, ref.alias)
    if ref.version == LATEST:
        newest = newest_version(client, name=ref.name)
        if newest is None:
            raise ModelNotFound(f"{uri}: model {ref.name!r} has no versions")
        return newest
    try:
        return client.get_model_version(ref.name, ref.version)
    except mlflow.exceptions.MlflowException:
        versions = sorted(int(v.version) for v in
                          client.search_model_versions(f"name = {filter_value(ref.name)}"))
        raise ModelNotFound(f"{uri}: model {ref.name!r} has no version {ref.version} (versions: "
                            f"{', '.join(map(str, versions)) or 'none'})") from None
