"""Qwen-Image nodes (ComfyUI's comfy_extras/nodes_qwen.py names): the edit models' prompt encoders, which
put pictures into the prompt through the Qwen2.5-VL vision tower and into the conditioning as reference
latents (genloom.diffusion.models.qwen_edit), Qwen-Image-Layered's empty latent, and LatentCutToBatch,
which ComfyUI added with Layered: its workflow cuts the sampled frames (composite, then the layers) into a
batch before VAEDecode, so each decodes as its own picture."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Input, Int, Node, Out, String

from .latent import MAX_RESOLUTION

_CAT = "advanced/conditioning"


def _qwen_clip(clip):
    if clip is None:
        raise NodeInputError("clip", "is empty (the checkpoint has no text encoder)")
    if getattr(clip, "kind", None) != "qwen_image":
        raise NodeInputError("clip", f"is a {getattr(clip, 'kind', '?')} text encoder; the Qwen-Image edit "
                                     "encoders need Qwen2.5-VL (CLIPLoader with type qwen_image)")
    return clip


class TextEncodeQwenImageEdit(Node):
    """Encodes an edit instruction with the picture to edit: the picture, scaled to about a megapixel, is
    shown to the text encoder's vision tower and, given a VAE, encoded as the reference latent."""

    category = _CAT
    display_name = "TextEncodeQwenImageEdit"  # ComfyUI shows the node id (no display name of its own)
    inputs = [Input("clip", "CLIP"), String("prompt", "", multiline=True, dynamicPrompts=True),
              Input("vae", "VAE", optional=True), Input("image", "IMAGE", optional=True)]
    outputs = [Out("CONDITIONING")]

    def run(self, clip, prompt, vae=None, image=None):
        from genloom.diffusion.models.qwen_edit import edit_conditioning

        return (edit_conditioning(_qwen_clip(clip), prompt, vae, image),)


class TextEncodeQwenImageEditPlus(Node):
    """Encodes an edit instruction with up to three pictures (named "Picture 1..3" to the text encoder):
    each shown to the vision tower at about 384 x 384 and, given a VAE, encoded at about a megapixel as
    a reference latent."""

    category = _CAT
    display_name = "TextEncodeQwenImageEditPlus"  # ComfyUI shows the node id (no display name of its own)
    inputs = [Input("clip", "CLIP"), String("prompt", "", multiline=True, dynamicPrompts=True),
              Input("vae", "VAE", optional=True), Input("image1", "IMAGE", optional=True),
              Input("image2", "IMAGE", optional=True), Input("image3", "IMAGE", optional=True)]
    outputs = [Out("CONDITIONING")]

    def run(self, clip, prompt, vae=None, image1=None, image2=None, image3=None):
        from genloom.diffusion.models.qwen_edit import edit_plus_conditioning

        return (edit_plus_conditioning(_qwen_clip(clip), prompt, vae, (image1, image2, image3)),)


class EmptyQwenImageLayeredLatentImage(Node):
    """All-zero latents for Qwen-Image-Layered: the composite picture plus `layers` more, one latent
    frame each ([batch, 16, layers + 1, height / 8, width / 8])."""

    category = "latent/qwen"
    display_name = "Empty Qwen Image Layered Latent"
    inputs = [Int("width", 640, min=16, max=MAX_RESOLUTION, step=16),
              Int("height", 640, min=16, max=MAX_RESOLUTION, step=16),
              Int("layers", 3, min=0, max=MAX_RESOLUTION, step=1),
              Int("batch_size", 1, min=1, max=4096)]
    outputs = [Out("LATENT")]

    @classmethod
    def validate(cls, width, height, layers, batch_size=1):
        from genloom.engine.budgets import image_batch_problem, range_problem

        values = {"width": width, "height": height, "layers": layers, "batch_size": batch_size}
        problem = range_problem(cls.inputs, values)
        if problem is None and None not in values.values():  # a linked value is checked when it runs
            problem = image_batch_problem(width, height, batch_size, names=("width", "height", "batch_size"),
                                          frames=layers + 1, frames_name="layers")
        return problem or True

    def run(self, width, height, layers, batch_size=1):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, layers + 1, height // 8, width // 8])},)


class LatentCutToBatch(Node):
    """Cuts a latent along frames (t), width (x) or height (y) into slices of `slice_size` and stacks them
    in the batch, each sample's slices in order; a remainder shorter than a slice is dropped, and a slice
    longer than the dimension takes all of it. A dimension a latent does not have (t of an image latent)
    leaves it as it is."""

    category = "latent/advanced"
    display_name = "LatentCutToBatch"  # ComfyUI shows the node id (no display name of its own)
    inputs = [Input("samples", "LATENT"), Combo("dim", ["t", "x", "y"]),
              Int("slice_size", 1, min=1, max=MAX_RESOLUTION)]
    outputs = [Out("LATENT")]

    def run(self, samples, dim, slice_size):
        x = samples["samples"]
        axis = x.ndim - {"x": 1, "y": 2, "t": 3}[dim]
        if axis < 2:  # the batch or channel axis: nothing to cut
            return (samples,)
        size = min(slice_size, x.shape[axis])
        cut = x.movedim(axis, 1)
        cut = cut[:, :cut.shape[1] // size * size]
        cut = cut.reshape(-1, size, *cut.shape[2:]).movedim(1, axis)
        return ({**samples, "samples": cut},)


NODES = [TextEncodeQwenImageEdit, TextEncodeQwenImageEditPlus, EmptyQwenImageLayeredLatentImage, LatentCutToBatch]
