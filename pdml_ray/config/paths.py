"""Where relative paths point: the project directory, and the MLflow store filled in.

Relative paths (data root, points file, storage, MLflow store) are resolved against a
*project directory*, not against the current directory: under ``ray job submit
--working-dir .`` a job runs in a temporary copy of the folder, and what it writes must
land where the user will look for it afterwards.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import ConfigError
from .schema import CREDENTIALS_IN_URI, Config, uri_has_credentials

def project_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where relative paths point: ``explicit``, else $PDML_PROJECT_DIR, else the cwd."""
    chosen = explicit or os.environ.get("PDML_PROJECT_DIR") or os.getcwd()
    return Path(chosen).expanduser().resolve()


def _is_uri(path: str) -> bool:
    return "://" in path


def _anchor(path: str | None, base: Path) -> str | None:
    if path is None or _is_uri(path) or os.path.isabs(path):
        return path
    return str(base / path)


def resolve_paths(cfg: Config, base: str | os.PathLike | None = None) -> Config:
    """Return ``cfg`` with every relative path made absolute against the project dir,
    and the MLflow store filled in (MLFLOW_TRACKING_URI wins over the config)."""
    root = project_dir(base)
    data_root = _anchor(cfg.data.root, root)
    points = _anchor(cfg.data.points_file, root) or str(Path(data_root) / "points_train.parquet")
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri and uri_has_credentials(env_uri):
        raise ConfigError(f"MLFLOW_TRACKING_URI: {CREDENTIALS_IN_URI}")
    tracking_uri = env_uri or cfg.mlflow.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        db = tracking_uri[len("sqlite:///"):]
        if not os.path.isabs(db):
            tracking_uri = f"sqlite:///{root / db}"
    artifacts = cfg.mlflow.artifact_location
    if artifacts is None and tracking_uri.startswith("sqlite:"):
        artifacts = str(root / "mlartifacts")
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=data_root, points_file=points),
        ray=dataclasses.replace(cfg.ray, storage_path=_anchor(cfg.ray.storage_path, root)),
        mlflow=dataclasses.replace(cfg.mlflow, tracking_uri=tracking_uri,
                                   artifact_location=_anchor(artifacts, root)),
    )
