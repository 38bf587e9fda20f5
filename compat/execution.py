"""ComfyUI's `execution` module, for the packs that only read from it: the input-info helper and the
name of the executor's node-class table. Running prompts stays genloom's (engine/execution)."""

from __future__ import annotations

from .comfy_execution.graph import ExecutionBlocker, get_input_info

__all__ = ["ExecutionBlocker", "get_input_info", "ExecutionResult", "PromptExecutor"]


class ExecutionResult:
    SUCCESS = 0
    FAILURE = 1
    PENDING = 2


class PromptExecutor:
    """Named by packs for type checks and monkey-patches; genloom never runs prompts through it."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("genloom runs prompts with its own executor (engine/execution); "
                                  "ComfyUI's PromptExecutor is not provided")
