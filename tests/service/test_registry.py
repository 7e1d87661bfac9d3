"""The champion alias moves only to a better model (real sqlite MLflow registry)."""

from mlflow.tracking import MlflowClient

from pdml_ray.service.registry import VAL_MIOU_TAG, champion_score, promote_if_better


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
