"""One suggestion round as an MLflow run: what was asked (model version, budget,
strategy, split), what came out (counts, speed, the score histogram), and the files
(the suggestions, Label Studio's config, the overlays)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pdml_ray.reports import save_figure
from pdml_ray.service.tracking import experiment_id

KIND_TAG = "pdml.kind"
HISTOGRAM_FILE = "score_histogram.png"


def log_round(tracking_uri: str, *, experiment: str, artifact_location: str | None,
              run_name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
              tags: Mapping[str, str], files: Sequence[Path], overlays: Path | None,
              histogram: Figure) -> str:
    """Create the round's run, log everything, end it; returns the run id."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(client, experiment, artifact_location),
                            run_name=run_name, tags={KIND_TAG: "suggestions", **tags})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for path in files:
            client.log_artifact(run_id, str(path))
        if overlays is not None:
            client.log_artifacts(run_id, str(overlays), "overlays")
        with tempfile.TemporaryDirectory() as folder:
            client.log_artifact(run_id, str(save_figure(histogram, Path(folder) / HISTOGRAM_FILE)))
    except BaseException:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))
    return run_id
