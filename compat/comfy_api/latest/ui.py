"""`from comfy_api.latest import ui`: what a V3 output node shows in the editor
(`io.NodeOutput(ui=ui.PreviewImage(images))`). Previews are written to the temp folder."""

from __future__ import annotations

from pathlib import Path

from ..._services import folders


class _UIOutput:
    def as_dict(self) -> dict:
        raise NotImplementedError


class SavedResult(dict):
    def __init__(self, filename: str, subfolder: str, type):
        super().__init__(filename=filename, subfolder=subfolder, type=getattr(type, "value", type))


class SavedImages(_UIOutput):
    def __init__(self, results: list, is_animated: bool = False):
        self.results, self.is_animated = list(results), is_animated

    def as_dict(self) -> dict:
        return {"images": list(self.results), "animated": (self.is_animated,)}


class PreviewImage(_UIOutput):
    """IMAGE [B, H, W, C] written as temporary PNGs."""

    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        from genloom.diffusion.images import save_images

        self.values = save_images(image, Path(folders().temp_dir), "ComfyUI_temp", "temp")
        self.animated = animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """MASK [B, H, W] shown as grey pictures."""

    def __init__(self, mask, animated: bool = False, cls=None, **kwargs):
        image = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(image, animated, cls)


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


__all__ = ["SavedResult", "SavedImages", "PreviewImage", "PreviewMask", "PreviewText"]
