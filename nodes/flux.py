"""Flux conditioning nodes (ComfyUI's comfy_extras/nodes_flux.py and nodes_edit_model.py names), and
Flux.2's empty latent and scheduler.

CONDITIONING extras set here: "guidance" (float, or None: the guidance embedding left out),
"reference_latents" (a list of raw VAE latents [B, 16, h, w], appended in order) and
"reference_latents_method" ("offset" | "index" | "uxo"). The Flux MODEL reads them
(genloom.diffusion.models.flux_model).
"""

from __future__ import annotations

from genloom.engine.node import Combo, Float, Input, Int, Node, Out, String

from .latent import MAX_RESOLUTION
from .sd3 import EmptySD3LatentImage

_CAT = "advanced/conditioning/flux"
_COND = Input("conditioning", "CONDITIONING")
_GUIDANCE = Float("guidance", 3.5, min=0.0, max=100.0, step=0.1)
# (width, height) pairs Flux Kontext was trained at, as ComfyUI lists them.
KONTEXT_RESOLUTIONS = [(672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248),
                       (880, 1184), (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832),
                       (1328, 800), (1392, 752), (1456, 720), (1504, 688), (1568, 672)]


def _set(conditioning, **values):
    return [[c, {**extra, **values}] for c, extra in conditioning]


class CLIPTextEncodeFlux(Node):
    """Encodes a Flux prompt: clip_l feeds CLIP-L (the pooled vector), t5xxl feeds T5; with the
    guidance value a dev model is given."""

    category = _CAT
    display_name = "CLIPTextEncodeFlux"  # ComfyUI shows the node id (no display name of its own)
    inputs = [Input("clip", "CLIP"),
              String("clip_l", "", multiline=True, dynamicPrompts=True),
              String("t5xxl", "", multiline=True, dynamicPrompts=True),
              _GUIDANCE]
    outputs = [Out("CONDITIONING")]

    def run(self, clip, clip_l, t5xxl, guidance):
        from genloom.engine.errors import NodeInputError

        if clip is None:
            raise NodeInputError("clip", "is empty (the checkpoint has no text encoder)")
        if getattr(clip, "kind", None) != "flux":
            raise NodeInputError("clip", f"is a {getattr(clip, 'kind', '?')} text encoder; CLIPTextEncodeFlux "
                                         "needs a flux one (DualCLIPLoader with type flux)")
        cond, pooled = clip.encode_roles({"clip_l": clip_l, "t5xxl": t5xxl})
        return ([[cond, {"pooled_output": pooled, "guidance": guidance}]],)


class FluxGuidance(Node):
    """Sets the guidance value a guidance-distilled Flux model (dev, Kontext) is given."""

    category = _CAT
    display_name = "FluxGuidance"  # ComfyUI shows the node id (no display name of its own)
    inputs = [_COND, _GUIDANCE]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, guidance):
        return (_set(conditioning, guidance=guidance),)


class FluxDisableGuidance(Node):
    category = _CAT
    display_name = "FluxDisableGuidance"  # ComfyUI shows the node id (no display name of its own)
    description = "This node completely disables the guidance embed on Flux and Flux like models"
    inputs = [_COND]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning):
        return (_set(conditioning, guidance=None),)


class FluxKontextImageScale(Node):
    category = _CAT
    display_name = "FluxKontextImageScale"  # ComfyUI shows the node id (no display name of its own)
    description = "This node resizes the image to one that is more optimal for flux kontext."
    inputs = [Input("image", "IMAGE")]
    outputs = [Out("IMAGE")]

    def run(self, image):
        from genloom.diffusion.resample import resize

        aspect = image.shape[2] / image.shape[1]
        _d, width, height = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
        return (resize(image.movedim(-1, 1), width, height, "lanczos", "center").movedim(1, -1).clamp(0, 1),)


class FluxKontextMultiReferenceLatentMethod(Node):
    """How several reference latents are placed for the model: offset, index, or uxo/uno."""

    category = _CAT
    display_name = "FluxKontextMultiReferenceLatentMethod"  # ComfyUI shows the node id (no display name of its own)
    # index_timestep_zero: Qwen-Image-Edit-2511's references at timestep 0 (families/qwen_image.py)
    inputs = [_COND, Combo("reference_latents_method", ["offset", "index", "uxo/uno", "index_timestep_zero"])]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, reference_latents_method):
        method = "uxo" if "uxo" in reference_latents_method or "uso" in reference_latents_method \
            else reference_latents_method
        return (_set(conditioning, reference_latents_method=method),)


class ReferenceLatent(Node):
    category = "advanced/conditioning/edit_models"
    display_name = "ReferenceLatent"  # ComfyUI shows the node id (no display name of its own)
    description = ("This node sets the guiding latent for an edit model. If the model supports it you can "
                   "chain multiple to set multiple reference images.")
    inputs = [_COND, Input("latent", "LATENT", optional=True)]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, latent=None):
        if latent is None:
            return (conditioning,)
        return ([[c, {**extra, "reference_latents": [*(extra.get("reference_latents") or []), latent["samples"]]}]
                 for c, extra in conditioning],)


class EmptyFlux2LatentImage(EmptySD3LatentImage):
    """All-zero Flux.2 latents: 128 channels (the VAE's 32, in 2x2 patches) per 16x16 pixels."""

    category = "latent"
    display_name = "Empty Flux 2 Latent"

    def run(self, width, height, batch_size=1):
        import torch

        return ({"samples": torch.zeros([batch_size, 128, height // 16, width // 16])},)


class Flux2Scheduler(Node):
    """Black Forest Labs' Flux.2 schedule: its resolution- and step-dependent shift of a linear ramp."""

    category = "sampling/custom_sampling/schedulers"
    inputs = [Int("steps", 20, min=1, max=4096), Int("width", 1024, min=16, max=MAX_RESOLUTION, step=1),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=1)]
    outputs = [Out("SIGMAS")]

    def run(self, steps, width, height):
        from genloom.diffusion.models.families.flux2 import schedule

        return (schedule(steps, width, height),)


NODES = [CLIPTextEncodeFlux, FluxGuidance, FluxDisableGuidance, ReferenceLatent, FluxKontextImageScale,
         FluxKontextMultiReferenceLatentMethod, EmptyFlux2LatentImage, Flux2Scheduler]
