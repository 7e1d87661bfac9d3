"""One typed, frozen configuration for every job, trial and test.

A config is a tree of frozen dataclasses, one per section (:mod:`.schema`). It is read
from YAML, patched with dotted overrides (``--set train.lr=0.01``) and validated field by
field (:mod:`.parsing`): an unknown key, a value of the wrong type or a value outside its
range raises :class:`ConfigError` naming the dotted key and what it accepts
(:mod:`.coercion` checks a value against its field's type). Relative paths are resolved
against a project directory (:mod:`.paths`).
"""

from .errors import ConfigError
from .parsing import apply_overrides, dump_config, load_config
from .paths import project_dir, resolve_paths
from .schema import (EXTENDED_WEIGHT, SECTIONS, Backbone, Config, DataConfig,
                     ExtensionConfig, ExtensionMethod, ExtensionWeighting, Head, LossConfig,
                     MLflowConfig, ModelConfig, OutputStride, Pairing, RayConfig,
                     SweepConfig, TrainConfig, from_dict, uri_has_credentials)

__all__ = [
    "EXTENDED_WEIGHT", "SECTIONS", "Backbone", "Config", "ConfigError", "DataConfig",
    "ExtensionConfig", "ExtensionMethod", "ExtensionWeighting", "Head", "LossConfig",
    "MLflowConfig", "ModelConfig", "OutputStride", "Pairing", "RayConfig", "SweepConfig",
    "TrainConfig", "apply_overrides", "dump_config", "from_dict", "load_config",
    "project_dir", "resolve_paths", "uri_has_credentials",
]
