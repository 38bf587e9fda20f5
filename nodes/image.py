"""Pictures in and out of a graph, and plain resizing: the ComfyUI core image nodes.

Every file name that arrives from a workflow is untrusted: it is resolved under its folder with
`safe_join`, so '..', absolute paths and links that lead out are refused.
"""

from __future__ import annotations

import hashlib
import random
import re
from datetime import datetime
from pathlib import Path

from genloom.engine import context
from genloom.engine.folders import UnsafePath, safe_join
from genloom.engine.node import Combo, Float, Hidden, Input, Int, Node, NodeOutput, Out, String

from .resample import CROP_METHODS, IMAGE_METHODS, keep_aspect, resize

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
        try:
            path = resolve_input(str(image))
        except UnsafePath as exc:
            return f"LoadImage: image: {exc}"
        if not path.is_file():
            return f"LoadImage: image: invalid image file {image!r} (not in the input folder)"
        return True

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
        import numpy as np
        import torch
        from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

        error = self.validate(image)
        if error is not True:
            raise ValueError(error)
        path = resolve_input(str(image))
        try:
            picture = Image.open(path)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"LoadImage: image: {image!r} is not a readable picture ({exc})") from exc
        pictures, masks = [], []
        frames = [picture] if picture.format == "MPO" else ImageSequence.Iterator(picture)
        for frame in frames:
            frame = ImageOps.exif_transpose(frame)
            if pictures and frame.size != (pictures[0].shape[1], pictures[0].shape[0]):
                continue  # animation frames of another size cannot share the batch
            pixels, alpha = _frame_arrays(frame)
            pictures.append(pixels)
            masks.append(1.0 - alpha if alpha is not None
                         else np.zeros(pixels.shape[:2], dtype=np.float32))
        return (torch.from_numpy(np.stack(pictures)), torch.from_numpy(np.stack(masks)))


def _frame_arrays(frame):
    """(RGB float32 [H, W, 3] in 0..1, alpha float32 [H, W] or None) for one PIL frame."""
    import numpy as np

    if frame.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        gray = np.asarray(frame, dtype=np.float32)
        gray = gray / (65535.0 if gray.max() > 255 else 255.0)
        return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2), None
    has_alpha = "A" in frame.getbands() or (frame.mode == "P" and "transparency" in frame.info)
    if has_alpha:
        rgba = np.asarray(frame.convert("RGBA"), dtype=np.float32) / 255.0
        return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3]
    return np.asarray(frame.convert("RGB"), dtype=np.float32) / 255.0, None


def _expand_prefix(prefix: str, images) -> str:
    """ComfyUI's server-side %width%/%height%/%year%... placeholders in a filename prefix."""
    now = datetime.now()
    values = {"width": images.shape[2], "height": images.shape[1], "year": now.year,
              "month": f"{now.month:02}", "day": f"{now.day:02}", "hour": f"{now.hour:02}",
              "minute": f"{now.minute:02}", "second": f"{now.second:02}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", str(value))
    return prefix


def png_metadata(prompt=None, extra_pnginfo: dict | None = None):
    """A PIL PngInfo carrying "prompt" and each extra_pnginfo key as JSON, as ComfyUI writes them;
    genloom.engine.pngtext reads them back."""
    import json

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), json.dumps(value))
    return info


def save_images(images, folder: Path, prefix: str, kind: str, node: str, prompt=None,
                extra_pnginfo=None, compress_level: int = 4) -> list[dict]:
    """Write each image as `{prefix}_{counter:05}_.png` under `folder`; returns the UI entries."""
    import numpy as np
    from PIL import Image

    prefix = _expand_prefix(prefix, images).replace("\\", "/")
    subfolder, _, name = prefix.rpartition("/")
    try:
        target = safe_join(folder, subfolder) if subfolder else Path(folder).resolve()
        safe_join(target, name or "_")
    except UnsafePath as exc:
        raise ValueError(f"{node}: filename_prefix: saving outside the {kind} folder is not allowed "
                         f"({exc})") from exc
    target.mkdir(parents=True, exist_ok=True)
    metadata = None
    if not context.current().options.get("disable_metadata"):
        metadata = png_metadata(prompt, extra_pnginfo)
    counter = _next_counter(target, name)
    results = []
    for index, image in enumerate(images):
        pixels = np.clip(image.detach().float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        picture = Image.fromarray(pixels)
        stem = name.replace("%batch_num%", str(index))
        while True:  # exclusive create: two runs saving at once never overwrite each other
            filename = f"{stem}_{counter:05}_.png"
            counter += 1
            try:
                with open(target / filename, "xb") as fh:
                    picture.save(fh, format="PNG", pnginfo=metadata, compress_level=compress_level)
                break
            except FileExistsError:
                continue
        results.append({"filename": filename, "subfolder": subfolder, "type": kind})
    return results


def _next_counter(folder: Path, name: str) -> int:
    """One past the highest counter already used by files of this prefix."""
    pattern = re.compile(re.escape(name).replace("%batch_num%", r".*") + r"_(\d+)_")
    highest = 0
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


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
        results = save_images(images, folder, filename_prefix, "output", "SaveImage", prompt,
                              extra_pnginfo, compress_level=4)
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
        results = save_images(images, folder, f"ComfyUI_temp_{suffix}", "temp", "PreviewImage", prompt,
                              extra_pnginfo, compress_level=1)
        return NodeOutput(ui={"images": results})


def scale_image(image, width: int, height: int, method: str, crop: str = "disabled"):
    """IMAGE [B, H, W, C] resized, kept in 0..1."""
    out = resize(image.movedim(-1, 1), width, height, method, crop)
    return out.movedim(1, -1).clamp(0, 1).contiguous()


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
    """Resizes images to about the given number of megapixels, keeping the aspect ratio."""

    category = "image/upscaling"
    display_name = "Scale Image to Total Pixels"
    inputs = [
        Input("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS, "nearest-exact"),
        Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
    ]
    outputs = [Out("IMAGE")]

    def run(self, image, upscale_method, megapixels):
        factor = (megapixels * 1024 * 1024 / (image.shape[1] * image.shape[2])) ** 0.5
        width = max(1, round(image.shape[2] * factor))
        height = max(1, round(image.shape[1] * factor))
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
        import torch

        batch, h, w, channels = image.shape
        padded = torch.full((batch, h + top + bottom, w + left + right, channels), 0.5,
                            dtype=torch.float32)
        padded[:, top:top + h, left:left + w] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        mask[top:top + h, left:left + w] = _feather(h, w, left, top, right, bottom, feathering)
        return (padded, mask.unsqueeze(0))


def _feather(h, w, left, top, right, bottom, feathering):
    """Inside the picture: (1 - distance/feathering)^2 near each padded edge, 0 further in."""
    import torch

    if not (feathering > 0 and feathering * 2 < h and feathering * 2 < w):
        return torch.zeros((h, w))
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xs = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    far_y, far_x = torch.full_like(ys, float(h)), torch.full_like(xs, float(w))
    distance = torch.stack([ys if top else far_y, (h - ys) if bottom else far_y,
                            xs if left else far_x, (w - xs) if right else far_x]).amin(0)
    value = ((feathering - distance) / feathering) ** 2
    return torch.where(distance < feathering, value, torch.zeros_like(value))


NODES = [LoadImage, SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
         ImagePadForOutpaint]
