"""Runs a validated graph. See run.py for the walk; the other modules each hold one concern of it."""

from ..errors import ExecutionError
from .run import Execution

__all__ = ["Execution", "ExecutionError"]
