"""ControlNet and T2I-Adapter nodes (ComfyUI's names and inputs) and the Canny preprocessor.

The apply nodes attach a Control to each CONDITIONING entry (key "control", stacked on the one
already there); the sampler's model handle asks it for the UNet's residuals (diffusion/controlnet.py).
"""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Float, Input, Node, Out

from .loaders import _load, _resolve, model_names, model_stamp

_STRENGTH = dict(min=0.0, max=10.0, step=0.01)
_PERCENT = dict(min=0.0, max=1.0, step=0.001)


def _load_control(input_name: str, name: str, base_unet=None, tag: str = ""):
    from genloom.diffusion.controlnet import load_control_model
    from genloom.diffusion.errors import CheckpointError
    from genloom.engine.errors import ModelLoadError

    path = _resolve(input_name, "controlnet", name)
    try:
        return _load(input_name, path, lambda: load_control_model(path, base_unet), tag=tag).control
    except CheckpointError as exc:
        raise ModelLoadError(input_name, str(exc)) from exc


class ControlNetLoader(Node):
    """Loads a ControlNet or T2I-Adapter (SD1.5, SD2, SDXL; original or diffusers layout; Union/ProMax;
    Stability's control-LoRAs, whose ControlNet is made from the model they are applied to; Flux and
    SD3 ControlNets in diffusers layout)."""

    category = "loaders"
    display_name = "Load ControlNet Model"
    inputs = [Combo("control_net_name", model_names("controlnet"), tooltip="The ControlNet or T2I-Adapter file.")]
    outputs = [Out("CONTROL_NET")]

    @classmethod
    def fingerprint(cls, control_net_name):
        return model_stamp("controlnet", control_net_name)

    def run(self, control_net_name):
        return (_load_control("control_net_name", control_net_name, tag="control"),)


class DiffControlNetLoader(Node):
    """Loads a ControlNet stored as differences from a base model, adding the model's weights."""

    category = "loaders"
    display_name = "Load ControlNet Model (diff)"
    inputs = [Input("model", "MODEL", tooltip="The base model the differences are relative to."),
              Combo("control_net_name", model_names("controlnet"), tooltip="The ControlNet file.")]
    outputs = [Out("CONTROL_NET")]

    @classmethod
    def fingerprint(cls, control_net_name, **_):
        return model_stamp("controlnet", control_net_name)

    def run(self, model, control_net_name):
        return (_load_control("control_net_name", control_net_name, model.unet,
                              tag=f"control-diff-{id(model.unet)}"),)


def _hint(image):
    if image is None or getattr(image, "ndim", 0) != 4:
        raise NodeInputError("image", "needs an IMAGE [batch, height, width, channels]")
    return image


def _needs_vae(control_net, vae, input_name: str = "vae"):
    """Flux and SD3 ControlNets take the hint VAE-encoded: without a VAE they cannot run."""
    if vae is None and getattr(control_net, "takes_latents", False):
        raise NodeInputError(input_name, f"ControlNet {control_net.name!r} takes its hint as latents: it needs "
                                         "a VAE (use Apply ControlNet with its vae input connected)")


class ControlNetApply(Node):
    """Applies a ControlNet to one conditioning for the whole run (the older node)."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet (OLD)"
    inputs = [Input("conditioning", "CONDITIONING"), Input("control_net", "CONTROL_NET"),
              Input("image", "IMAGE", tooltip="The control hint (edges, depth, pose...)."),
              Float("strength", 1.0, **_STRENGTH)]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, control_net, image, strength):
        from genloom.diffusion.controlnet import apply_control

        if strength == 0:
            return (conditioning,)
        _needs_vae(control_net, None, "control_net")
        return tuple(apply_control([conditioning], control_net, _hint(image), strength, (0.0, 1.0)))


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to the positive and negative conditioning between two fractions of the run."""

    category = "conditioning/controlnet"
    display_name = "Apply ControlNet"
    inputs = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("control_net", "CONTROL_NET"),
              Input("image", "IMAGE", tooltip="The control hint (edges, depth, pose...)."),
              Float("strength", 1.0, **_STRENGTH),
              Float("start_percent", 0.0, tooltip="Where in the run the control starts (0: first step).", **_PERCENT),
              Float("end_percent", 1.0, tooltip="Where in the run it ends (1: last step).", **_PERCENT),
              Input("vae", "VAE", optional=True,
                    tooltip="For ControlNets that take the hint as latents (Flux, SD3; SD/SDXL ones take pixels).")]
    outputs = [Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative")]

    def run(self, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        from genloom.diffusion.controlnet import apply_control

        if strength == 0:
            return (positive, negative)
        _needs_vae(control_net, vae)
        return tuple(apply_control([positive, negative], control_net, _hint(image), strength,
                                   (start_percent, end_percent), vae))


class ControlNetApplySD3(Node):
    """Apply ControlNet with the VAE required (ComfyUI's older node for SD3's ControlNets, which take
    the hint as latents); the same as Apply ControlNet with its vae input connected."""

    category = "conditioning/controlnet"
    display_name = "Apply Controlnet with VAE"
    inputs = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("control_net", "CONTROL_NET"), Input("vae", "VAE"), Input("image", "IMAGE"),
              Float("strength", 1.0, **_STRENGTH), Float("start_percent", 0.0, **_PERCENT),
              Float("end_percent", 1.0, **_PERCENT)]
    outputs = [Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative")]

    def run(self, positive, negative, control_net, vae, image, strength, start_percent, end_percent):
        return ControlNetApplyAdvanced().run(positive, negative, control_net, image, strength,
                                             start_percent, end_percent, vae)


class ControlNetInpaintingAliMamaApply(Node):
    """Applies an inpainting ControlNet with the mask of the area to repaint (1 = repaint).

    AliMama's inpainting ControlNets (SD3, Flux) take the image with that area blacked out and the
    mask (inverted: 1 = keep) as one more hint channel, ComfyUI's rule (docs/controlnet.md). Other
    ControlNets take no mask: for them this applies like Apply ControlNet, image untouched."""

    category = "conditioning/controlnet"
    inputs = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("control_net", "CONTROL_NET"), Input("vae", "VAE"), Input("image", "IMAGE"),
              Input("mask", "MASK", tooltip="The area to repaint (1); the rest is kept."),
              Float("strength", 1.0, **_STRENGTH),
              Float("start_percent", 0.0, **_PERCENT), Float("end_percent", 1.0, **_PERCENT)]
    outputs = [Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative")]

    def run(self, positive, negative, control_net, vae, image, mask, strength, start_percent, end_percent):
        if not getattr(control_net, "concat_mask", False):
            return ControlNetApplyAdvanced().run(positive, negative, control_net, image, strength,
                                                 start_percent, end_percent, vae)
        from genloom.diffusion.controlnet import apply_control
        from genloom.diffusion.resample import resize

        if strength == 0:
            return (positive, negative)
        _needs_vae(control_net, vae)
        image = _hint(image)
        if getattr(mask, "ndim", 0) not in (2, 3):
            raise NodeInputError("mask", "needs a MASK [batch, height, width]")
        keep = 1.0 - mask.reshape(-1, 1, *mask.shape[-2:]).float()
        # the image is blacked out where the (resized, rounded) mask says repaint
        where = resize(keep, image.shape[2], image.shape[1], "bilinear", "center").round().movedim(1, -1)
        if where.shape[0] not in (1, image.shape[0]) and image.shape[0] != 1:
            raise NodeInputError("mask", f"{where.shape[0]} masks for {image.shape[0]} images: give one mask, "
                                         "one image, or as many of each")
        return tuple(apply_control([positive, negative], control_net, image * where, strength,
                                   (start_percent, end_percent), vae, keep))


def _union_types():
    from genloom.diffusion.controlnet import UNION_TYPES

    return ["auto"] + list(UNION_TYPES)


class SetUnionControlNetType(Node):
    """Chooses which kind of hint a union ControlNet gets ("auto": it decides)."""

    category = "conditioning/controlnet"
    inputs = [Input("control_net", "CONTROL_NET"), Combo("type", _union_types)]
    outputs = [Out("CONTROL_NET")]

    def run(self, control_net, type):
        from genloom.diffusion.controlnet import UNION_TYPES

        number = UNION_TYPES.get(type, -1)
        return (control_net.with_extra(control_type=[number] if number >= 0 else []),)


class Canny(Node):
    """Finds edges (Canny) in an image: the hint for canny ControlNets and T2I-Adapters."""

    category = "image/preprocessors"
    inputs = [Input("image", "IMAGE"),
              Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01,
                    tooltip="Edges weaker than this are dropped."),
              Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01,
                    tooltip="Edges stronger than this are kept; those in between only when connected.")]
    outputs = [Out("IMAGE")]

    def run(self, image, low_threshold, high_threshold):
        from genloom.diffusion.preprocess import canny
        from genloom.engine import context

        if low_threshold > high_threshold:
            raise NodeInputError("low_threshold", f"{low_threshold} is above high_threshold ({high_threshold})")
        return (canny(_hint(image)[..., :3], low_threshold, high_threshold, context.current().device),)


NODES = [ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced, ControlNetApplySD3,
         ControlNetInpaintingAliMamaApply, SetUnionControlNetType, Canny]
