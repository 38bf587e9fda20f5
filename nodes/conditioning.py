"""Text encoding and conditioning nodes.

CONDITIONING is ComfyUI's list of [cond tensor [B, T, D], extras dict] pairs, on the CPU. Extras set
here: "pooled_output" [B, P]; SDXL size hints "width", "height", "crop_w", "crop_h",
"target_width", "target_height" (pixels); ConditioningSetArea's "area" = (height, width, y, x) in
latent cells (pixels // 8), "strength" and "set_area_to_bounds" (False).
"""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Float, Input, Int, Node, Out, String

MAX_RESOLUTION = 16384


def _encode(clip, text: str, text_2: str | None = None):
    if clip is None:
        raise NodeInputError("clip", "is empty (the checkpoint has no text encoder)")
    return clip.encode(text, text_2)


def _embeddings_stamp(*texts) -> str:
    """Changes when an embedding file a prompt names appears, goes or changes (torch-free)."""
    from genloom.diffusion.models.embeddings import embedding_stamp
    from genloom.diffusion.prompt_weights import embedding_names

    names = [n for t in texts if isinstance(t, str) for n in embedding_names(t)]
    return embedding_stamp(names) if names else ""


class CLIPTextEncode(Node):
    """Encodes a prompt with the text encoder into conditioning that guides sampling."""

    category = "conditioning"
    display_name = "CLIP Text Encode (Prompt)"
    inputs = [String("text", "", multiline=True, dynamicPrompts=True, tooltip="The prompt."),
              Input("clip", "CLIP", tooltip="The text encoder.")]
    outputs = [Out("CONDITIONING", tooltip="The encoded prompt.")]

    @classmethod
    def fingerprint(cls, text=""):
        return _embeddings_stamp(text)

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

    @classmethod
    def fingerprint(cls, text_g="", text_l=""):
        return _embeddings_stamp(text_g, text_l)

    def run(self, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        if clip is not None and len(clip.text_encoders) == 2:
            cond, pooled = _encode(clip, text_l, text_g)
        else:
            cond, pooled = _encode(clip, text_l)
        return ([[cond, {"pooled_output": pooled, "width": width, "height": height, "crop_w": crop_w,
                         "crop_h": crop_h, "target_width": target_width, "target_height": target_height}]],)


class CLIPTextEncodeSDXLRefiner(Node):
    """Encodes a prompt for the SDXL refiner (CLIP-G) with its aesthetic score and original size."""

    category = "advanced/conditioning"
    inputs = [Float("ascore", 6.0, min=0.0, max=1000.0, step=0.01,
                    tooltip="Aesthetic score the refiner is told (ComfyUI's negative default is 2.5)."),
              Int("width", 1024, min=64, max=MAX_RESOLUTION, tooltip="Original image width the model is told."),
              Int("height", 1024, min=64, max=MAX_RESOLUTION, tooltip="Original image height."),
              String("text", "", multiline=True, dynamicPrompts=True, tooltip="The prompt."),
              Input("clip", "CLIP")]
    outputs = [Out("CONDITIONING")]

    @classmethod
    def fingerprint(cls, text=""):
        return _embeddings_stamp(text)

    def run(self, ascore, width, height, text, clip):
        cond, pooled = _encode(clip, text)
        return ([[cond, {"pooled_output": pooled, "aesthetic_score": ascore, "width": width, "height": height}]],)


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


def _with(conditioning, **extras):
    return [[c, {**extra, **extras}] for c, extra in conditioning]


class ConditioningSetTimestepRange(Node):
    """Uses the conditioning only between two fractions of the run (0 = first step, 1 = last)."""

    category = "advanced/conditioning"
    inputs = [Input("conditioning", "CONDITIONING"),
              Float("start", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end", 1.0, min=0.0, max=1.0, step=0.001)]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, start, end):
        return (_with(conditioning, start_percent=start, end_percent=end),)


class ConditioningSetAreaStrength(Node):
    category = "conditioning"
    inputs = [Input("conditioning", "CONDITIONING"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01)]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, strength):
        return (_with(conditioning, strength=strength),)


class ConditioningSetAreaPercentage(Node):
    """Limits a conditioning to a rectangle given as fractions of the image."""

    category = "conditioning"
    inputs = [Input("conditioning", "CONDITIONING"),
              Float("width", 1.0, min=0, max=1.0, step=0.01), Float("height", 1.0, min=0, max=1.0, step=0.01),
              Float("x", 0, min=0, max=1.0, step=0.01), Float("y", 0, min=0, max=1.0, step=0.01),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01)]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, width, height, x, y, strength):
        return (_with(conditioning, area=("percentage", height, width, y, x), strength=strength,
                      set_area_to_bounds=False),)


class ConditioningSetMask(Node):
    """Limits a conditioning to a mask (its prediction weighted by mask * strength)."""

    category = "conditioning"
    inputs = [Input("conditioning", "CONDITIONING"), Input("mask", "MASK"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
              Combo("set_cond_area", ["default", "mask bounds"])]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, mask, strength, set_cond_area):
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        return (_with(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default",
                      mask_strength=strength),)


class ConditioningAverage(Node):
    """Blends conditioning_to with the first entry of conditioning_from (embeddings and pooled)."""

    category = "conditioning"
    inputs = [Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING"),
              Float("conditioning_to_strength", 1.0, min=0.0, max=1.0, step=0.01)]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning_to, conditioning_from, conditioning_to_strength):
        import torch

        if not conditioning_from:
            return (conditioning_to,)
        s = conditioning_to_strength
        src, src_extra = conditioning_from[0][0], conditioning_from[0][1]
        pooled_from = src_extra.get("pooled_output")
        out = []
        for c, extra in conditioning_to:
            other = src[:, :c.shape[1]]
            if other.shape[1] < c.shape[1]:
                pad = torch.zeros((other.shape[0], c.shape[1] - other.shape[1], other.shape[2]))
                other = torch.cat([other, pad], dim=1)
            extra = dict(extra)
            pooled = extra.get("pooled_output")
            if pooled is not None and pooled_from is not None:
                extra["pooled_output"] = pooled * s + pooled_from * (1.0 - s)
            elif pooled_from is not None:
                extra["pooled_output"] = pooled_from
            out.append([c * s + other * (1.0 - s), extra])
        return (out,)


class ConditioningConcat(Node):
    """Appends the tokens of conditioning_from's first entry to every entry of conditioning_to."""

    category = "conditioning"
    inputs = [Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING")]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning_to, conditioning_from):
        import torch

        if not conditioning_from:
            return (conditioning_to,)
        src = conditioning_from[0][0]
        return ([[torch.cat([c, src], dim=1), dict(extra)] for c, extra in conditioning_to],)


NODES = [CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner, ConditioningCombine, ConditioningSetArea, ConditioningZeroOut,
         ConditioningSetTimestepRange, ConditioningAverage, ConditioningConcat, ConditioningSetMask,
         ConditioningSetAreaPercentage, ConditioningSetAreaStrength]
