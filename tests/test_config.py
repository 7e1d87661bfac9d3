import dataclasses
import math
import os
import re
from pathlib import Path

import pytest

from pdml_ray.config import (EXTENDED_WEIGHT, SECTIONS, Config, ConfigError, apply_overrides,
                             dump_config, from_dict, load_config, resolve_paths)


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
    ("ray.checkpoint_upload=later", r"ray\.checkpoint_upload: expected one of 'async', 'sync'"),
    ("extension.boundary_margin=-1", r"extension\.boundary_margin: must be >= 0"),
    ("extension.weighting=classwise",
     r"extension\.weighting: expected one of 'pooled', 'separate', 'balanced'"),
    ("train.supervision=points", r"train\.supervision: expected one of 'full', 'point'"),
    ("train.supervision=point+ext+pdml",
     r"train\.supervision: expected one of .*'point\+ext', 'point\+pdml\+ext'"),
    ("model.output_stride=32", r"model\.output_stride: expected one of 8, 16"),
    ("ray.use_gpu=yes please", r"ray\.use_gpu: expected bool"),
    ("train.lr", r"expected KEY=VALUE"),
    ("model.embedding=head", r"model\.embedding: expected one of 'features', 'projection'"),
    ("model.projection_dim=0", r"model\.projection_dim: must be >= 1"),
    ("model.projection_radius=0", r"model\.projection_radius: must be > 0"),
    ("extension.start_epoch=-1", r"extension\.start_epoch: must be >= 0"),
    ("extension.start_fraction=1.0", r"extension\.start_fraction: must lie in \[0, 1\)"),
    ("extension.start_fraction=-0.1", r"extension\.start_fraction"),
    ("extension.weight=-1", r"extension\.weight: must be >= 0"),
    ("extension.ramp_epochs=-2", r"extension\.ramp_epochs: must be >= 0"),
    ("loss.store_shards=0", r"loss\.store_shards: must be >= 1"),
    ("loss.store_shards=3", r"loss\.store_shards: 3 shards for ray\.num_workers=2: a shard "
                            r"without workers would hold nothing"),
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
    # The paper's recipe: no benchmark here has earned a departure on real data
    # (docs/benchmarks.md, "Calibrated against the paper").
    assert (cfg.extension.method, cfg.extension.threshold, cfg.extension.window) == \
        ("score+region", 0.7, 5)
    assert cfg.extension.weighting == "pooled" and cfg.model.embedding == "features"
    assert (cfg.train.batch_size, cfg.data.crop_size, cfg.train.lr, cfg.train.poly_power) == \
        (16, 321, 2.5e-4, 0.8)
    assert cfg.train.supervision == "point+pdml+ext" and cfg.ray.use_gpu


def test_new_values_are_validated():
    cfg = load_config(None, ["model.backbone=efficientnet_lite0", "model.pretrained=imagenet",
                             "data.dataset=synthetic_v2", "data.eval_split=test"])
    assert (cfg.model.backbone, cfg.data.dataset, cfg.data.eval_split) == \
        ("efficientnet_lite0", "synthetic_v2", "test")
    with pytest.raises(ConfigError, match=r"^data\.eval_split: ade20k has no labelled test split"):
        load_config(None, ["data.dataset=ade20k", "data.eval_split=test"])
    with pytest.raises(ConfigError, match=r"^data\.eval_split"):
        load_config(None, ["data.eval_split=train"])
    with pytest.raises(ConfigError, match=r"^data\.synthetic_test_seed: must differ"):
        load_config(None, ["data.synthetic_test_seed=0"])
    with pytest.raises(ConfigError, match=r"^data\.synthetic_test: must be >= 1"):
        load_config(None, ["data.synthetic_test=0"])
    with pytest.raises(ConfigError, match=r"^model\.backbone"):
        load_config(None, ["model.backbone=efficientnet_b7"])
    with pytest.raises(ConfigError, match=r"^model\.pretrained: is empty"):
        Config().replace(**{"model.pretrained": ""})


def test_shipped_sweep_demo_config_loads_and_fits_two_cores():
    cfg = load_config(CONFIGS / "sweep-demo.yaml")
    assert cfg.sweep.search == "grid" and len(cfg.sweep.margins) * len(cfg.sweep.thresholds) == 4
    from pdml_ray.service.tune.sweep import concurrent_trials  # the sweep's own sizing rule
    assert concurrent_trials(cfg, {"CPU": 2.0}) == 2  # two trials at once on 2 cores


# -- numbers, repeated keys, batch split and run names (docs/robustness.md) ------------
FLOAT_KEYS = [f"{name}.{item.name}" for name, cls in SECTIONS.items()
              for item in dataclasses.fields(cls)
              if item.type in ("float", "float | None", "tuple[float, ...]")]


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", "nan", "inf", "1.0e+400"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_non_finite_numbers_are_refused_for_every_float_key(key, text):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}(\[0\])?: must be a finite number"):
        load_config(None, [f"{key}={text}"])


def test_non_finite_numbers_are_refused_when_a_section_is_built_directly():
    with pytest.raises(ConfigError, match=r"^ray\.cpus_per_worker: must be a finite number, "
                                          r"got inf"):
        Config(ray=dataclasses.replace(Config().ray, cpus_per_worker=math.inf))


def test_float_keys_are_all_checked():
    assert {"train.lr", "loss.margin", "ray.cpus_per_worker", "data.scale_max",
            "sweep.margins"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("2E4", 2e4), ("5e+1", 50.0),
                                         (".5e-2", 0.005), ("1.5e-3", 1.5e-3)])
def test_exponent_notation_is_a_float_on_the_command_line_and_in_yaml(text, value, tmp_path):
    assert load_config(None, [f"train.lr={text}"]).train.lr == value
    path = tmp_path / "lr.yaml"
    path.write_text(f"train:\n  lr: {text}\nsweep:\n  learning_rates: [{text}, 0.1]\n")
    cfg = load_config(path)
    assert cfg.train.lr == value and cfg.sweep.learning_rates == (value, 0.1)
    # Strings stay strings where a string is expected, and a number-like text is not an int.
    assert load_config(None, ["ray.run_name=1e3"]).ray.run_name == "1e3"
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got '1e3'"):
        load_config(None, ["train.epochs=1e3"])


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.01\n",
     r"repeated\.yaml: train\.lr: given twice \(lines 2 and 4\); YAML would keep the last value "
     r"only: keep one"),
    ("train:\n  lr: 0.1\nloss:\n  margin: 3\ntrain:\n  epochs: 2\n",
     r"repeated\.yaml: train: given twice \(lines 1 and 5\)"),
])
def test_a_key_given_twice_in_a_yaml_file_is_refused(text, message, tmp_path):
    path = tmp_path / "repeated.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_config_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  lr: 0.1  # r\u00e9glage\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(invalid "
                                          r"continuation byte at byte 21\)"):
        load_config(path)


def test_batch_that_does_not_split_over_the_workers_is_refused():
    with pytest.raises(ConfigError, match=r"train\.batch_size: global batch 3 does not split evenly "
                                          r"over ray\.num_workers=2: each worker would take 1 "
                                          r"image\(s\), so the run would train with a global "
                                          r"batch of 2, not 3; use a multiple of 2"):
        load_config(None, ["train.batch_size=3", "ray.num_workers=2"])
    assert load_config(None, ["train.batch_size=6", "ray.num_workers=3"]).train.batch_size == 6


@pytest.mark.parametrize("key", ["ray.run_name", "sweep.name"])
@pytest.mark.parametrize("name", ["a/b", "../outside", "..", "a..b", ".hidden", "it's",
                                  'say"hi', "tab\there", "x" * 129, "back\\slash", "`tick`",
                                  "caf\u00e9"])
def test_names_that_become_folders_and_filter_values_are_refused(key, name):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .* is not a usable name: it "
                                          r"becomes a folder and an MLflow tag value"):
        apply_overrides(Config(), {key: name})


@pytest.mark.parametrize("name", ["ade20k-01", "run_2.b", "A", "x" * 128])
def test_plain_run_names_are_kept(name):
    cfg = apply_overrides(Config(), {"ray.run_name": name, "sweep.name": name})
    assert cfg.ray.run_name == name and cfg.sweep.name == name


@pytest.mark.parametrize("pretrained, weight", [(None, 4.0), ("weights.pt", 16.0)])
def test_an_unset_extension_weight_follows_the_backbones_start(pretrained, weight):
    cfg = Config().replace(**{"model.pretrained": pretrained})
    assert cfg.extension.weight is None
    extension = cfg.resolved().extension
    assert extension.weight == EXTENDED_WEIGHT["pretrained" if pretrained else "random init"] \
        == weight
    assert extension.weight_at(10, 15) == weight and extension.first_epoch(12) == 6
    # What the user sets wins, from either start; resolving twice changes nothing.
    chosen = cfg.replace(**{"extension.weight": 1.0, "extension.start_fraction": 0.75}).resolved()
    assert (chosen.extension.weight, chosen.extension.first_epoch(12)) == (1.0, 9)
    assert chosen.resolved() == chosen and cfg.resolved().resolved() == cfg.resolved()
    # The paper's pooled weighting has no weight of its own, and needs none to be set.
    pooled = cfg.replace(**{"extension.weighting": "pooled"}).resolved()
    assert pooled.extension.weight is None
    ramped = cfg.replace(**{"extension.ramp_epochs": 4, "extension.start_epoch": 2}).resolved()
    assert [ramped.extension.weight_at(e, 10) for e in (1, 2, 3, 5, 9)] == \
        [0.0, weight / 4, weight / 2, weight, weight]


def test_an_unresolved_extension_weight_is_not_guessed():
    with pytest.raises(ValueError, match="unresolved extension config"):
        Config().extension.weight_at(10, 15)


@pytest.mark.parametrize("weighting", ["separate", "balanced"])
@pytest.mark.parametrize("key, value", [("extension.weight", 0.5), ("extension.ramp_epochs", 2)])
def test_extended_pixel_weights_need_a_term_of_their_own(key, value, weighting):
    separate = apply_overrides(Config(), {"extension.weighting": weighting, key: value})
    assert getattr(separate.extension, key.split(".")[1]) == value
    with pytest.raises(ConfigError, match=r"extension\.weight/ramp_epochs: apply to "
                                          r"extension\.weighting=separate or balanced only"):
        apply_overrides(Config(), {"extension.weighting": "pooled", key: value})


def test_the_demo_fine_tunes_lite0_from_its_packaged_imagenet_weights():
    cfg = Config().resolved()
    assert (cfg.model.backbone, cfg.model.pretrained) == ("efficientnet_lite0", "imagenet")
    assert cfg.extension.weight == EXTENDED_WEIGHT["pretrained"]
