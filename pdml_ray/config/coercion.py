"""A config value checked against its field's type: ints widen to floats, numbers written
as strings by YAML 1.1 (``1e-3``) are read, non-finite numbers and everything else of the
wrong type are refused with the key named.

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

import math
import re
import types
import typing
from typing import Any, Literal

from .errors import ConfigError


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
