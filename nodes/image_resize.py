"""ComfyUI's image resizing nodes beyond ImageScale: Resize Image/Mask, scale to a largest side, and
resize-and-pad. The arithmetic is genloom.diffusion.image_ops.

ResizeImageMaskNode's `resize_type` is a ComfyUI dynamic combo: each choice brings its own inputs,
which API graphs carry as `resize_type.<name>` and the editor lays out right after the choice."""

from __future__ import annotations

from genloom.diffusion.image_ops import RESIZE_TYPES
from genloom.diffusion.resample import IMAGE_METHODS
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, DynamicCombo, Float, Input, Int, Node, Out

MAX_RESOLUTION = 16384
_SIZE = dict(min=0, max=MAX_RESOLUTION, step=1)
_CROP = Combo("crop", ["disabled", "center"], "center",
              tooltip="'disabled' stretches to the new size; 'center' crops to keep the aspect ratio.")
# ComfyUI's choices, in its order (the first is the default), each with its inputs.
_RESIZE_OPTIONS = {
    "scale dimensions": [Int("width", 512, tooltip="Target width in pixels; 0 follows the height's ratio.", **_SIZE),
                         Int("height", 512, tooltip="Target height in pixels; 0 follows the width's ratio.", **_SIZE),
                         _CROP],
    "scale by multiplier": [Float("multiplier", 1.0, min=0.01, max=8.0, step=0.01, tooltip="2.0 doubles each side.")],
    "scale longer dimension": [Int("longer_size", 512, tooltip="The longer side's new length.", **_SIZE)],
    "scale shorter dimension": [Int("shorter_size", 512, tooltip="The shorter side's new length.", **_SIZE)],
    "scale width": [Int("width", 512, tooltip="Target width; the height keeps the aspect ratio.", **_SIZE)],
    "scale height": [Int("height", 512, tooltip="Target height; the width keeps the aspect ratio.", **_SIZE)],
    "scale total pixels": [Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01,
                                 tooltip="Target size in megapixels, keeping the aspect ratio.")],
    "match size": [Input("match", "IMAGE,MASK", tooltip="The image or mask whose size to take."), _CROP],
    "scale to multiple": [Int("multiple", 8, min=1, max=MAX_RESOLUTION, step=1,
                              tooltip="Width and height become divisible by this.")],
}
assert set(_RESIZE_OPTIONS) == set(RESIZE_TYPES)
_DEFAULTS = {spec.name: spec.default for specs in _RESIZE_OPTIONS.values() for spec in specs}


class ResizeImageMaskNode(Node):
    """Resizes an image or a mask: by a multiplier, to dimensions, by its longer/shorter side, to a
    width or height, to a pixel count, to another input's size, or to a multiple of a number."""

    category = "transform"
    display_name = "Resize Image/Mask"
    inputs = [Input("input", "IMAGE,MASK", tooltip="The image or mask to resize."),
              *DynamicCombo("resize_type", _RESIZE_OPTIONS, tooltip="How to choose the new size."),
              Combo("scale_method", IMAGE_METHODS, "area")]
    outputs = [Out("IMAGE,MASK")]

    def run(self, input, resize_type, scale_method, **options):
        from genloom.diffusion.image_ops import resize_image_or_mask, resize_target

        params = {**_DEFAULTS, **{k.split(".", 1)[1]: v for k, v in options.items() if v is not None}}
        match = params.get("match")
        if resize_type == "match size" and match is None:
            raise NodeInputError("resize_type.match", "'match size' needs an image or mask to match")
        h, w = (input.shape[1], input.shape[2]) if input.dim() == 4 else (input.shape[-2], input.shape[-1])
        width, height = resize_target(w, h, resize_type, params, match)
        crop = params["crop"] if resize_type in ("scale dimensions", "match size") else "disabled"
        return (resize_image_or_mask(input, width, height, scale_method, crop),)


class ImageScaleToMaxDimension(Node):
    """Resizes so that the longer side is `largest_size`, keeping the aspect ratio."""

    category = "image/upscaling"
    display_name = "ImageScaleToMaxDimension"  # ComfyUI gives it none: the editor shows the class name
    # ComfyUI lists bilinear twice; kept so saved workflows and the editor see the same list.
    inputs = [Input("image", "IMAGE"),
              Combo("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
              Int("largest_size", 512, min=0, max=MAX_RESOLUTION, step=1)]
    outputs = [Out("IMAGE")]

    def run(self, image, upscale_method, largest_size):
        from genloom.diffusion.image_ops import max_dimension_size
        from genloom.diffusion.resample import scale_image

        width, height = max_dimension_size(image.shape[2], image.shape[1], largest_size)
        if width < 1 or height < 1:
            raise NodeInputError("largest_size", f"{largest_size} leaves no pixels")
        return (scale_image(image, width, height, upscale_method),)


class ResizeAndPadImage(Node):
    """Fits the picture inside the target size and pads the rest with white or black."""

    category = "image/transform"
    display_name = "ResizeAndPadImage"  # ComfyUI gives it none: the editor shows the class name
    inputs = [Input("image", "IMAGE"),
              Int("target_width", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("target_height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Combo("padding_color", ["white", "black"]),
              Combo("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"])]
    outputs = [Out("IMAGE")]

    def run(self, image, target_width, target_height, padding_color, interpolation):
        from genloom.diffusion.image_ops import resize_and_pad

        return (resize_and_pad(image, target_width, target_height, padding_color, interpolation),)


NODES = [ResizeImageMaskNode, ImageScaleToMaxDimension, ResizeAndPadImage]
