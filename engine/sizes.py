"""Byte sizes as people write them in settings ("4GB", "512 MiB", "1.5k"): the one parser for cache
budgets, memory budgets and request limits."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024 ** 2, "mb": 1024 ** 2,
          "mib": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3, "gib": 1024 ** 3, "t": 1024 ** 4,
          "tb": 1024 ** 4, "tib": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text) -> int:
    """Bytes from an int or a string with an optional binary unit; ValueError says what is accepted."""
    if isinstance(text, bool):
        raise ValueError(f"cannot read the size {text!r}: use bytes or a unit, e.g. 512MB or 2GB")
    if isinstance(text, (int, float)):
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read the size {text!r}: use bytes or a unit, e.g. 512MB or 2GB")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_optional_size(value) -> int | None:
    """As parse_size, with None or '' meaning 'automatic'."""
    if value is None or value == "":
        return None
    return parse_size(value)
