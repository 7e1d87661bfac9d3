"""Finding versions by URI and moving aliases: the library on a real sqlite registry, and
``python -m jobs.registry`` as a user runs it. Versions are registered by hand here; the
commands that read a real logged model are tested in test_model_lifecycle.py."""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from pdml_ray.service.registry.aliases import InvalidAlias, move_alias, remove_alias
from pdml_ray.service.registry.describe import list_versions
from pdml_ray.service.registry.model_uri import (ModelNotFound, parse_model_uri,
                                                 resolve_model_version)
from pdml_ray.service.registry.register import VAL_MIOU_TAG
from tests.helpers import run_job

NAME = "pdml-scene-parser"


def register_three(client: MlflowClient, name: str) -> list[str]:
    """Versions 1-3 of ``name`` from three runs (val mIoU 0.3, 0.5, 0.4), @champion -> 2;
    returns the run ids."""
    experiment = client.get_experiment_by_name("registry").experiment_id
    client.create_registered_model(name)
    runs = []
    for score in (0.3, 0.5, 0.4):
        run_id = client.create_run(experiment).info.run_id
        version = client.create_model_version(name, source="file:///nowhere/model",
                                              run_id=run_id).version
        client.set_model_version_tag(name, version, VAL_MIOU_TAG, f"{score:.6f}")
        runs.append(run_id)
    client.set_registered_model_alias(name, "champion", "2")
    return runs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); tests that move
    aliases register their own model name in it."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("registry")
    return uri, client, register_three(client, NAME)


@pytest.fixture
def registry(store):
    """The shared, read-only NAME with its three versions."""
    _, client, runs = store
    return client, runs


@pytest.mark.parametrize("uri, parts", [
    ("models:/m@champion", {"name": "m", "alias": "champion"}),
    ("models:/m/12", {"name": "m", "version": "12"}),
    ("runs:/abc123/model", {"run_id": "abc123", "path": "model"}),
    ("models:/m/latest", {"name": "m", "version": "latest"}),
])
def test_model_uri_forms(uri, parts):
    ref = parse_model_uri(uri)
    assert {key: getattr(ref, key) for key in parts} == parts


@pytest.mark.parametrize("uri", ["m", "models:/m", "models:/m/newest", "models:/@x", "runs:/abc",
                                 "s3://bucket/model", "models:/m/latest/x"])
def test_other_uris_are_refused_with_the_accepted_forms(uri):
    with pytest.raises(ModelNotFound, match="models:/NAME@ALIAS, models:/NAME/VERSION, "
                                            "models:/NAME/latest or runs:/"):
        parse_model_uri(uri)


def test_resolve_by_alias_version_and_run(registry):
    client, runs = registry
    assert str(resolve_model_version(client, f"models:/{NAME}@champion").version) == "2"
    assert resolve_model_version(client, f"models:/{NAME}/3").run_id == runs[2]
    assert str(resolve_model_version(client, f"runs:/{runs[0]}/model").version) == "1"
    # MLflow's own form for the newest version: the highest number, not the champion.
    assert str(resolve_model_version(client, f"models:/{NAME}/latest").version) == "3"


@pytest.mark.parametrize("uri, message", [
    (f"models:/{NAME}@staging", rf"models:/{NAME}@staging: model '{NAME}' has no alias @staging "
                                r"\(aliases: @champion -> version 2\)"),
    (f"models:/{NAME}/9", rf"models:/{NAME}/9: model '{NAME}' has no version 9 "
                          r"\(versions: 1, 2, 3\)"),
    ("models:/other@champion", rf"models:/other@champion: no registered model 'other' "
                               rf"\(registered models: .*{NAME}.*\)"),
    (f"runs:/{'0' * 32}/model", rf"runs:/{'0' * 32}/model: no run {'0' * 32}"),
    # An apostrophe used to end the MLflow filter string early (MlflowException traceback).
    ("runs:/ab'c/model", r"runs:/ab'c/model: no run ab'c in the tracking store"),
    ("models:/it's/3", r"models:/it's/3: no registered model \"it's\""),
    ("models:/it's/latest", r"models:/it's/latest: no registered model \"it's\""),
])
def test_unknown_names_say_what_exists(registry, uri, message):
    client, _ = registry
    with pytest.raises(ModelNotFound, match=message):
        resolve_model_version(client, uri)


def test_a_run_without_registered_version(registry):
    client, _ = registry
    run_id = client.create_run(client.get_experiment_by_name("registry").experiment_id).info.run_id
    with pytest.raises(ModelNotFound, match="has no registered model version"):
        resolve_model_version(client, f"runs:/{run_id}/model")


def test_list_move_and_remove(store):
    _, client, _ = store
    name = "moved-here"
    runs = register_three(client, name)
    rows = list_versions(client, name)
    assert [(r.version, r.val_miou, r.aliases) for r in rows] == [
        (3, 0.4, ()), (2, 0.5, ("champion",)), (1, 0.3, ())]
    assert rows[2].run_id == runs[0]
    # An explicit promotion needs no better score: version 1 (0.3) beats nobody.
    version, previous = move_alias(client, f"models:/{name}/1", "champion")
    assert (str(version.version), previous) == ("1", "2")
    assert move_alias(client, f"runs:/{runs[2]}/model", "staging")[1] is None
    assert remove_alias(client, name, "champion") == "1"
    assert set(client.get_registered_model(name).aliases) == {"staging"}
    with pytest.raises(ModelNotFound, match="no alias @champion"):
        remove_alias(client, name, "champion")


def test_latest_of_a_model_without_versions(store):
    _, client, _ = store
    client.create_registered_model("empty")
    with pytest.raises(ModelNotFound, match=r"models:/empty/latest: model 'empty' has no versions"):
        resolve_model_version(client, "models:/empty/latest")


def test_versions_of_a_name_with_an_apostrophe_are_found(store):
    _, client, _ = store
    name = "o'brien"
    register_three(client, name)
    assert [row.version for row in list_versions(client, name)] == [3, 2, 1]
    assert str(resolve_model_version(client, f"models:/{name}/latest").version) == "3"
    with pytest.raises(ModelNotFound, match=r"model \"o'brien\" has no version 9 \(versions: "
                                            r"1, 2, 3\)"):
        resolve_model_version(client, f"models:/{name}/9")


@pytest.mark.parametrize("alias, message", [
    ("best model", r"--alias 'best model': an alias is 1 to 255 letters, digits, '_' or '-'"),
    ("it's", r"""--alias "it's": an alias is 1 to 255 letters"""),
    ("latest", r"--alias 'latest': reserved by MLflow"),
    ("v2", r"--alias 'v2': reserved by MLflow"),
])
def test_promote_to_an_invalid_alias_is_refused_before_anything_moves(store, alias, message):
    _, client, _ = store
    with pytest.raises(InvalidAlias, match=message):
        move_alias(client, f"models:/{NAME}/1", alias)
    assert {a: str(v) for a, v in client.get_registered_model(NAME).aliases.items()} == {
        "champion": "2"}


def test_registry_commands(store):
    uri, client, _ = store
    name = "from-the-command-line"
    register_three(client, name)
    # The registered model's name comes from the config, as a user's would.
    config = ("--set", f"mlflow.tracking_uri={uri}", "--set", f"mlflow.registered_model={name}")
    listed = run_job("jobs.registry", "list", *config)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("version"))
    assert re.split(r"\s{2,}", lines[header]) == ["version", "val mIoU", "run id", "created",
                                                  "aliases"]
    table = lines[header + 2:header + 5]
    assert [re.split(r"\s+", line.strip())[:2] for line in table] == [
        ["3", "0.4000"], ["2", "0.5000"], ["1", "0.3000"]]
    assert table[1].endswith("@champion")
    assert len({line.index(" 0.") for line in table}) == 1  # the columns line up

    promoted = run_job("jobs.registry", "promote", f"models:/{name}/1", *config)
    assert promoted.returncode == 0, promoted.stderr
    assert f"models:/{name}@champion -> version 1 (was version 2)" in promoted.stdout

    demoted = run_job("jobs.registry", "demote", "--alias", "champion", *config)
    assert demoted.returncode == 0, demoted.stderr
    assert f"models:/{name}@champion removed (it pointed at version 1)" in demoted.stdout
    assert client.get_registered_model(name).aliases == {}

    missing = run_job("jobs.registry", "promote", f"models:/{name}/7", *config)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: models:/{name}/7: model '{name}' has no version 7 (versions: 1, 2, 3)")

    bad_alias = run_job("jobs.registry", "promote", f"models:/{name}/1", "--alias", "best model",
                        *config)
    assert bad_alias.returncode == 2 and "Traceback" not in bad_alias.stderr
    assert bad_alias.stderr.strip().splitlines()[-1] == (
        "error: --alias 'best model': an alias is 1 to 255 letters, digits, '_' or '-'")
