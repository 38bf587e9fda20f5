"""Style models: StyleModelLoader (the style_models folder: Flux Redux, the SD1 T2I style adapter) and
StyleModelApply, which appends a picture's tokens to a conditioning. The library is genloom.diffusion.style_model."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Float, Input, Node, Out
from genloom.nodes.loaders import _load, load_model_file, model_names, model_stamp


class StyleModelLoader(Node):
    """Loads a style model (Flux Redux, SD1 T2I style adapter) that turns CLIP vision tokens into conditioning tokens."""

    category = "loaders"
    display_name = "Load Style Model"
    inputs = [Combo("style_model_name", model_names("style_models"), tooltip="The style model file.")]
    outputs = [Out("STYLE_MODEL")]

    @classmethod
    def fingerprint(cls, style_model_name):
        return model_stamp("style_models", style_model_name)

    def run(self, style_model_name):
        from genloom.diffusion.style_model import StyleBundle, load_style_model

        def load(path):
            return _load("style_model_name", path, lambda: StyleBundle(load_style_model(path)), tag="style_model")

        return (load_model_file("style_model_name", "style_models", style_model_name, load).style_model,)


class StyleModelApply(Node):
    """Appends a picture's style tokens (a style model over a CLIP vision output) to the conditioning."""

    category = "conditioning/style_model"
    display_name = "Apply Style Model"
    inputs = [Input("conditioning", "CONDITIONING"), Input("style_model", "STYLE_MODEL"),
              Input("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.001, tooltip="How much the picture counts."),
              Combo("strength_type", ["multiply", "attn_bias"],
                    tooltip="multiply: scale the picture's tokens; attn_bias: bias attention to them by log(strength).")]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, style_model, clip_vision_output, strength=1.0, strength_type="multiply"):
        from genloom.diffusion.style_model import VisionMismatch, apply_style

        try:
            return (apply_style(conditioning, style_model, clip_vision_output, strength, strength_type),)
        except VisionMismatch as exc:
            raise NodeInputError("clip_vision_output", str(exc)) from None
        except ValueError as exc:
            raise NodeInputError("style_model", str(exc)) from None


NODES = [StyleModelLoader, StyleModelApply]
