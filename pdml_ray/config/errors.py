"""The one error a config raises: the dotted key and what is wrong with its value."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")
