"""ComfyUI's `comfy_execution.graph` as node packs use it. `ExecutionBlocker` is genloom's own
`Blocker`: returned as an output value it stops the nodes that consume it, silently with None, as an
error with a message."""

from __future__ import annotations

from genloom.engine.node import Blocker as ExecutionBlocker

__all__ = ["ExecutionBlocker", "get_input_info"]


def get_input_info(class_def, input_name: str, valid_inputs=None):
    """(type, section, options) of one declared input of a V1 class, or (None, None, None)."""
    valid_inputs = valid_inputs or class_def.INPUT_TYPES()
    for section in ("required", "optional", "hidden"):
        group = valid_inputs.get(section)
        if group is not None and input_name in group:
            info = group[input_name]
            if section == "hidden":
                return info, section, None
            type_ = info[0] if isinstance(info, (tuple, list)) else info
            options = info[1] if isinstance(info, (tuple, list)) and len(info) > 1 else None
            return ("COMBO" if isinstance(type_, list) else type_), section, options
    return None, None, None
