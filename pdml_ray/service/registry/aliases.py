"""Moving aliases by hand (``jobs.registry promote`` / ``demote``): an explicit choice,
whatever the scores, unlike the champion rule of :mod:`.register`."""

from __future__ import annotations

import logging
import re

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from pdml_ray.config import ConfigError
from pdml_ray.service.registry.model_uri import (LATEST, ModelNotFound, aliases_text,
                                                 registered_model, resolve_model_version)

log = logging.getLogger(__name__)

ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")


class InvalidAlias(ConfigError):
    """An alias MLflow would refuse; the message says which names it takes."""


def check_alias(alias: str) -> None:
    """Refuse, before anything is read or moved, an alias MLflow would not store."""
    if ALIAS.fullmatch(alias) is None:
        raise InvalidAlias(f"--alias {alias!r}: an alias is 1 to 255 letters, digits, '_' or "
                           "'-'")
    if alias.lower() == LATEST or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidAlias(f"--alias {alias!r}: reserved by MLflow (models:/NAME/latest and "
                           "version numbers such as v3); choose another name")


def move_alias(client: MlflowClient, uri: str, alias: str) -> tuple[ModelVersion, str | None]:
    """Point ``alias`` at the version ``uri`` names, whatever its score; returns (that
    version, previous holder's version or None)."""
    check_alias(alias)
    version = resolve_model_version(client, uri)
    previous = client.get_registered_model(version.name).aliases.get(alias)
    client.set_registered_model_alias(version.name, alias, version.version)
    log.info("%s@%s -> version %s (was %s)", version.name, alias, version.version,
             previous if previous is not None else "unset")
    return version, (str(previous) if previous is not None else None)


def remove_alias(client: MlflowClient, name: str, alias: str) -> str:
    """Delete ``alias`` of model ``name``; returns the version that held it."""
    model = registered_model(client, name, f"models:/{name}@{alias}")
    if alias not in model.aliases:
        raise ModelNotFound(f"models:/{name}@{alias}: model {name!r} has no alias @{alias} "
                            f"(aliases: {aliases_text(model)})")
    client.delete_registered_model_alias(name, alias)
    return str(model.aliases[alias])
