"""``python -m tests.service.dying_actor_predict PHOTOS OUT NUM_CLASSES``:
``predict_on_ray_data`` on its own local Ray with a Predictor whose actor process dies
(``os._exit``) on the file whose bytes are :data:`DOOMED`. Prints one JSON line: a list
of ``[source, error or null]``, one per outcome.

Run as a subprocess by tests/service/test_predict.py rather than on the test session's
Ray: the actor Ray restarts after such a death can outlive the dataset (seen with Ray
2.60, now and then), and a leftover actor holding a CPU of the shared 2-CPU cluster
would starve every later test. Here it goes with the subprocess's Ray.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray

from pdml_ray.config import from_dict
from pdml_ray.inference import SceneParser
from pdml_ray.models import build_model
from pdml_ray.service.infer import predict
from pdml_ray.service.runtime import start_local_ray

DOOMED = b"this image kills its actor"


class PredictorThatDies(predict.Predictor):
    def __call__(self, batch):
        if any(bytes(data) == DOOMED for data in batch["data"]):
            os._exit(1)
        return super().__call__(batch)


def main(photos: Path, out: Path, num_classes: int) -> None:
    cfg = from_dict({"model": {"backbone": "resnet18", "pretrained": None, "head": "linear"}})
    parser = SceneParser(build_model(num_classes=num_classes, backbone="resnet18",
                                     head="linear"), cfg)
    sources = sorted(photos.iterdir())
    predict.Predictor = PredictorThatDies  # what predict_on_ray_data hands to Ray Data
    start_local_ray(num_cpus=2)
    try:
        outcomes = [outcome for batch in predict.predict_on_ray_data(
            parser, sources, out, actors=1, batch_size=1) for outcome in batch]
    finally:
        ray.shutdown()
    print(json.dumps([[str(outcome.source), outcome.error] for outcome in outcomes]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
