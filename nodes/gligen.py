"""GLIGEN: GLIGENLoader (the gligen folder) and GLIGENTextBoxApply, which puts a text box into a
conditioning for an SD1 model to place that text there. The library is genloom.diffusion.gligen."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Input, Int, Node, Out, String
from genloom.nodes.conditioning import MAX_RESOLUTION, _embeddings_stamp, _encode
from genloom.nodes.loaders import _load, load_model_file, model_names, model_stamp


class GLIGENLoader(Node):
    """Loads a GLIGEN model (its position net and the fusers it adds to an SD1 UNet's transformer blocks)."""

    category = "loaders"
    display_name = "GLIGENLoader"
    inputs = [Combo("gligen_name", model_names("gligen"), tooltip="The GLIGEN model file.")]
    outputs = [Out("GLIGEN")]

    @classmethod
    def fingerprint(cls, gligen_name):
        return model_stamp("gligen", gligen_name)

    def run(self, gligen_name):
        from genloom.diffusion.gligen import load_gligen

        def load(path):
            return _load("gligen_name", path, lambda: load_gligen(path), tag="gligen")

        return (load_model_file("gligen_name", "gligen", gligen_name, load).gligen,)


class GLIGENTextBoxApply(Node):
    """Asks for `text` inside a box of the picture (pixels; the model sees them in latent cells of 8)."""

    category = "conditioning/gligen"
    display_name = "GLIGENTextBoxApply"
    inputs = [Input("conditioning_to", "CONDITIONING"), Input("clip", "CLIP"),
              Input("gligen_textbox_model", "GLIGEN"),
              String("text", "", multiline=True, dynamicPrompts=True, tooltip="What the box should hold."),
              Int("width", 64, min=8, max=MAX_RESOLUTION, step=8, tooltip="The box's width in pixels."),
              Int("height", 64, min=8, max=MAX_RESOLUTION, step=8, tooltip="The box's height in pixels."),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=8, tooltip="The box's left edge in pixels."),
              Int("y", 0, min=0, max=MAX_RESOLUTION, step=8, tooltip="The box's top edge in pixels.")]
    outputs = [Out("CONDITIONING")]

    @classmethod
    def fingerprint(cls, text=""):
        return _embeddings_stamp(text)

    def run(self, conditioning_to, clip, gligen_textbox_model, text, width=64, height=64, x=0, y=0):
        from genloom.diffusion.gligen import add_text_box

        _cond, pooled = _encode(clip, text)
        if pooled is None or pooled.ndim != 2 or pooled.shape[-1] != gligen_textbox_model.key_dim:
            shape = None if pooled is None else tuple(pooled.shape)
            raise NodeInputError("clip", f"the GLIGEN model takes {gligen_textbox_model.key_dim}-wide pooled "
                                         f"text (SD1's CLIP-L) but this text encoder gives {shape}")
        try:
            return (add_text_box(conditioning_to, gligen_textbox_model, pooled, width, height, x, y),)
        except ValueError as exc:  # more boxes than GLIGEN takes
            raise NodeInputError("conditioning_to", str(exc)) from None


NODES = [GLIGENLoader, GLIGENTextBoxApply]
