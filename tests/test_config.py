import dataclasses
import os
from pathlib import Path

import pytest

from pdml_ray.config import (SECTIONS, Config, ConfigError, apply_overrides, dump_config, from_dict,
                             load_config, resolve_paths)


def test_defaults_are_valid_and_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["loss.margin=12", "train.supervision=point+pdml"])
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_dotted_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["train.lr=0.01", "ray.use_gpu=true", "model.pretrained=null",
                             "model.output_stride=16", "train.epochs=3"])
    assert cfg.train.lr == 0.01 and cfg.ray.use_gpu is True and cfg.model.pretrained is None
    assert cfg.model.output_stride == 16 and cfg.train.epochs == 3


def test_int_widens_to_float_but_not_the_reverse():
    assert apply_overrides(Config(), {"loss.margin": 20}).loss.margin == 20.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 2\.5"):
        apply_overrides(Config(), {"train.epochs": 2.5})


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", r"train\.lrr: unknown key; train accepts .*\blr\b"),
    ("trian.lr=0.1", r"trian\.lr: unknown key; use SECTION\.KEY"),
    ("loss.margin=-1", r"loss\.margin: must be >= 0"),
    ("extension.threshold=1.0", r"extension\.threshold: must lie in the open interval \(0, 1\)"),
    ("extension.threshold=0", r"extension\.threshold"),
    ("extension.window=4", r"extension\.window: must be a positive odd number"),
    ("train.supervision=points", r"train\.supervision: expected one of 'full', 'point'"),
    ("model.output_stride=32", r"model\.output_stride: expected one of 8, 16"),
    ("ray.use_gpu=yes please", r"ray\.use_gpu: expected bool"),
    ("train.lr", r"expected KEY=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_batch_smaller_than_workers_is_refused():
    with pytest.raises(ConfigError, match=r"train\.batch_size: global batch 1 is smaller than "
                                          r"ray\.num_workers=2"):
        load_config(None, ["train.batch_size=1", "ray.num_workers=2"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  margin: -3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: loss\.margin: must be >= 0"):
        load_config(bad)
    bad.write_text("los:\n  margin: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: los: unknown section"):
        load_config(bad)
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_flat_view_has_every_field():
    flat = Config().flat()
    assert flat["loss.margin"] == 20.0 and flat["extension.threshold"] == 0.7
    assert len(flat) == sum(len(dataclasses.fields(cls)) for name, cls in SECTIONS.items()
                            if name != "sweep")
    assert set(SECTIONS) == {"data", "model", "loss", "extension", "train", "ray", "mlflow",
                             "sweep"}


def test_list_fields_take_yaml_lists_and_check_items():
    cfg = load_config(None, ["sweep.margins=[8, 12.5]", "sweep.thresholds=0.6"])
    assert cfg.sweep.margins == (8.0, 12.5) and cfg.sweep.thresholds == (0.6,)
    with pytest.raises(ConfigError, match=r"sweep\.margins\[1\]: expected float, got 'x'"):
        load_config(None, ["sweep.margins=[8, x]"])
    with pytest.raises(ConfigError, match=r"sweep\.thresholds: needs at least one threshold"):
        load_config(None, ["sweep.thresholds=[0.5, 1.5]"])
    assert load_config(None, ["sweep.margins=[8, 12]"]) == load_config(None, ["sweep.margins=[8, 12]"])


def test_resolve_paths_anchors_relative_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve_paths(from_dict({"data": {"root": "data/x"}}), tmp_path)
    assert cfg.data.root == str(tmp_path / "data/x")
    assert cfg.data.points_file == str(tmp_path / "data/x/points_train.parquet")
    assert cfg.ray.storage_path == str(tmp_path / "ray_results")
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cfg.mlflow.artifact_location == str(tmp_path / "mlartifacts")
    # Resolving twice changes nothing; URIs are left alone.
    assert resolve_paths(cfg, "/elsewhere") == cfg
    s3 = resolve_paths(from_dict({"ray": {"storage_path": "s3://bucket/runs"}}), tmp_path)
    assert s3.ray.storage_path == "s3://bucket/runs"


def test_mlflow_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    cfg = resolve_paths(from_dict({"mlflow": {"tracking_uri": "sqlite:///other.db"}}), tmp_path)
    assert cfg.mlflow.tracking_uri == "http://tracking.example:5000"
    assert cfg.mlflow.artifact_location is None  # the server decides


def test_relative_sqlite_uri_is_anchored(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve_paths(from_dict({"mlflow": {"tracking_uri": "sqlite:///runs/m.db"}}), tmp_path)
    assert cfg.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'runs/m.db'}"
    assert os.path.isabs(cfg.mlflow.artifact_location)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["ade20k.yaml", "pascal_context.yaml"])
def test_shipped_paper_configs_load_with_the_papers_settings(name):
    cfg = load_config(CONFIGS / name)
    assert (cfg.model.backbone, cfg.model.output_stride, cfg.model.head) == ("resnet101", 8, "aspp")
    assert (cfg.loss.margin, cfg.loss.alpha, cfg.loss.beta) == (20.0, 0.8, 1.0)
    assert (cfg.extension.method, cfg.extension.threshold, cfg.extension.window) == \
        ("score+region", 0.7, 5)
    assert (cfg.train.batch_size, cfg.data.crop_size, cfg.train.lr, cfg.train.poly_power) == \
        (16, 321, 2.5e-4, 0.8)
    assert cfg.train.supervision == "point+pdml+ext" and cfg.ray.use_gpu


def test_shipped_sweep_demo_config_loads_and_fits_two_cores():
    cfg = load_config(CONFIGS / "sweep-demo.yaml")
    assert cfg.sweep.search == "grid" and len(cfg.sweep.margins) * len(cfg.sweep.thresholds) == 4
    from pdml_ray.service.sweep import concurrent_trials  # the sweep's own sizing rule
    assert concurrent_trials(cfg, {"CPU": 2.0}) == 2  # two trials at once on 2 cores
