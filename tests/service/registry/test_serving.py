"""The registered model served the MLflow way: ``mlflow models serve`` on a real port.

A tiny model (random resnet18 weights) is logged and registered as @champion in a sqlite
store; the server resolves ``models:/pdml-scene-parser@champion`` from it. Requests are
the JSON a ``curl`` user sends. The model's own input checks are tested without a server
first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from pdml_ray.config import from_dict, resolve_paths
from pdml_ray.data import SyntheticDataset
from pdml_ray.models import build_model
from pdml_ray.service.registry.pyfunc_log import requirements
from pdml_ray.service.registry.pyfunc_model import InvalidImages, as_images
from pdml_ray.service.registry.register import log_and_register
from pdml_ray.service.tracking import tracking_uri_scope
from tests.helpers import kill_session, wait_for

CHAMPION = "models:/pdml-scene-parser@champion"
MAX_ERROR_BODY = 400  # bytes: the reason, not the request echoed back


# -- the model's input checks, in process ----------------------------------------------
def test_uint8_batches_and_single_images_pass_unchanged():
    batch = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    images, single = as_images(batch)
    assert images is batch and not single
    images, single = as_images(batch[0])
    assert single and images.shape == (1, 5, 7, 3) and (images[0] == batch[0]).all()


def test_integers_in_0_255_are_taken_as_uint8():
    """JSON has no uint8: the scoring server hands a uint8 image over as int64."""
    values = [[[[0, 128, 255], [1, 2, 3]]]]
    images, _ = as_images({"inputs": np.array(values)})
    assert images.dtype == np.uint8 and images.tolist() == values


@pytest.mark.parametrize("model_input, reason", [
    (np.full((1, 4, 4, 3), 0.5), "got dtype float64"),
    (np.full((4, 4, 3), 0.5, np.float32), "got dtype float32"),
    (np.zeros((1, 4, 4, 3), bool), "got dtype bool"),
    (np.full((1, 2, 2, 3), 300), "got integers from 300 to 300"),
    (np.full((1, 2, 2, 3), -1), "got integers from -1 to -1"),
    (np.zeros((1, 4, 4), np.uint8), "got shape (1, 4, 4)"),
    (np.zeros((2, 1, 4, 4, 3), np.uint8), "got shape (2, 1, 4, 4, 3)"),
    (np.zeros((0, 4, 4, 3), np.uint8), "got shape (0, 4, 4, 3)"),
    ([[[[1, 2, 3]]], [[[1, 2, 3], [4, 5, 6]]]],
     "nested lists of uneven lengths (images of one request must share H and W)"),
    ("an image", "got a str (send {\"inputs\": <nested lists>})"),
], ids=["float64", "float32-single", "bool", "above-255", "negative", "3d-batch", "5d",
        "empty", "ragged", "string"])
def test_other_input_is_refused_with_a_400_naming_uint8(model_input, reason):
    with pytest.raises(InvalidImages) as refused:
        as_images(model_input)
    assert refused.value.get_http_status_code() == 400
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert refused.value.message.startswith("expected uint8 images, N x H x W x 3 or a single "
                                            "H x W x 3")
    assert refused.value.message.endswith(reason)


def test_the_reason_survives_the_scoring_servers_rewrite():
    """The scoring server sets ``e.message = f"Failed to predict data '{data}'..."``."""
    with pytest.raises(InvalidImages) as refused:
        as_images(np.full((1, 16, 20, 3), 0.5))
    error = refused.value
    error.message = f"Failed to predict data '{np.full((1, 16, 20, 3), 0.5)}'. \nError: x"
    body = json.loads(error.serialize_as_json())
    assert body["message"] == error.message and body["message"].endswith("got dtype float64")
    assert isinstance(error, MlflowException)


# -- the served model ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny model registered as @champion in a fresh sqlite store; the warnings its
    logging raised."""
    folder = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = resolve_paths(from_dict({
        "model": {"backbone": "resnet18", "pretrained": None},
        "mlflow": {"tracking_uri": uri, "artifact_location": str(folder / "artifacts")}}), folder)
    model = build_model(num_classes=len(SyntheticDataset.classes), backbone="resnet18",
                        output_stride=8, head="aspp")
    client = MlflowClient(uri)
    experiment = client.create_experiment("serving", artifact_location=cfg.mlflow.artifact_location)
    run_id = client.create_run(experiment).info.run_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_and_register(cfg, run_id=run_id, state_dict=model.state_dict(), val_miou=0.1)
    return uri, folder, [str(w.message) for w in caught]


def test_the_logged_model_carries_an_input_example(registered):
    uri, folder, caught = registered
    assert not [text for text in caught if "input example was not provided" in text]
    with tracking_uri_scope(uri):
        local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(folder / "dl")))
    info = Model.load(local).saved_input_example_info
    assert info["type"] == "ndarray"
    example = np.array(json.loads((local / info["serving_input_path"]).read_text())["inputs"])
    assert example.shape == (1, 16, 16, 3) and 0 <= example.min() and example.max() <= 255


def test_the_logged_model_lists_the_pinned_requirements(registered):
    uri, folder, _ = registered
    with tracking_uri_scope(uri):
        local = Path(mlflow.artifacts.download_artifacts(CHAMPION, dst_path=str(folder / "req")))
    listed = (local / "requirements.txt").read_text().split()
    assert set(requirements()) <= set(listed)
    assert any(line.startswith("tqdm==") for line in listed)
    assert any(line.startswith("pdml_ray==") for line in listed)


class ModelServer:
    """``mlflow models serve -m models:/pdml-scene-parser@champion --env-manager local`` on
    a free port of 127.0.0.1, in its own process session."""

    def __init__(self, tracking_uri: str, log_file: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        # The server execs `uvicorn` by name: the environment's bin folder goes on PATH,
        # as `source .venv/bin/activate` does.
        env = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
        env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
                   PATH=f"{mlflow_cli.parent}{os.pathsep}{env.get('PATH', '')}")
        self.log_file = log_file
        with open(log_file, "w") as log:
            self.process = subprocess.Popen(
                [str(mlflow_cli), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def post(self, payload) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}/invocations",
                                         data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@pytest.fixture(scope="module")
def server(registered):
    uri, folder, _ = registered
    served = ModelServer(uri, folder / "serve.log")
    try:
        wait_for(lambda: served.ready() or served.process.poll() is not None, timeout_s=300,
                 what="mlflow models serve")
        assert served.process.poll() is None, served.log_file.read_text()[-3000:]
        yield served
    finally:
        kill_session(served.process)


@pytest.fixture(scope="module")
def in_process(registered):
    uri, _, _ = registered
    with tracking_uri_scope(uri):
        return mlflow.pyfunc.load_model(CHAMPION)


def test_a_uint8_batch_is_answered_like_the_python_model(server, in_process):
    images = np.random.default_rng(1).integers(0, 256, (2, 24, 31, 3), dtype=np.uint8)
    status, body = server.post({"inputs": images.tolist()})
    assert status == 200, body[:1000]
    predictions = np.array(json.loads(body)["predictions"])
    assert predictions.shape == (2, 24, 31)
    assert (predictions == in_process.predict(images)).all()


def test_a_single_image_is_answered_with_one_class_map(server, in_process):
    image = np.random.default_rng(2).integers(0, 256, (20, 27, 3), dtype=np.uint8)
    for payload in ({"inputs": image.tolist()}, {"instances": image.tolist()}):
        status, body = server.post(payload)
        assert status == 200, body[:1000]
        predictions = np.array(json.loads(body)["predictions"])
        assert predictions.shape == (20, 27)
        assert (predictions == in_process.predict(image[None])[0]).all()


def test_a_float_image_is_refused_with_a_short_400_naming_uint8(server):
    image = np.random.default_rng(3).random((1, 16, 20, 3))  # values in 0..1
    status, body = server.post({"inputs": image.tolist()})
    assert status == 400
    assert len(body) < MAX_ERROR_BODY, body[:1000]
    reply = json.loads(body)
    assert reply["error_code"] == "INVALID_PARAMETER_VALUE"
    assert reply["message"] == ("expected uint8 images, N x H x W x 3 or a single H x W x 3 "
                                "(RGB, values 0..255); got dtype float64")


@pytest.mark.parametrize("payload, reason", [
    ({"inputs": np.zeros((2, 16, 20), np.uint8).tolist()}, "got shape (2, 16, 20)"),
    ({"inputs": np.zeros((1, 16, 20, 4), np.uint8).tolist()}, "got shape (1, 16, 20, 4)"),
    ({"inputs": np.full((1, 16, 20, 3), 256).tolist()}, "got integers from 256 to 256"),
], ids=["no-channels", "rgba", "above-255"])
def test_a_wrong_shape_or_range_is_refused_with_a_short_400(server, payload, reason):
    status, body = server.post(payload)
    assert status == 400
    assert len(body) < MAX_ERROR_BODY, body[:1000]
    reply = json.loads(body)
    assert reply["error_code"] == "INVALID_PARAMETER_VALUE"
    assert reply["message"].endswith(reason)


def test_the_saved_input_example_is_a_valid_request(server, registered):
    uri, folder, _ = registered
    with tracking_uri_scope(uri):
        local = Path(mlflow.artifacts.download_artifacts(CHAMPION,
                                                         dst_path=str(folder / "example")))
    payload = json.loads((local / Model.load(local).saved_input_example_info[
        "serving_input_path"]).read_text())
    status, body = server.post(payload)
    assert status == 200, body[:1000]
    assert np.array(json.loads(body)["predictions"]).shape == (1, 16, 16)
