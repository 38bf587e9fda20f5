"""genloom: a node-based workflow graph engine for generative AI.

The public API is imported lazily so that `import genloom` (and the CLI's --help) stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["Engine", "RunResult", "WorkflowError", "ExecutionError", "Interrupted"]


def __getattr__(name):
    if name == "Engine":
        from .runtime import Engine

        return Engine
    if name in __all__:
        from .engine import api

        return getattr(api, name)
    raise AttributeError(name)
