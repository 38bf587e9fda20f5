"""ComfyUI's `comfy_api.latest`: `io` (the V3 node API), `ui` (output previews), `ComfyExtension`."""

from . import io, ui
from ._node import ComfyExtension

__all__ = ["io", "ui", "ComfyExtension"]
