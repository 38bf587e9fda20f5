"""Result normalising: every return shape a node may use (tuples, one value, NodeOutput, V1 dicts and
lists, blockers) becomes (outputs, ui, expansion)."""

from __future__ import annotations

from ..node import Blocker, NodeOutput
from .state import SILENT, NodeKind


def normalise(kind: NodeKind, result):
    """(outputs tuple, ui, expand) from any accepted return shape; outputs is SILENT when blocked."""
    ui = expand = None
    if type(result) is tuple:
        outs = result
    elif result is SILENT:
        return SILENT, None, None
    elif type(result) is Blocker:
        outs = (result,) * kind.n_out
    elif isinstance(result, NodeOutput):
        outs, ui, expand = result.outputs, result.ui, result.expand
    elif kind.is_v1 and isinstance(result, dict):
        ui, expand = result.get("ui"), result.get("expand")
        outs = tuple(result.get("result") or ())
    elif kind.is_v1 and isinstance(result, list):
        outs = tuple(result)
    elif result is None and kind.n_out == 0:
        outs = ()
    elif not kind.is_v1 and kind.n_out == 1:
        outs = (result,)
    else:
        raise TypeError(f"{kind.name} returned {type(result).__name__}; expected a tuple of "
                        f"{kind.n_out} output(s)")
    if len(outs) < kind.n_out:
        if not kind.is_v1:
            raise TypeError(f"{kind.name} returned {len(outs)} output(s) but declares {kind.n_out}")
        # ComfyUI accepts a V1 node returning fewer values; only a node using a missing one fails.
        missing = Blocker(f"{kind.name} returned {len(outs)} value(s) but declares {kind.n_out}; "
                          "this input uses one it did not return")
        outs = tuple(outs) + (missing,) * (kind.n_out - len(outs))
    return outs, ui, expand


def merge_ui(uis: list) -> dict | None:
    if not uis:
        return None
    if len(uis) == 1:
        return uis[0]
    merged: dict = {}
    for ui in uis:
        for key, value in ui.items():
            if isinstance(value, list) and isinstance(merged.get(key), list):
                merged[key] = merged[key] + value
            else:
                merged[key] = list(value) if isinstance(value, list) else value
    return merged
