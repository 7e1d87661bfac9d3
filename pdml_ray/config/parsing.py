"""Reading a config: YAML (repeated keys refused), dotted overrides (``--set
train.lr=0.01``) and the coercion of each value to its field's type, with one-line
messages naming the key.

Why the checks are written here rather than delegated to pydantic (installed with Ray and
MLflow; tried with pydantic 2.14 on these dataclasses, ``TypeAdapter`` and
``ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)``):


- strict mode on a stdlib dataclass accepts only instances: ``{"epochs": 2}`` for
  ``TrainConfig`` fails with "Input should be an instance of TrainConfig";
- lax mode accepts what this module refuses: ``ray.use_gpu=1`` becomes ``True``,
  ``train.lr=true`` becomes ``1.0``, ``train.epochs="3"`` becomes ``3``, and still
  refuses the one-scalar list ``sweep.thresholds=0.6`` ("Input should be a valid tuple");
- strict validation of the same fields (a TypedDict built from the hints) refuses YAML
  lists for tuple fields (``sweep.margins=[8, 12]``: "Input should be a valid tuple"),
  refuses ``1e-3`` (which YAML 1.1 reads as a string), reports ``nan`` as "a valid
  number" rather than a non-finite one, and accepts ``model.output_stride=16.0``;
- per-field pydantic annotations (``StrictFloat``, ``Annotated[..., BeforeValidator]``)
  would replace the plain hints the tests read (``field.type == "float"``).

Each way keeps a pass over the hints for tuples, exponent strings and non-finite numbers,
and adds a translation of pydantic's error types into these one-line messages: more code
than :func:`_coerce`, in two mechanisms.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from .schema import SECTIONS, Config, ConfigError

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
NON_FINITE = ("nan", "inf", "infinity")


class NotFinite(ConfigError):
    """inf or nan given for a float: reported as it is, whatever else the key accepts."""


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats, nothing else."""
    origin = typing.get_origin(tp)
    if origin is tuple:  # tuple[X, ...]: a YAML list (or one scalar) of X
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(f"{key}[{i}]", item, typing.get_args(tp)[0])
                     for i, item in enumerate(items))
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except NotFinite:
                raise
            except ConfigError:
                continue
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot, no exponent sign) as a string
        elif isinstance(value, str) and value.strip().lower().lstrip("+-.") in NON_FINITE:
            raise NotFinite(f"{key}: must be a finite number, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                # 1.0e+400 reads as inf: no range check below would catch it.
                raise NotFinite(f"{key}: must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")


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
    raw = cfg.to_dict()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"{key}: unknown key; use SECTION.KEY with a section among "
                              f"{', '.join(SECTIONS)}")
        raw[section][name] = value
    return from_dict(raw)


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
