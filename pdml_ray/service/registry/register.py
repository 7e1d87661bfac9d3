"""Registering a trained model, and the champion rule: the alias moves to a new version
only when its val mIoU beats the current holder's, also when two registrations race."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from pdml_ray.config import Config
from pdml_ray.service.registry.pyfunc_log import log_pyfunc
from pdml_ray.service.registry.model_uri import filter_value
from pdml_ray.service.tracking import tracking_uri_scope

log = logging.getLogger(__name__)

VAL_MIOU_TAG = "val_miou"  # a version's score, the champion rule's measure


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    model_uri: str  # what the version was registered from
    val_miou: float
    is_champion: bool


def log_and_register(cfg: Config, *, run_id: str, state_dict: dict, val_miou: float,
                     per_class_iou: list[float] | None = None) -> RegisteredModel:
    """Log the pyfunc into ``run_id``, register it, and move the champion alias if better."""
    name = cfg.mlflow.registered_model
    model_uri = log_pyfunc(cfg, run_id=run_id, state_dict=state_dict, val_miou=val_miou,
                           per_class_iou=per_class_iou)
    with tracking_uri_scope(cfg.mlflow.tracking_uri):
        version = mlflow.register_model(model_uri, name).version
    client = MlflowClient(cfg.mlflow.tracking_uri)
    client.set_model_version_tag(name, version, VAL_MIOU_TAG, f"{val_miou:.6f}")
    promoted = promote_if_better(client, name, version, val_miou, alias=cfg.mlflow.champion_alias)
    return RegisteredModel(name, str(version), model_uri, val_miou, promoted)


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
