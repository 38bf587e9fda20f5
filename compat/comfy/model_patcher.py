"""ComfyUI's `comfy.model_patcher` for node packs: `ModelPatcher` is genloom's mutable MODEL facade
(genloom.diffusion.models.patcher), what `model.clone()` returns. Built around a plain torch module
(`ModelPatcher(module, load_device, offload_device)`, as packs wrap their own networks for
`load_models_gpu`), it is a small holder of that module."""

from __future__ import annotations

from genloom.diffusion.models.handles import ModelHandle
from genloom.diffusion.models.patcher import ModelPatcher as _Facade
from genloom.diffusion.models.patcher import copy_options
from genloom.diffusion.models.patcher_extension import ExtensionMethods


class ModulePatcher(ExtensionMethods):
    """A pack's own network in ComfyUI's ModelPatcher shape: `.model`, the devices, `clone()`;
    genloom's memory manager does not manage it (the pack moves it)."""

    def __init__(self, model, load_device=None, offload_device=None, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        self.size = size
        self.model_options = {"transformer_options": {}}
        self.patches: dict = {}

    def clone(self) -> "ModulePatcher":
        twin = ModulePatcher(self.model, self.load_device, self.offload_device, self.size)
        twin.model_options = copy_options(self.model_options)
        twin.patches = dict(self.patches)
        return twin

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def _options_to_change(self) -> dict:
        return self.model_options

    def _transformer_options(self) -> dict:
        return self.model_options.setdefault("transformer_options", {})

    def model_size(self) -> int:
        if self.size:
            return self.size
        return sum(p.numel() * p.element_size() for p in self.model.parameters()) \
            if hasattr(self.model, "parameters") else 0

    def model_dtype(self):
        return next(self.model.parameters()).dtype

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        for key, value in patches.items():
            self.patches.setdefault(key, []).append((strength_patch, value, strength_model))
        return list(patches)

    def get_model_object(self, name: str):
        obj = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def patch_model(self, device_to=None, *args, **kwargs):
        if device_to is not None and hasattr(self.model, "to"):
            self.model.to(device_to)
        return self.model

    def unpatch_model(self, device_to=None, *args, **kwargs) -> None:
        if device_to is not None and hasattr(self.model, "to"):
            self.model.to(device_to)


class _AnyPatcher(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, (_Facade, ModelHandle, ModulePatcher))


class ModelPatcher(_Facade, metaclass=_AnyPatcher):
    """`isinstance(model, ModelPatcher)` holds for every MODEL genloom makes (handles and their
    clones); built from a MODEL it is that MODEL's clone, from a torch module a ModulePatcher."""

    def __new__(cls, model=None, *args, **kwargs):
        if model is not None and not hasattr(model, "unet"):
            return ModulePatcher(model, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, model, *args, **kwargs):
        super().__init__(model)
