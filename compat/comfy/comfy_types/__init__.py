"""ComfyUI's `comfy.comfy_types`: IO (the type names), ComfyNodeABC, InputTypeDict for type hints."""

from .node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator, InputTypeDict, InputTypeOptions

__all__ = ["IO", "ComfyNodeABC", "CheckLazyMixin", "InputTypeDict", "InputTypeOptions", "FileLocator"]
