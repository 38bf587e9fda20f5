"""The in-memory graph: node id -> (class_type, inputs), where an input is a constant or a `Link`.

ComfyUI's API format writes a link as `[source_id, output_index]` and wraps a constant list as
`{"__value__": [...]}`; `parse_input` turns both into unambiguous values once, at the edge.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Link(NamedTuple):
    node: str
    slot: int


def is_link_value(value: Any) -> bool:
    """True for the API format's `[source_id, output_index]`."""
    return (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int)
            and not isinstance(value[1], bool))


def parse_input(value: Any) -> Any:
    if isinstance(value, Link):
        return value
    if is_link_value(value):
        return Link(str(value[0]), value[1])
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def to_api_value(value: Any) -> Any:
    """The inverse of `parse_input`, for writing a graph back out as API JSON."""
    if isinstance(value, Link):
        return [value.node, value.slot]
    if isinstance(value, list):
        return {"__value__": value}
    return value
