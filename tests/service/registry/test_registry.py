"""The champion alias moves only to a better model (real sqlite MLflow registry)."""

import threading

import pytest
from mlflow.tracking import MlflowClient

from pdml_ray.service.registry.register import VAL_MIOU_TAG, champion_score, promote_if_better


def _version(client: MlflowClient, name: str, score: float) -> str:
    version = client.create_model_version(name, source="file:///nowhere/model").version
    client.set_model_version_tag(name, version, VAL_MIOU_TAG, str(score))
    return version


def test_champion_moves_only_on_improvement(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    client.create_registered_model("m")
    assert champion_score(client, "m", "champion") is None
    v1 = _version(client, "m", 0.30)
    assert promote_if_better(client, "m", v1, 0.30)
    v2 = _version(client, "m", 0.25)
    assert not promote_if_better(client, "m", v2, 0.25)
    assert champion_score(client, "m", "champion") == (v1, 0.30)
    v3 = _version(client, "m", 0.30)  # a tie keeps the incumbent
    assert not promote_if_better(client, "m", v3, 0.30)
    v4 = _version(client, "m", 0.41)
    assert promote_if_better(client, "m", v4, 0.41)
    assert client.get_model_version_by_alias("m", "champion").version == v4


class RacingClient(MlflowClient):
    """A client whose first read of an alias waits until the other racer has read it too,
    and whose alias writes wait for ``write_after``: two registrations that read the same
    champion, then write in a chosen order."""

    def __init__(self, uri: str, read_together: threading.Barrier,
                 write_after: threading.Event | None = None):
        super().__init__(uri)
        self.read_together, self.write_after = read_together, write_after
        self.first_read = True

    def get_model_version_by_alias(self, name, alias):
        try:
            return super().get_model_version_by_alias(name, alias)
        finally:
            if self.first_read:
                self.first_read = False
                self.read_together.wait(timeout=60)

    def set_registered_model_alias(self, name, alias, version):
        if self.write_after is not None:
            assert self.write_after.wait(timeout=60)
        super().set_registered_model_alias(name, alias, version)


@pytest.mark.parametrize("with_champion", [True, False])
def test_two_registrations_racing_leave_the_better_one_champion(mlflow_uri, with_champion):
    """Both read the same champion (or none) and both beat it; the better one (0.60) moves
    the alias first and is done, then the worse one (0.55) writes: the alias used to end
    on the worse model."""
    setup = MlflowClient(mlflow_uri)
    setup.create_registered_model("m")
    if with_champion:
        assert promote_if_better(setup, "m", _version(setup, "m", 0.50), 0.50)
    better, worse = _version(setup, "m", 0.60), _version(setup, "m", 0.55)
    read_together, better_done = threading.Barrier(2), threading.Event()
    outcome = {}

    def register(version: str, score: float, client: MlflowClient, done=None) -> None:
        outcome[version] = promote_if_better(client, "m", version, score)
        if done is not None:
            done.set()

    racers = [threading.Thread(target=register, args=(better, 0.60, RacingClient(
                  mlflow_uri, read_together), better_done)),
              threading.Thread(target=register, args=(worse, 0.55, RacingClient(
                  mlflow_uri, read_together, write_after=better_done)))]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
    assert champion_score(setup, "m", "champion") == (better, 0.60)
    assert outcome == {better: True, worse: False}


def test_a_worse_model_does_not_take_the_alias_from_an_older_better_one(mlflow_uri):
    """The re-check looks only at versions registered since the champion it compared
    against, so an explicit promotion of an older, worse version is not undone by it."""
    client = MlflowClient(mlflow_uri)
    client.create_registered_model("m")
    best_ever = _version(client, "m", 0.70)
    chosen = _version(client, "m", 0.40)
    client.set_registered_model_alias("m", "champion", chosen)  # `registry promote`
    newer = _version(client, "m", 0.45)
    assert promote_if_better(client, "m", newer, 0.45)
    assert champion_score(client, "m", "champion") == (newer, 0.45)
    assert champion_score(client, "m", "champion")[1] < float(
        client.get_model_version("m", best_ever).tags["val_miou"])
