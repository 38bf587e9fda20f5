"""Text encoding and conditioning nodes.

CONDITIONING is ComfyUI's list of [cond tensor [B, T, D], extras dict] pairs, on the CPU. Extras set
here: "pooled_output" [B, P]; SDXL size hints "width", "height", "crop_w", "crop_h",
"target_width", "target_height" (pixels); ConditioningSetArea's "area" = (height, width, y, x) in
latent cells (pixels // 8), "strength" and "set_area_to_bounds" (False).
"""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Float, Input, Int, Node, Out, String

MAX_RESOLUTION = 16384


def _encode(clip, text: str, text_2: str | None = None):
    if clip is None:
        raise NodeInputError("clip", "is empty (the checkpoint has no text encoder)")
    return clip.encode(text, text_2)


class CLIPTextEncode(Node):
    """Encodes a prompt with the text encoder into conditioning that guides sampling."""

    category = "conditioning"
    display_name = "CLIP Text Encode (Prompt)"
    inputs = [String("text", "", multiline=True, dynamicPrompts=True, tooltip="The prompt."),
              Input("clip", "CLIP", tooltip="The text encoder.")]
    outputs = [Out("CONDITIONING", tooltip="The encoded prompt.")]

    def run(self, text, clip):
        cond, pooled = _encode(clip, text)
        return ([[cond, {"pooled_output": pooled}]],)


class CLIPTextEncodeSDXL(Node):
    """Encodes SDXL's two prompts (text_g for the big encoder, text_l for CLIP-L) with size hints."""

    category = "advanced/conditioning"
    inputs = [Input("clip", "CLIP"),
              Int("width", 1024, min=0, max=MAX_RESOLUTION, tooltip="Original image width the model is told."),
              Int("height", 1024, min=0, max=MAX_RESOLUTION, tooltip="Original image height."),
              Int("crop_w", 0, min=0, max=MAX_RESOLUTION, tooltip="Crop left offset."),
              Int("crop_h", 0, min=0, max=MAX_RESOLUTION, tooltip="Crop top offset."),
              Int("target_width", 1024, min=0, max=MAX_RESOLUTION, tooltip="Target width."),
              Int("target_height", 1024, min=0, max=MAX_RESOLUTION, tooltip="Target height."),
              String("text_g", "", multiline=True, dynamicPrompts=True, tooltip="Prompt for the big encoder."),
              String("text_l", "", multiline=True, dynamicPrompts=True, tooltip="Prompt for CLIP-L.")]
    outputs = [Out("CONDITIONING")]

    def run(self, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        if clip is not None and len(clip.text_encoders) == 2:
            cond, pooled = _encode(clip, text_l, text_g)
        else:
            cond, pooled = _encode(clip, text_l)
        return ([[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


class ConditioningCombine(Node):
    """Joins two conditionings: the sampler uses both (their predictions are averaged)."""

    category = "conditioning"
    display_name = "Conditioning (Combine)"
    inputs = [Input("conditioning_1", "CONDITIONING"), Input("conditioning_2", "CONDITIONING")]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning_1, conditioning_2):
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningSetArea(Node):
    """Limits a conditioning to a rectangle of the image."""

    category = "conditioning"
    display_name = "Conditioning (Set Area)"
    inputs = [Input("conditioning", "CONDITIONING"),
              Int("width", 64, min=64, max=MAX_RESOLUTION, step=8, tooltip="Area width in pixels."),
              Int("height", 64, min=64, max=MAX_RESOLUTION, step=8, tooltip="Area height in pixels."),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=8, tooltip="Left edge in pixels."),
              Int("y", 0, min=0, max=MAX_RESOLUTION, step=8, tooltip="Top edge in pixels."),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01, tooltip="Weight of this area.")]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, width, height, x, y, strength):
        area = (height // 8, width // 8, y // 8, x // 8)
        return ([[c, {**extra, "area": area, "strength": strength, "set_area_to_bounds": False}]
                 for c, extra in conditioning],)


class ConditioningZeroOut(Node):
    """Replaces the conditioning with zeros (an "empty" prompt for models trained that way)."""

    category = "advanced/conditioning"
    inputs = [Input("conditioning", "CONDITIONING")]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning):
        import torch

        out = []
        for c, extra in conditioning:
            extra = dict(extra)
            if extra.get("pooled_output") is not None:
                extra["pooled_output"] = torch.zeros_like(extra["pooled_output"])
            out.append([torch.zeros_like(c), extra])
        return (out,)


NODES = [CLIPTextEncode, CLIPTextEncodeSDXL, ConditioningCombine, ConditioningSetArea, ConditioningZeroOut]
