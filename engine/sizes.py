"""Byte sizes as people write them in settings ("4GB", "512 MiB", "6G", "1.5k", "1e9"): the one parser
for cache budgets, memory budgets and request limits. Units are binary and case-insensitive."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, **{letter + suffix: 1024 ** power for power, letter in enumerate("kmgt", start=1)
                            for suffix in ("", "b", "i", "ib")}}
_SIZE = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


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
