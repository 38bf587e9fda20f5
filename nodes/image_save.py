"""More ways pictures leave a graph, as ComfyUI's core offers them: animated WEBP/PNG, 16-bit PNG,
websocket previews, a compare view, and loading back what was saved (LoadImageOutput).

File writing is genloom.diffusion.images; prefixes that would leave the output folder are refused."""

from __future__ import annotations

import random
from pathlib import Path

from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import UnsafePath
from genloom.engine.node import Boolean, Combo, DynamicCombo, Float, Hidden, Input, Int, Node, NodeOutput, String
from genloom.nodes.image import LoadImage

_HIDDEN = [Hidden("prompt", "PROMPT"), Hidden("extra_pnginfo", "EXTRA_PNGINFO")]
_PREFIX = String("filename_prefix", "ComfyUI")
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _saving(call):
    try:
        return call()
    except UnsafePath as exc:
        raise NodeInputError("filename_prefix", str(exc)) from exc


def _output_files() -> list[str]:
    """Files of the output folder, named the way LoadImage resolves them (' [output]')."""
    root = Path(context.current().folders.output_dir)
    if not root.is_dir():
        return []
    return sorted(f"{p.relative_to(root).as_posix()} [output]" for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in
                  (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"))


class LoadImageOutput(LoadImage):
    """Loads a picture from the output folder (names carry ' [output]'), so a result can feed the
    next run; the editor refreshes the list and picks the newest file."""

    category = "image"
    display_name = "Load Image (from Outputs)"
    inputs = [Combo("image", _output_files, image_upload=True, image_folder="output",
                    remote={"route": "/internal/files/output", "refresh_button": True,
                            "control_after_refresh": "first"})]

    def run(self, image):
        return super().run(image)


class SaveAnimatedWEBP(Node):
    """Saves the frames as one animated WEBP file."""

    category = "image/animation"
    display_name = "SaveAnimatedWEBP"  # ComfyUI gives it none: the editor shows the class name
    output_node = True
    inputs = [Input("images", "IMAGE"), _PREFIX, Float("fps", 6.0, min=0.01, max=1000.0, step=0.01),
              Boolean("lossless", True), Int("quality", 80, min=0, max=100),
              Combo("method", list(WEBP_METHODS)), *_HIDDEN]
    outputs = []

    def run(self, images, filename_prefix, fps, lossless, quality, method, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.images import save_animated

        folder = context.current().folders.output_dir
        results = _saving(lambda: save_animated(images, folder, filename_prefix, "output", "webp", fps, prompt,
                                                extra_pnginfo, lossless=lossless, quality=quality,
                                                method=WEBP_METHODS[method]))
        return NodeOutput(ui={"images": results, "animated": (len(images) != 1,)})


class SaveAnimatedPNG(Node):
    """Saves the frames as one animated PNG file."""

    category = "image/animation"
    display_name = "SaveAnimatedPNG"  # ComfyUI gives it none: the editor shows the class name
    output_node = True
    inputs = [Input("images", "IMAGE"), _PREFIX, Float("fps", 6.0, min=0.01, max=1000.0, step=0.01),
              Int("compress_level", 4, min=0, max=9, advanced=True), *_HIDDEN]
    outputs = []

    def run(self, images, filename_prefix, fps, compress_level, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.images import save_animated

        folder = context.current().folders.output_dir
        results = _saving(lambda: save_animated(images, folder, filename_prefix, "output", "png", fps, prompt,
                                                extra_pnginfo, compress_level=compress_level))
        return NodeOutput(ui={"images": results, "animated": (True,)})


class SaveImageAdvanced(Node):
    """Saves images as 8- or 16-bit PNG files, or 32-bit float OpenEXR files in scene-linear light,
    with the workflow embedded. ComfyUI's `format` is a dynamic combo; its option values arrive as
    format.bit_depth / format.input_color_space."""

    category = "image"
    display_name = "Save Image (Advanced)"
    output_node = True
    inputs = [Input("images", "IMAGE"), _PREFIX, *DynamicCombo("format", {
        "png": [Combo("bit_depth", ["8-bit", "16-bit"], "8-bit", advanced=True),
                Combo("input_color_space", ["sRGB"], "sRGB", advanced=True)],
        "exr": [Combo("bit_depth", ["32-bit float"], "32-bit float", advanced=True),
                Combo("input_color_space", ["sRGB", "HDR", "linear"], "sRGB", advanced=True,
                      tooltip="What the pixels are: sRGB-encoded, HLG-encoded BT.2100 (HDR), or already linear. "
                              "The EXR file always holds scene-linear light.")],
    }, tooltip="The file format."), *_HIDDEN]
    outputs = []

    def run(self, images, filename_prefix, format, prompt=None, extra_pnginfo=None, **options):
        from genloom.diffusion.exr import save_exr
        from genloom.diffusion.images import save_images

        channels = images.shape[-1]
        if channels not in (1, 3, 4):
            raise NodeInputError("images", f"{channels} channels; supported are 1 (grey), 3 (RGB) and 4 (RGBA)")
        depth = options.get("format.bit_depth") or ("8-bit" if format == "png" else "32-bit float")
        space = options.get("format.input_color_space") or "sRGB"
        folder = context.current().folders.output_dir
        if format == "exr":
            if depth != "32-bit float":
                raise NodeInputError("format.bit_depth", f"EXR is written as 32-bit float, not {depth!r}")
            results = _saving(lambda: save_exr(images, folder, filename_prefix, "output", space, prompt,
                                               extra_pnginfo))
            return NodeOutput(ui={"images": results})
        if depth not in ("8-bit", "16-bit"):
            raise NodeInputError("format.bit_depth", f"PNG supports 8-bit and 16-bit, not {depth!r}")
        if space != "sRGB":
            raise NodeInputError("format.input_color_space", f"PNG files are written as sRGB, not {space!r}")
        results = _saving(lambda: save_images(images, folder, filename_prefix, "output", prompt, extra_pnginfo,
                                              compress_level=4, bit_depth=int(depth.split("-")[0])))
        return NodeOutput(ui={"images": results})


class SaveImageWebsocket(Node):
    """Sends each image as a PNG preview over the websocket instead of writing a file."""

    category = "api node/image"
    display_name = "SaveImageWebsocket"  # ComfyUI gives it none: the editor shows the class name
    output_node = True
    inputs = [Input("images", "IMAGE")]
    outputs = []

    def run(self, images):
        from PIL import Image

        from genloom.diffusion.images import to_uint8

        ctx = context.current()
        for step, image in enumerate(images):
            ctx.emit("preview", {"image": Image.fromarray(to_uint8(image)), "format": "PNG",
                                 "prompt_id": ctx.prompt_id, "node": ctx.node_id, "index": step})
        return NodeOutput(ui={})


class ImageCompare(Node):
    """Compares two images side by side with a slider."""

    category = "image"
    display_name = "Image Compare"
    output_node = True
    inputs = [Input("image_a", "IMAGE", optional=True), Input("image_b", "IMAGE", optional=True),
              Input("compare_view", "IMAGECOMPARE", optional=True)]
    outputs = []

    def run(self, image_a=None, image_b=None, compare_view=None):
        from genloom.diffusion.images import save_images

        folder = context.current().folders.temp_dir
        result = {"a_images": [], "b_images": []}
        for key, image, name in (("a_images", image_a, "a"), ("b_images", image_b, "b")):
            if image is not None and len(image) > 0:
                suffix = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
                result[key] = save_images(image, folder, f"comfy.compare.{name}_temp_{suffix}", "temp",
                                          compress_level=1)
        return NodeOutput(ui=result)


NODES = [LoadImageOutput, SaveAnimatedWEBP, SaveAnimatedPNG, SaveImageAdvanced, SaveImageWebsocket, ImageCompare]
