from .node import DeepJoin

__all__ = ["DeepJoin"]
