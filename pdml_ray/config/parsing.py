"""Reading a config: YAML (a key given twice refused) and dotted overrides (``--set
train.lr=0.01``), each value checked as :mod:`.coercion` checks it, with one-line
messages naming the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import ConfigError
from .schema import Config, from_dict, with_values


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the
    last value in silence, so the first setting a user wrote would be ignored)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_repeated_keys(node, "")
        return super().construct_document(node)


def _refuse_repeated_keys(node: yaml.Node, path: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_repeated_keys(item, f"{path}[{index}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[tuple[str, str], int] = {}
    for key_node, value_node in node.value:
        name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
        dotted = f"{path}.{name}" if path else name
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                raise ConfigError(f"{dotted}: given twice (lines {seen[ident]} and "
                                  f"{key_node.start_mark.line + 1}); YAML would keep the last "
                                  "value only: keep one")
            seen[ident] = key_node.start_mark.line + 1
        _refuse_repeated_keys(value_node, dotted)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE such as train.lr=0.01")
    key, text = item.split("=", 1)
    try:
        value = yaml.load(text, Loader=UniqueKeyLoader) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {exc}") from None
    except ConfigError as exc:  # a key repeated inside the value: {a: 1, a: 2}
        raise ConfigError(f"{key.strip()}.{exc}") from None
    return key.strip(), value


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | Sequence[str]) -> Config:
    """Apply ``{"train.lr": 0.01}`` or ``["train.lr=0.01"]``; values are validated."""
    if not isinstance(overrides, Mapping):
        overrides = dict(_parse_override(item) for item in overrides)
    return with_values(cfg, overrides)


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> Config:
    """Read a YAML config (None: the embedded defaults) and apply dotted overrides."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                              "save the config as UTF-8") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        try:
            cfg = from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    else:
        cfg = Config()
    return apply_overrides(cfg, overrides) if overrides else cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
