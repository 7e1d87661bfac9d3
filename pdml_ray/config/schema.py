"""The config's schema: one frozen dataclass per section, each value's default with its
reason, the checks of each value's range (a wrong one raises :class:`ConfigError`
naming the dotted key), and a Config built from plain values (:func:`from_dict`)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from .coercion import _coerce
from .errors import ConfigError, _check

# Choices that code below the config checks too: named once here, read with
# typing.get_args where the values are checked (models/, losses/, extension.py).
Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_lite0"]
OutputStride = Literal[8, 16]
Head = Literal["aspp", "linear"]
Pairing = Literal["paper", "all"]
ExtensionMethod = Literal["score+region", "region", "score"]
ExtensionWeighting = Literal["pooled", "separate", "balanced"]


# The defaults below are the demo's: synthetic scenes (version 1), EfficientNet-Lite0
# from its packaged ImageNet weights (as every real user starts from ImageNet; on the
# test split it reached ResNet-18-from-random-init's final mIoU 1.6-1.8x sooner and ended
# 5.5-7.6 points higher in each of 3 seeds: docs/benchmarks.md, "The demo's start").
# The recipe (PDML on a projection head at 0.02, the `score` extension weighed apart from
# the points) was chosen from ResNet-18 from random init, where it beat point CE on
# held-out scenes and seeds in 3 of 3 (+8.1, +0.4, +8.5 mIoU points); docs/benchmarks.md
# has it against point CE from the Lite0 start. It is not evidence about real data: for
# ADE20K and PASCAL-Context, configs/*.yaml keep the paper's recipe (features,
# score+region, pooled), because no benchmark here has yet reproduced the paper's own
# orderings on real-looking scenes (docs/benchmarks.md, "Calibrated against the paper").
# extension.weight when unset depends on where the backbone starts: from random init a
# model still often wrong learns its own errors (8 and 16 fell 9 and 25 points below
# point CE at the demo's settings, 4 stayed above it). The 16 for a pretrained backbone
# was chosen on scenes its stand-in backbone had been pretrained on, where confident
# predictions were right 85% of the time; treat it as unproven on real data.
EXTENDED_WEIGHT = {"pretrained": 16.0, "random init": 4.0}


# A run name becomes a folder under ray.storage_path and a value inside MLflow filter
# strings ('...'), so it keeps to characters that mean nothing to either.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _check_run_name(name: str | None, key: str) -> None:
    _check(name is None or (RUN_NAME.fullmatch(name) is not None and ".." not in name), key,
           f"{name!r} is not a usable name: it becomes a folder and an MLflow tag value, so "
           "use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit, "
           "without '..'")


@dataclass(frozen=True)
class DataConfig:
    # synthetic: generated scenes, version 1 (8 classes, one texture each); synthetic_v2:
    # version 2 (17 classes sharing textures, long-tailed; pdml_ray/data/synthetic_v2.py).
    dataset: Literal["synthetic", "synthetic_v2", "ade20k", "pascal_context"] = "synthetic"
    root: str = "data/synthetic"  # dataset root (the folder holding its released layout)
    points_file: str | None = None  # Parquet points; None: <root>/points_train.parquet
    crop_size: int = 96  # the synthetic scenes' size; the paper crops 321 (configs/*.yaml)
    scale_min: float = 0.75  # random-scale range of the paired transforms
    scale_max: float = 1.25
    hflip: bool = True
    loader_workers: int = 0  # DataLoader processes per Ray worker; 0 keeps CPUs for compute
    max_val_images: int = 0  # 0: the whole validation (or test) split
    # The split evaluated during and after training: "val", or "test", the synthetic
    # scenes' held-out split (another generator seed), for judging what was tuned on val.
    eval_split: Literal["val", "test"] = "val"
    # Images (and label maps) with more pixels are refused from their header, in training,
    # evaluation and prediction: one 10000 x 10000 image took 6.2 GB to decode.
    max_image_pixels: int = 64_000_000
    # Synthetic scenes are generated on first use when `root` holds none yet.
    synthetic_train: int = 200
    synthetic_val: int = 50
    synthetic_size: int = 96
    synthetic_seed: int = 0
    synthetic_test: int = 50  # scenes of the test split, from generator seed synthetic_test_seed
    synthetic_test_seed: int = 1

    def __post_init__(self) -> None:
        _check(self.crop_size >= 8, "data.crop_size", "must be >= 8")
        _check(0 < self.scale_min <= self.scale_max, "data.scale_min/scale_max",
               "need 0 < scale_min <= scale_max")
        _check(self.loader_workers >= 0, "data.loader_workers", "must be >= 0")
        _check(self.max_val_images >= 0, "data.max_val_images", "must be >= 0")
        _check(self.max_image_pixels > 0, "data.max_image_pixels", "must be > 0")
        for key in ("synthetic_train", "synthetic_val", "synthetic_test"):
            _check(getattr(self, key) >= 1, f"data.{key}", "must be >= 1")
        _check(self.synthetic_test_seed != self.synthetic_seed, "data.synthetic_test_seed",
               "must differ from data.synthetic_seed: the test scenes are held out")
        _check(self.eval_split == "val" or self.dataset.startswith("synthetic"),
               "data.eval_split", f"{self.dataset} has no labelled test split here; use val")
        _check(self.synthetic_size >= 16, "data.synthetic_size", "must be >= 16")


@dataclass(frozen=True)
class ModelConfig:
    # efficientnet_lite0 (4.7 M parameters) fine-tunes in minutes on CPU and its ImageNet
    # weights ship inside a package; the paper's resnet101 is in configs/*.yaml.
    backbone: Backbone = "efficientnet_lite0"
    output_stride: OutputStride = 8  # the paper's atrous ResNet keeps stride 8
    head: Head = "aspp"  # DeepLab-v2 ASPP, as in the paper
    # None: random init; "imagenet": the backbone's ImageNet weights (efficientnet_lite0's
    # ship inside a package and load offline; the ResNets' are torchvision's IMAGENET1K_V1,
    # downloaded on a machine with internet); a path to a state_dict file; or a torchvision
    # weights name such as "IMAGENET1K_V2".
    pretrained: str | None = "imagenet"
    # What PDML acts on: "features", the backbone features the classifier reads (the
    # paper), or "projection", a small head of its own, L2-normalised to
    # `projection_radius` (later point-supervised work): the metric loss cannot shrink the
    # classifier's features towards collapse. Only PDML modes build the head, and the
    # registered model leaves it out. docs/benchmarks.md has the comparison.
    embedding: Literal["features", "projection"] = "projection"
    projection_dim: int = 128
    projection_radius: float = 16.0

    def __post_init__(self) -> None:
        _check(self.projection_dim >= 1, "model.projection_dim", "must be >= 1")
        _check(self.pretrained != "", "model.pretrained",
               "is empty; use null for random init or imagenet for ImageNet weights")
        _check(self.projection_radius > 0, "model.projection_radius", "must be > 0")


@dataclass(frozen=True)
class LossConfig:
    margin: float = 20.0  # the paper's m (Table 4: 20 is best)
    alpha: float = 0.8  # weight of the pull term L_p (paper: 0.8)
    beta: float = 1.0  # weight of the hinge term L_n (paper: 1)
    # Weight of L_t against the point CE. The paper does not state it. L_t with margin 20
    # is ~15 while the CE is ~1: at 1.0 it collapses ReLU embeddings. 0.02 on the
    # projection head is the demo's; the paper's form (features) runs at 0.1 in
    # configs/*.yaml.
    pdml_weight: float = 0.02
    pairing: Pairing = "paper"  # Algorithm 1 lines 15-19, or all pos x neg
    subgroup_size: int = 4  # consecutive images of the (global) batch that form a subgroup
    mining: Literal["in_batch", "global", "global+store"] = "global"
    store_weight: float = 0.5  # weight of store triplets relative to subgroup triplets
    store_capacity: int = 8192  # points held by the EmbeddingStore ring buffer
    store_max_staleness: int = 50  # optimizer steps after which a stored point is dropped
    store_samples: int = 512  # points a worker draws from the store each step
    # EmbeddingStore actors: worker r pushes to and samples from shard r % store_shards,
    # which holds the points of its group of workers. One actor serves ~10 workers at a
    # V100 step before it saturates (docs/benchmarks.md); a large run shards by group.
    store_shards: int = 1

    def __post_init__(self) -> None:
        _check(self.margin >= 0, "loss.margin", f"must be >= 0, got {self.margin}")
        _check(self.alpha >= 0, "loss.alpha", f"must be >= 0, got {self.alpha}")
        _check(self.beta >= 0, "loss.beta", f"must be >= 0, got {self.beta}")
        _check(self.pdml_weight >= 0, "loss.pdml_weight", f"must be >= 0, got {self.pdml_weight}")
        _check(self.subgroup_size >= 2, "loss.subgroup_size",
               "must be >= 2 (triplets are formed across images)")
        _check(self.store_weight >= 0, "loss.store_weight", "must be >= 0")
        _check(self.store_capacity >= 1, "loss.store_capacity", "must be >= 1")
        _check(self.store_max_staleness >= 1, "loss.store_max_staleness", "must be >= 1")
        _check(self.store_samples >= 1, "loss.store_samples", "must be >= 1")
        _check(self.store_shards >= 1, "loss.store_shards", "must be >= 1")


@dataclass(frozen=True)
class ExtensionConfig:
    # Which pixels the extension labels (paper Table 5). "score" (Eq. 6): any pixel whose
    # confident argmax is a class the image's points name; "score+region" (Eq. 7, the
    # paper's choice): only inside the `window` squares around the points; "region": every
    # pixel of the windows. "score" is the demo's default (see EXTENDED_WEIGHT above); on
    # real scenes the paper measured it 57% right and below point CE (Table 5), so the
    # real-data configs use "score+region".
    method: ExtensionMethod = "score"
    threshold: float = 0.7  # paper: 0.7 (Table 5)
    window: int = 5  # the square around each point, in pixels (paper: 5x5)
    # Drop extended pixels within this many pixels of a pixel the model predicts as
    # another class (0: keep them, the paper). A point-trained model is most often wrong
    # next to its own boundaries, confident or not (docs/benchmarks.md).
    boundary_margin: int = 0
    # The extension needs a classifier that is already roughly right: the paper extends
    # from PDML-trained weights. It starts at epoch `start_epoch` when set, else after
    # `start_fraction` of the epochs, so the same default suits 6 or 60 epochs. From
    # pretrained weights at weight 16 a quarter beat a half at 300 steps (+0.4) but lost
    # 5.2 at 150 (started after 25 steps, from a model still often wrong); a half gained
    # at both (docs/benchmarks.md).
    start_epoch: int | None = None
    start_fraction: float = 0.5
    # How the point CE weighs the extended pixels. "pooled" (the paper): one mean over the
    # points and the extended pixels, so classes the model is already sure of, which the
    # extension adds most, gain weight over the rest. "separate": the mean over the points
    # plus `weight` x the mean over the extended pixels, so each class keeps its points'
    # weight. "separate" is the demo's default: from random init pooled lost 12 mIoU
    # points, mostly on the thing classes (docs/benchmarks.md). "balanced": as
    # "separate", but the extended pixels' term is a mean over classes of each class's
    # mean, so the stuff the extension labels by the thousand does not drown the things.
    weighting: ExtensionWeighting = "separate"
    # Not "pooled": the weight of the extended pixels' term (an image has ~3,000 extended
    # pixels and ~12 points, each term a mean, the points' at 1). None: EXTENDED_WEIGHT,
    # 16 from a pretrained backbone, 4 from random init (see EXTENDED_WEIGHT).
    weight: float | None = None
    ramp_epochs: int = 0  # not "pooled": `weight` rises linearly over this many epochs

    def __post_init__(self) -> None:
        _check(0 < self.threshold < 1, "extension.threshold",
               f"must lie in the open interval (0, 1), got {self.threshold}")
        _check(self.window >= 1 and self.window % 2 == 1, "extension.window",
               f"must be a positive odd number, got {self.window}")
        _check(self.boundary_margin >= 0, "extension.boundary_margin",
               f"must be >= 0, got {self.boundary_margin}")
        _check(self.start_epoch is None or self.start_epoch >= 0, "extension.start_epoch",
               "must be >= 0 (or null: start after extension.start_fraction of the epochs)")
        _check(0 <= self.start_fraction < 1, "extension.start_fraction",
               f"must lie in [0, 1), got {self.start_fraction}")
        _check(self.weight is None or self.weight >= 0, "extension.weight",
               f"must be >= 0, got {self.weight}")
        _check(self.ramp_epochs >= 0, "extension.ramp_epochs", "must be >= 0")
        # Pooled weighs every labelled pixel 1: a stored config may say so (weight 1.0).
        _check(self.weighting != "pooled" or (self.weight in (None, 1.0) and self.ramp_epochs == 0),
               "extension.weight/ramp_epochs", "apply to extension.weighting=separate or "
               "balanced only; pooled weighting has one mean over points and extended pixels")

    def resolved(self, *, pretrained: bool) -> ExtensionConfig:
        """This config with an unset weight filled from EXTENDED_WEIGHT; pooled weighting
        keeps it unset (it has one mean, no weight of its own)."""
        if self.weight is not None or self.weighting == "pooled":
            return self
        weight = EXTENDED_WEIGHT["pretrained" if pretrained else "random init"]
        return dataclasses.replace(self, weight=weight)

    def first_epoch(self, epochs: int) -> int:
        """The first epoch (0-based) whose steps extend the labels, of ``epochs`` in all."""
        if self.start_epoch is not None:
            return self.start_epoch
        return int(self.start_fraction * epochs)

    def weight_at(self, epoch: int, epochs: int) -> float:
        """The extended pixels' weight in ``epoch`` (not "pooled", a resolved config):
        ramped in, then ``weight``."""
        if self.weight is None:
            raise ValueError("weight_at of an unresolved extension config: call resolved()")
        if not self.ramp_epochs:
            return self.weight
        done = epoch - self.first_epoch(epochs) + 1
        return self.weight * min(max(done, 0) / self.ramp_epochs, 1.0)


@dataclass(frozen=True)
class TrainConfig:
    # full: dense masks (the upper bound); point: point CE; +pdml: the triplet loss over
    # the points' embeddings; +ext: online label extension. point+ext (the extension
    # without PDML) is not one of the paper's rows: it tells the two apart.
    supervision: Literal["full", "point", "point+pdml", "point+ext",
                         "point+pdml+ext"] = "point+pdml+ext"
    epochs: int = 15
    max_steps: int = 0  # 0: run all epochs; >0 stops early (tests, smoke runs)
    batch_size: int = 8  # global batch over all workers (paper: 16)
    # The paper fine-tunes ImageNet weights with SGD at lr 2.5e-4 (x10 for the head);
    # the demo fine-tunes Lite0 with AdamW at 2e-3 (chosen for ResNet-18 from random init,
    # and kept: the demo's start was compared at these settings) and learns within minutes.
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3  # backbone lr; the classifier gets lr * head_lr_mult
    head_lr_mult: float = 1.0  # paper: 10 (with SGD and a pretrained backbone)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4  # paper: 5e-4 with SGD
    poly_power: float = 0.8  # lr = base * (1 - it / max_it) ** poly_power
    seed: int = 0
    amp: bool = True  # mixed precision; only ever used on GPU workers
    log_every_steps: int = 10
    eval_every_epochs: int = 1

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(self.head_lr_mult > 0, "train.head_lr_mult", "must be > 0")
        _check(0 <= self.momentum < 1, "train.momentum", "must lie in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.poly_power >= 0, "train.poly_power", "must be >= 0")
        _check(self.log_every_steps >= 1, "train.log_every_steps", "must be >= 1")
        _check(self.eval_every_epochs >= 1, "train.eval_every_epochs", "must be >= 1")


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: RAY_ADDRESS, a running cluster, else a local one
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "ray_results"  # local folder or a pyarrow URI such as s3://bucket/x
    run_name: str | None = None  # None: a fresh unique name; reuse a name to resume it
    max_failures: int = 2  # worker failures survived by restarting from the last checkpoint
    keep_checkpoints: int = 2  # best checkpoints kept, by val mIoU
    # "async": a worker writes the checkpoint locally and trains on while Ray copies it to
    # storage_path (on a GPU cluster with s3:// storage the copy is the slow part);
    # "sync": the step waits for the copy (Ray's alpha async API falls back to this).
    checkpoint_upload: Literal["async", "sync"] = "async"

    def __post_init__(self) -> None:
        _check(self.num_workers >= 1, "ray.num_workers", "must be >= 1")
        _check(self.cpus_per_worker >= 0, "ray.cpus_per_worker", "must be >= 0")
        _check(self.max_failures >= -1, "ray.max_failures", "must be >= -1 (-1: unlimited)")
        _check(self.keep_checkpoints >= 1, "ray.keep_checkpoints", "must be >= 1")
        _check_run_name(self.run_name, "ray.run_name")


# Never echo the URI itself in this message: it holds the secret.
CREDENTIALS_IN_URI = ("holds credentials (user:password@host); keep secrets out of URIs, configs "
                      "and logs: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                      "MLFLOW_TRACKING_TOKEN) in the environment and give the URI without them")


def uri_has_credentials(uri: str) -> bool:
    """True for ``https://user:pass@host`` and any URI carrying a password.

    A tracking URI ends up in MLflow params, checkpoints and log lines, so it must not
    carry a secret; MLflow reads a server's credentials from environment variables.
    """
    parts = urllib.parse.urlsplit(uri)
    return parts.password is not None or (parts.scheme in ("http", "https")
                                          and parts.username is not None)


@dataclass(frozen=True)
class MLflowConfig:
    # None: MLFLOW_TRACKING_URI when set, else sqlite:///<project>/mlflow.db
    tracking_uri: str | None = None
    artifact_location: str | None = None  # None: <project>/mlartifacts (for a sqlite store)
    experiment: str = "pdml-scene-parser"
    registered_model: str = "pdml-scene-parser"
    champion_alias: str = "champion"
    register: bool = True

    def __post_init__(self) -> None:
        _check(self.tracking_uri is None or not uri_has_credentials(self.tracking_uri),
               "mlflow.tracking_uri", CREDENTIALS_IN_URI)


@dataclass(frozen=True)
class SweepConfig:
    """The Ray Tune search space and schedule of ``python -m tuning.sweep``."""

    name: str | None = None  # None: a fresh unique name; reuse a name to resume that sweep
    search: Literal["grid", "random"] = "grid"
    num_samples: int = 1  # grid: repeats of the whole grid (seeds); random: trials drawn
    # grid: every listed value; random: margins and alphas drawn from the list,
    # thresholds uniformly between the smallest and largest listed value.
    margins: tuple[float, ...] = (8.0, 12.0, 16.0, 20.0, 24.0)  # the paper's Table 4
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)  # the paper's Table 5 range
    alphas: tuple[float, ...] = ()  # empty: alpha stays at loss.alpha
    pdml_weights: tuple[float, ...] = ()  # empty: the weight stays at loss.pdml_weight
    learning_rates: tuple[float, ...] = ()  # empty: train.lr
    scheduler: Literal["asha", "none"] = "asha"  # ASHA stops weak trials early on val mIoU
    grace_period: int = 2  # evaluations a trial always gets before ASHA may stop it
    reduction_factor: int = 2
    max_concurrent_trials: int = 0  # 0: as many as the cluster's CPUs/GPUs fit

    def __post_init__(self) -> None:
        _check(self.num_samples >= 1, "sweep.num_samples", "must be >= 1")
        _check(len(self.margins) >= 1 and min(self.margins) >= 0, "sweep.margins",
               "needs at least one margin, all >= 0")
        _check(len(self.thresholds) >= 1 and all(0 < t < 1 for t in self.thresholds),
               "sweep.thresholds", "needs at least one threshold, each in the open interval (0, 1)")
        _check(all(a >= 0 for a in self.alphas), "sweep.alphas", "must all be >= 0")
        _check(all(w >= 0 for w in self.pdml_weights), "sweep.pdml_weights", "must all be >= 0")
        _check(all(lr > 0 for lr in self.learning_rates), "sweep.learning_rates", "must all be > 0")
        _check(self.grace_period >= 1, "sweep.grace_period", "must be >= 1")
        _check(self.reduction_factor >= 2, "sweep.reduction_factor", "must be >= 2")
        _check(self.max_concurrent_trials >= 0, "sweep.max_concurrent_trials", "must be >= 0")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    extension: ExtensionConfig = field(default_factory=ExtensionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        for section in dataclasses.fields(self):  # also for sections built without from_dict
            values = getattr(self, section.name)
            for item in dataclasses.fields(values):
                value = getattr(values, item.name)
                for number in value if isinstance(value, tuple) else (value,):
                    _check(not isinstance(number, float) or math.isfinite(number),
                           f"{section.name}.{item.name}", f"must be a finite number, got {number}")
        batch, workers = self.train.batch_size, self.ray.num_workers
        _check(batch >= workers, "train.batch_size",
               f"global batch {batch} is smaller than ray.num_workers="
               f"{workers}: every worker needs at least one image")
        _check(batch % workers == 0, "train.batch_size",
               f"global batch {batch} does not split evenly over ray.num_workers={workers}: "
               f"each worker would take {batch // workers} image(s), so the run would train "
               f"with a global batch of {batch // workers * workers}, not {batch}; use a "
               f"multiple of {workers}")
        _check(self.loss.store_shards <= workers, "loss.store_shards",
               f"{self.loss.store_shards} shards for ray.num_workers={workers}: a shard "
               "without workers would hold nothing; use at most one shard per worker")
        _check_run_name(self.sweep.name, "sweep.name")

    # -- views ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self, *, include_sweep: bool = False) -> dict[str, Any]:
        """``{"train.lr": 0.002, ...}``: the form logged as MLflow params, which leave the
        sweep section out (a trial's own values are in the other sections)."""
        return {f"{section}.{key}": value for section, values in self.to_dict().items()
                if include_sweep or section != "sweep" for key, value in values.items()}

    def resolved(self) -> Config:
        """This config with every value left to a default that depends on another section
        filled in (the extension's weight depends on ``model.pretrained``): what a run
        trains with and logs."""
        extension = self.extension.resolved(pretrained=self.model.pretrained is not None)
        return dataclasses.replace(self, extension=extension)

    def replace(self, **overrides: Any) -> Config:
        """A copy with dotted overrides applied: ``cfg.replace(**{"train.lr": 0.1})``."""
        return with_values(self, overrides)

    @property
    def uses_pdml(self) -> bool:
        return "pdml" in self.train.supervision

    @property
    def uses_extension(self) -> bool:
        return self.train.supervision.endswith("+ext")


SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__  # type: ignore[misc]
                             for f in dataclasses.fields(Config)}


# -- building a config from plain values --------------------------------------------
def _build_section(name: str, values: Mapping[str, Any]) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"{name}.{key}: unknown key; {name} accepts {', '.join(known)}")
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any] | None) -> Config:
    """Build and validate a Config from a nested mapping (missing keys take defaults)."""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section; sections are {', '.join(SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"{name}: expected a mapping of keys, got {values!r}")
        sections[name] = _build_section(name, values)
    return Config(**sections)


def with_values(cfg: Config, values: Mapping[str, Any]) -> Config:
    """``cfg`` with dotted values (``{"train.lr": 0.01}``) set, each checked as
    :func:`from_dict` checks it."""
    raw = cfg.to_dict()
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"{key}: unknown key; use SECTION.KEY with a section among "
                              f"{', '.join(SECTIONS)}")
        raw[section][name] = value
    return from_dict(raw)
