"""CLIP vision: CLIPVisionLoader (models/clip_vision) and CLIPVisionEncode, whose CLIP_VISION_OUTPUT
carries image_embeds, last_hidden_state and penultimate_hidden_states (what Wan's image-to-video
nodes read). The library is genloom.diffusion.clip_vision."""

from __future__ import annotations

from genloom.engine.node import Combo, Input, Node, Out
from genloom.nodes.loaders import _load, _resolve, model_names, model_stamp


class CLIPVisionLoader(Node):
    """Loads a CLIP vision encoder (transformers or open-clip layout) from the clip_vision folder."""

    category = "loaders"
    display_name = "Load CLIP Vision"
    inputs = [Combo("clip_name", model_names("clip_vision"), tooltip="The CLIP vision model file.")]
    outputs = [Out("CLIP_VISION")]

    @classmethod
    def fingerprint(cls, clip_name):
        return model_stamp("clip_vision", clip_name)

    def run(self, clip_name):
        from genloom.diffusion.clip_vision import load_clip_vision

        path = _resolve("clip_name", "clip_vision", clip_name)
        return (_load("clip_name", path, lambda: load_clip_vision(path), tag="clip_vision").clip_vision,)


class CLIPVisionEncode(Node):
    """Encodes a picture with a CLIP vision model (centre-cropped to its square, or squashed: none)."""

    category = "conditioning"
    display_name = "CLIP Vision Encode"
    inputs = [Input("clip_vision", "CLIP_VISION"), Input("image", "IMAGE"),
              Combo("crop", ["center", "none"], tooltip="center: crop the short side's square; none: squash.")]
    outputs = [Out("CLIP_VISION_OUTPUT")]

    def run(self, clip_vision, image, crop="center"):
        return (clip_vision.encode_image(image, crop == "center"),)


NODES = [CLIPVisionLoader, CLIPVisionEncode]
