"""Pictures in and out of files, and outpaint padding, for IMAGE tensors ([B, H, W, C] float32 in 0..1
on the CPU) and MASK tensors ([B, H, W])."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from genloom.engine import context
from genloom.engine.folders import UnsafePath, safe_join


def load_picture(path: Path):
    """(IMAGE [N, H, W, 3], MASK [N, H, W]) from a picture file: one entry per frame (frames of another
    size than the first are skipped), EXIF rotation applied, the mask 1 - alpha (zeros without alpha).
    Raises PIL's UnidentifiedImageError or OSError for a file that is no readable picture."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps, ImageSequence

    picture = Image.open(path)
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
    return torch.from_numpy(np.stack(pictures)), torch.from_numpy(np.stack(masks))


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


def save_images(images, folder: Path, prefix: str, kind: str, prompt=None, extra_pnginfo=None,
                compress_level: int = 4) -> list[dict]:
    """Write each image as `{prefix}_{counter:05}_.png` under `folder`; returns the UI entries.
    Raises UnsafePath when the prefix would leave `folder`."""
    import numpy as np
    from PIL import Image

    prefix = _expand_prefix(prefix, images).replace("\\", "/")
    subfolder, _, name = prefix.rpartition("/")
    try:
        target = safe_join(folder, subfolder) if subfolder else Path(folder).resolve()
        safe_join(target, name or "_")
    except UnsafePath as exc:
        raise UnsafePath(f"saving outside the {kind} folder is not allowed ({exc})") from exc
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


def pad_for_outpaint(image, left: int, top: int, right: int, bottom: int, feathering: int):
    """(IMAGE with grey borders, MASK [1, H, W] of the new area feathered into the picture)."""
    import torch

    batch, h, w, channels = image.shape
    padded = torch.full((batch, h + top + bottom, w + left + right, channels), 0.5, dtype=torch.float32)
    padded[:, top:top + h, left:left + w] = image
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    mask[top:top + h, left:left + w] = _feather(h, w, left, top, right, bottom, feathering)
    return padded, mask.unsqueeze(0)


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
