"""SD3 / SD3.5 nodes (ComfyUI's comfy_extras/nodes_sd3.py names): the three-prompt text encoder and
the 16-channel empty latent."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Float, Input, Int, Node, Out, String

from .conditioning import _embeddings_stamp
from .latent import MAX_RESOLUTION


class CLIPTextEncodeSD3(Node):
    """Encodes SD3's three prompts: clip_l for CLIP-L, clip_g for CLIP-G, t5xxl for T5. With
    empty_padding "none" an empty prompt gives its encoder no tokens at all (ComfyUI's rule)."""

    category = "advanced/conditioning"
    inputs = [Input("clip", "CLIP"),
              String("clip_l", "", multiline=True, dynamicPrompts=True),
              String("clip_g", "", multiline=True, dynamicPrompts=True),
              String("t5xxl", "", multiline=True, dynamicPrompts=True),
              Combo("empty_padding", ["none", "empty_prompt"], "none")]
    outputs = [Out("CONDITIONING")]

    @classmethod
    def fingerprint(cls, clip_l="", clip_g="", t5xxl="", **_):
        return _embeddings_stamp(clip_l, clip_g, t5xxl)

    def run(self, clip, clip_l, clip_g, t5xxl, empty_padding="none"):
        if clip is None:
            raise NodeInputError("clip", "is empty (the checkpoint has no text encoder)")
        if getattr(clip, "kind", None) != "sd3":
            raise NodeInputError("clip", f"is a {getattr(clip, 'kind', '?')} text encoder; CLIPTextEncodeSD3 "
                                         "needs an sd3 one (TripleCLIPLoader, or a CLIP loader with type sd3)")
        keep = empty_padding != "none"
        texts = {role: (text if text or keep else None)
                 for role, text in (("clip_l", clip_l), ("clip_g", clip_g), ("t5xxl", t5xxl))}
        cond, pooled = clip.encode_roles(texts)
        return ([[cond, {"pooled_output": pooled}]],)


class EmptySD3LatentImage(Node):
    """A batch of all-zero 16-channel latents (SD3, SD3.5, Flux) to start text-to-image sampling from."""

    category = "latent/sd3"
    inputs = [Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
              Int("batch_size", 1, min=1, max=4096)]
    outputs = [Out("LATENT")]

    @classmethod
    def validate(cls, width, height, batch_size=1):
        from genloom.engine.budgets import declared_size

        return declared_size(cls.inputs, {"width": width, "height": height, "batch_size": batch_size})

    def run(self, width, height, batch_size=1):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


class SkipLayerGuidanceSD3(Node):
    """Skip-layer guidance: within the step range, a second pass of the positive prompt with the given
    joint blocks left out pushes the result away from it (ComfyUI's experimental SD3.5 node)."""

    category = "advanced/guidance"
    inputs = [Input("model", "MODEL"),
              String("layers", "7, 8, 9", multiline=False),
              Float("scale", 3.0, min=0.0, max=10.0, step=0.1),
              Float("start_percent", 0.01, min=0.0, max=1.0, step=0.001),
              Float("end_percent", 0.15, min=0.0, max=1.0, step=0.001)]
    outputs = [Out("MODEL")]

    def run(self, model, layers, scale, start_percent, end_percent):
        import re

        from genloom.diffusion.errors import SamplingError
        from genloom.diffusion.models.families.sd3 import skip_layer_guidance

        if getattr(model, "kind", None) != "sd3":
            raise NodeInputError("model", f"is a {getattr(model, 'kind', '?')} model; skip-layer guidance here "
                                          "takes SD3/SD3.5 models")
        try:
            return (skip_layer_guidance(model, tuple(int(n) for n in re.findall(r"\d+", layers)), scale,
                                        start_percent, end_percent),)
        except SamplingError as exc:
            raise NodeInputError("layers", str(exc)) from None


NODES = [CLIPTextEncodeSD3, EmptySD3LatentImage, SkipLayerGuidanceSD3]
