"""ComfyUI's core mask nodes: loading a channel of a picture as a mask, conversions, solid masks,
inversion, crops, compositing, feathering, growing, thresholds, previews and batching.

The tensor work is genloom.diffusion.masks, imported inside `run` so that listing nodes never imports
torch.
"""

from __future__ import annotations

from genloom.diffusion.masks import CHANNELS, OPERATIONS
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Autogrow, Boolean, Combo, Float, Hidden, Input, Int, Node, Out
from genloom.nodes.image import LoadImage, PreviewImage, _input_files

MAX_RESOLUTION = 16384
_MASK = Input("mask", "MASK", tooltip="The mask.")
_MASK_OUT = Out("MASK")


def _lib():
    from genloom.diffusion import masks

    return masks


def _pixels(name: str, default: int, low: int = 0, tooltip: str = ""):
    return Int(name, default, min=low, max=MAX_RESOLUTION, step=1, tooltip=tooltip)


class LoadImageMask(LoadImage):
    """Loads one channel of a picture in the input folder as a mask; 'alpha' gives 1 - alpha, so that
    transparent parts are the masked ones (zeros for a picture without alpha)."""

    category = "mask"
    display_name = "Load Image (as Mask)"
    inputs = [Combo("image", _input_files, image_upload=True, tooltip="A file in the input folder."),
              Combo("channel", ["alpha", "red", "green", "blue"], tooltip="The channel to read.")]
    outputs = [_MASK_OUT]

    def run(self, image, channel):
        try:
            pixels, transparency = super().run(image)  # LoadImage's checks, errors and decoding
        except NodeInputError as exc:
            exc.class_type = None  # named after this node, not the one whose code it ran
            raise
        if channel == "alpha":
            return (transparency[:1],)
        return (pixels[:1, :, :, ["red", "green", "blue"].index(channel)],)


class ImageToMask(Node):
    """One channel of an image as a mask."""

    category = "mask"
    display_name = "Convert Image to Mask"
    inputs = [Input("image", "IMAGE", tooltip="The image to take a channel from."),
              Combo("channel", CHANNELS, tooltip="The channel that becomes the mask.")]
    outputs = [_MASK_OUT]

    def run(self, image, channel):
        if channel == "alpha" and image.shape[-1] < 4:
            raise NodeInputError("image", "the image has no alpha channel")
        return (_lib().image_to_mask(image, channel),)


class MaskToImage(Node):
    """A mask as a grey image (the same value in red, green and blue)."""

    category = "mask"
    display_name = "Convert Mask to Image"
    inputs = [_MASK]
    outputs = [Out("IMAGE")]

    def run(self, mask):
        return (_lib().mask_to_image(mask),)


class SolidMask(Node):
    """A mask of one value everywhere."""

    category = "mask"
    display_name = "Solid Mask"
    inputs = [Float("value", 1.0, min=0.0, max=1.0, step=0.01, tooltip="The value of every pixel."),
              _pixels("width", 512, 1, "Width in pixels."), _pixels("height", 512, 1, "Height in pixels.")]
    outputs = [_MASK_OUT]

    @classmethod
    def validate(cls, width, height):
        """The declared ranges, then the size budgets (one channel)."""
        from genloom.engine.budgets import declared_size

        return declared_size(cls.inputs, {"width": width, "height": height}, batch=None, channels=1)

    def run(self, value, width, height):
        import torch

        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(Node):
    """1 - mask."""

    category = "mask"
    display_name = "Invert Mask"
    inputs = [_MASK]
    outputs = [_MASK_OUT]

    def run(self, mask):
        return (1.0 - mask,)


class CropMask(Node):
    """The width x height region of the mask at (x, y), clipped to the mask."""

    category = "mask"
    display_name = "Crop Mask"
    inputs = [_MASK, _pixels("x", 0, tooltip="Left edge in pixels."), _pixels("y", 0, tooltip="Top edge in pixels."),
              _pixels("width", 512, 1, "Width in pixels."), _pixels("height", 512, 1, "Height in pixels.")]
    outputs = [_MASK_OUT]

    def run(self, mask, x, y, width, height):
        return (_lib().crop(mask, x, y, width, height),)


class MaskComposite(Node):
    """Combines a source mask into a destination mask at (x, y) with an arithmetic or logical operation;
    the result is clamped to 0..1."""

    category = "mask"
    display_name = "Mask Composite"
    inputs = [Input("destination", "MASK", tooltip="The mask combined into."),
              Input("source", "MASK", tooltip="The mask combined in."),
              _pixels("x", 0, tooltip="Where the source's left edge goes."),
              _pixels("y", 0, tooltip="Where the source's top edge goes."),
              Combo("operation", OPERATIONS,
                    tooltip="How each source pixel combines with the one under it; the logical "
                            "operations count values above 0.5 as set.")]
    outputs = [_MASK_OUT]

    def run(self, destination, source, x, y, operation):
        return (_lib().composite(destination, source, x, y, operation),)


class FeatherMask(Node):
    """Fades the mask out linearly towards its edges over the given number of pixels per edge."""

    category = "mask"
    display_name = "Feather Mask"
    inputs = [_MASK] + [_pixels(edge, 0, tooltip=f"Pixels to fade over at the {edge} edge.")
                        for edge in ("left", "top", "right", "bottom")]
    outputs = [_MASK_OUT]

    def run(self, mask, left, top, right, bottom):
        return (_lib().feather(mask, left, top, right, bottom),)


class GrowMask(Node):
    """Grows (positive expand) or shrinks (negative) the mask by that many pixels."""

    category = "mask"
    display_name = "Grow Mask"
    inputs = [_MASK,
              Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1,
                  tooltip="Pixels to grow by; negative values shrink."),
              Boolean("tapered_corners", True, advanced=True,
                      tooltip="Grow through edges only, which rounds corners off; off grows through "
                              "diagonals too, which keeps them square.")]
    outputs = [_MASK_OUT]

    def run(self, mask, expand, tapered_corners):
        return (_lib().grow(mask, expand, tapered_corners),)


class ThresholdMask(Node):
    """1 where the mask is above the value, 0 elsewhere."""

    category = "mask"
    display_name = "Threshold Mask"
    inputs = [_MASK, Float("value", 0.5, min=0.0, max=1.0, step=0.01, tooltip="The threshold.")]
    outputs = [_MASK_OUT]

    def run(self, mask, value):
        return (_lib().threshold(mask, value),)


class MaskPreview(Node):
    """Shows a mask in the editor as a grey picture (saved in the temp folder, like Preview Image)."""

    category = "mask"
    display_name = "Preview Mask"
    output_node = True
    inputs = [Input("mask", "MASK", tooltip="The mask to show."),
              Hidden("prompt", "PROMPT"), Hidden("extra_pnginfo", "EXTRA_PNGINFO")]
    outputs = []

    def run(self, mask, prompt=None, extra_pnginfo=None):
        return PreviewImage().run(_lib().mask_to_image(mask), prompt, extra_pnginfo)


def numbered_inputs(group: str, prefix: str, type_: str, minimum: int, maximum: int) -> list:
    """ComfyUI's growing input (Autogrow) of `type_` sockets, as API graphs name them:
    '{group}.{prefix}0', ...; the first `minimum` are required."""
    return Autogrow(group, Input(prefix, type_), prefix=prefix, min=minimum, max=maximum)


def numbered_values(values: dict) -> list:
    """The connected values of a numbered input group, in slot order."""
    slots = sorted((int(name.rsplit(".", 1)[1].lstrip("abcdefghijklmnopqrstuvwxyz")), value)
                   for name, value in values.items() if value is not None)
    return [value for _, value in slots]


class BatchMasksNode(Node):
    """All connected masks in one batch, each resized to the first one's size."""

    category = "mask"
    display_name = "Batch Masks"
    inputs = numbered_inputs("masks", "mask", "MASK", 2, 50)
    outputs = [_MASK_OUT]

    def run(self, **masks):
        return (_lib().batch(numbered_values(masks)),)


NODES = [LoadImageMask, ImageToMask, MaskToImage, SolidMask, InvertMask, CropMask, MaskComposite,
         FeatherMask, GrowMask, ThresholdMask, MaskPreview, BatchMasksNode]
