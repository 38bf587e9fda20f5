"""Errors the diffusion library raises for users: a file it cannot read, a sampling request it cannot
serve, a device that is out of memory. They are GenloomErrors; a node turns the first into a
ModelLoadError naming its input."""

from __future__ import annotations

from genloom.engine.errors import GenloomError


class CheckpointError(GenloomError, ValueError):
    """A weights file that cannot be read or understood."""


class SamplingError(GenloomError, ValueError):
    """A sampler/scheduler combination or input that cannot be sampled, with a message for users."""


class OutOfMemory(GenloomError, RuntimeError):
    """The accelerator ran out of memory even after everything else was offloaded."""


class VideoError(GenloomError, ValueError):
    """A video file that does not decode, or frames that cannot be written as one."""
