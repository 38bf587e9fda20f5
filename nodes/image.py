"""Pictures in and out of a graph, and plain resizing: the ComfyUI core image nodes.

Every file name that arrives from a workflow is untrusted: it is resolved under its folder with
`safe_join`, so '..', absolute paths and links that lead out are refused.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from genloom.diffusion.resample import CROP_METHODS, IMAGE_METHODS, keep_aspect, scale_image
from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import UnsafePath, safe_join
from genloom.engine.node import Combo, Float, Hidden, Input, Int, Node, NodeOutput, Out, String

MAX_RESOLUTION = 16384
_ANNOTATIONS = {"input": "input_dir", "output": "output_dir", "temp": "temp_dir"}


def _input_files() -> list[str]:
    return context.current().folders.list_inputs()


def resolve_input(name: str) -> Path:
    """The file a LoadImage name means: under the input folder, or under output/temp when the name
    carries ComfyUI's ' [output]' / ' [temp]' annotation. Raises UnsafePath for escapes."""
    folders = context.current().folders
    attr = "input_dir"
    match = re.fullmatch(r"(.*) \[(input|output|temp)\]", name)
    if match:
        name, attr = match.group(1), _ANNOTATIONS[match.group(2)]
    return safe_join(getattr(folders, attr), name)


class LoadImage(Node):
    """Loads a picture from the input folder; the mask is where it is transparent (1 - alpha)."""

    category = "image"
    display_name = "Load Image"
    inputs = [Combo("image", _input_files, image_upload=True, tooltip="A file in the input folder.")]
    outputs = [Out("IMAGE"), Out("MASK")]

    @classmethod
    def validate(cls, image):
        if image is None:
            return True
        error = _image_error(str(image))
        if error is None:
            return True
        error.class_type = cls.__name__
        return str(error)

    @classmethod
    def fingerprint(cls, image):
        """The file's content hash, so replacing a file under the same name re-runs the node."""
        try:
            path = resolve_input(str(image))
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
        except (OSError, UnsafePath):
            return float("nan")  # unreadable now: always re-run, so the real error is reported

    def run(self, image):
        from PIL import UnidentifiedImageError

        from genloom.diffusion.images import load_picture
        from genloom.engine.budgets import limits

        error = _image_error(str(image))
        if error is not None:
            raise error
        try:
            return load_picture(resolve_input(str(image)), max_pixels=limits().max_pixels)
        except (UnidentifiedImageError, OSError) as exc:
            raise NodeInputError("image", f"{image!r} is not a readable picture ({exc})") from exc


def _image_error(image: str) -> NodeInputError | None:
    """Why LoadImage cannot use this name, or None."""
    try:
        path = resolve_input(image)
    except UnsafePath as exc:
        return NodeInputError("image", str(exc))
    if not path.is_file():
        return NodeInputError("image", f"invalid image file {image!r} (not in the input folder)")
    return None


def _save(images, folder, prefix: str, kind: str, prompt, extra_pnginfo, compress_level: int) -> list[dict]:
    from genloom.diffusion.images import save_images

    try:
        return save_images(images, folder, prefix, kind, prompt, extra_pnginfo, compress_level)
    except UnsafePath as exc:
        raise NodeInputError("filename_prefix", str(exc)) from exc


class SaveImage(Node):
    """Saves images as PNG files in the output folder, with the workflow embedded in each file."""

    category = "image"
    display_name = "Save Image"
    output_node = True
    inputs = [
        Input("images", "IMAGE", tooltip="The images to save."),
        String("filename_prefix", "ComfyUI",
               tooltip="The prefix for the file to save. May contain subfolders and placeholders "
                       "such as %width% or %year%."),
        Hidden("prompt", "PROMPT"),
        Hidden("extra_pnginfo", "EXTRA_PNGINFO"),
    ]
    outputs = []

    def run(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        folder = context.current().folders.output_dir
        results = _save(images, folder, filename_prefix, "output", prompt, extra_pnginfo, compress_level=4)
        return NodeOutput(ui={"images": results})


class PreviewImage(Node):
    """Shows images in the editor; they go to the temp folder, which is cleared between sessions."""

    category = "image"
    display_name = "Preview Image"
    output_node = True
    inputs = [
        Input("images", "IMAGE", tooltip="The images to preview."),
        Hidden("prompt", "PROMPT"),
        Hidden("extra_pnginfo", "EXTRA_PNGINFO"),
    ]
    outputs = []

    def run(self, images, prompt=None, extra_pnginfo=None):
        suffix = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        folder = context.current().folders.temp_dir
        results = _save(images, folder, f"ComfyUI_temp_{suffix}", "temp", prompt, extra_pnginfo,
                        compress_level=1)
        return NodeOutput(ui={"images": results})


class ImageScale(Node):
    """Resizes images to a given size; a 0 width or height keeps the aspect ratio."""

    category = "image/upscaling"
    display_name = "Upscale Image"
    inputs = [
        Input("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS, "nearest-exact"),
        Int("width", 512, min=0, max=MAX_RESOLUTION, step=1),
        Int("height", 512, min=0, max=MAX_RESOLUTION, step=1),
        Combo("crop", CROP_METHODS, "disabled"),
    ]
    outputs = [Out("IMAGE")]

    def run(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        width, height = keep_aspect(width, height, image.shape[2], image.shape[1])
        return (scale_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    """Resizes images by a factor."""

    category = "image/upscaling"
    display_name = "Upscale Image By"
    inputs = [
        Input("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS, "nearest-exact"),
        Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01),
    ]
    outputs = [Out("IMAGE")]

    def run(self, image, upscale_method, scale_by):
        width = max(1, round(image.shape[2] * scale_by))
        height = max(1, round(image.shape[1] * scale_by))
        return (scale_image(image, width, height, upscale_method),)


class ImageScaleToTotalPixels(Node):
    """Resizes images to about the given number of megapixels, keeping the aspect ratio; each side is
    rounded to a multiple of resolution_steps."""

    category = "image/upscaling"
    display_name = "Scale Image to Total Pixels"
    inputs = [
        Input("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS, "nearest-exact"),
        Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
        Int("resolution_steps", 1, min=1, max=256),
    ]
    outputs = [Out("IMAGE")]

    def run(self, image, upscale_method, megapixels, resolution_steps=1):
        from genloom.diffusion.image_ops import total_pixels_size

        width, height = total_pixels_size(image.shape[2], image.shape[1], megapixels, resolution_steps)
        return (scale_image(image, width, height, upscale_method),)


class ImagePadForOutpaint(Node):
    """Adds grey borders to outpaint into, with a mask of the new area feathered into the picture."""

    category = "image"
    display_name = "Pad Image for Outpainting"
    inputs = [
        Input("image", "IMAGE"),
        Int("left", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("right", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1),
    ]
    outputs = [Out("IMAGE"), Out("MASK")]

    def run(self, image, left, top, right, bottom, feathering):
        from genloom.diffusion.images import pad_for_outpaint

        return pad_for_outpaint(image, left, top, right, bottom, feathering)


NODES = [LoadImage, SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
         ImagePadForOutpaint]
