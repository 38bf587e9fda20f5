"""Pictures in and out of files, and outpaint padding, for IMAGE tensors ([B, H, W, C] float32 in 0..1
on the CPU) and MASK tensors ([B, H, W])."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import UnsafePath, safe_join


class PictureTooLarge(NodeInputError):
    """A picture whose frames together hold more pixels than the limit: refused before decoding."""


def load_picture(path: Path, max_pixels: int | None = None, input_name: str = "image"):
    """(IMAGE [N, H, W, 3], MASK [N, H, W]) from a picture file: one entry per frame (frames of another
    size than the first are skipped), EXIF rotation applied, the mask 1 - alpha (zeros without alpha).
    `max_pixels` bounds width x height x frames, checked from the header before any frame is decoded
    (a tiny animated GIF can stand for gigabytes of frames): PictureTooLarge otherwise. Raises PIL's
    UnidentifiedImageError or OSError for a file that is no readable picture."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps, ImageSequence

    picture = Image.open(path)
    if max_pixels is not None:
        width, height = picture.size
        frames = 1 if picture.format == "MPO" else getattr(picture, "n_frames", 1)
        if width * height * frames > max_pixels:
            shown = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
            raise PictureTooLarge(input_name, f"{path.name} is {shown} = {width * height * frames} pixels, "
                                              f"over the limit of {max_pixels} (--max-pixels)")
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


def to_uint8(image):
    """An IMAGE [H, W, C] as ComfyUI writes it: clip(255 * x, 0, 255) truncated to uint8 (not rounded),
    so the same tensor gives the same bytes; a single channel becomes a grey [H, W] array."""
    import numpy as np

    pixels = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def _target(folder: Path, prefix: str, images, kind: str) -> tuple[Path, str, str]:
    return save_target(folder, _expand_prefix(prefix, images), kind)


def save_target(folder: Path, prefix: str, kind: str = "output") -> tuple[Path, str, str]:
    """(folder to write in, subfolder, file name stem) for a filename prefix that may name subfolders,
    created if needed; UnsafePath when the prefix would leave `folder`."""
    prefix = prefix.replace("\\", "/")
    subfolder, _, name = prefix.rpartition("/")
    try:
        target = safe_join(folder, subfolder) if subfolder else Path(folder).resolve()
        safe_join(target, name or "_")
    except UnsafePath as exc:
        raise UnsafePath(f"saving outside the {kind} folder is not allowed ({exc})") from exc
    target.mkdir(parents=True, exist_ok=True)
    return target, subfolder, name


def _write_new(target: Path, stem: str, counter: int, ext: str, write) -> tuple[str, int]:
    """Create `{stem}_{counter:05}_.{ext}` exclusively (two runs saving at once never overwrite each
    other), calling write(file object); returns (file name, next counter)."""
    while True:
        filename = f"{stem}_{counter:05}_.{ext}"
        counter += 1
        try:
            with open(target / filename, "xb") as fh:
                write(fh)
            return filename, counter
        except FileExistsError:
            continue


def write_new(target: Path, name: str, ext: str, write) -> str:
    """A new `{name}_{counter:05}_.{ext}` in `target`, written by write(file object); its file name."""
    return _write_new(target, name, _next_counter(target, name), ext, write)[0]


def _with_metadata() -> bool:
    return not context.current().options.get("disable_metadata")


def save_images(images, folder: Path, prefix: str, kind: str, prompt=None, extra_pnginfo=None,
                compress_level: int = 4, bit_depth: int = 8) -> list[dict]:
    """Write each image as `{prefix}_{counter:05}_.png` under `folder`; returns the UI entries.
    Raises UnsafePath when the prefix would leave `folder`."""
    from PIL import Image

    target, subfolder, name = _target(folder, prefix, images, kind)
    metadata = png_metadata(prompt, extra_pnginfo) if _with_metadata() else None
    counter = _next_counter(target, name)
    results = []
    for index, image in enumerate(images):
        stem = name.replace("%batch_num%", str(index))
        if bit_depth == 16:
            data = png16_bytes(image, metadata, compress_level)
            write = lambda fh, data=data: fh.write(data)  # noqa: E731
        else:
            picture = Image.fromarray(to_uint8(image))
            write = lambda fh, picture=picture: picture.save(  # noqa: E731
                fh, format="PNG", pnginfo=metadata, compress_level=compress_level)
        filename, counter = _write_new(target, stem, counter, "png", write)
        results.append({"filename": filename, "subfolder": subfolder, "type": kind})
    return results


def png16_bytes(image, metadata=None, compress_level: int = 4) -> bytes:
    """A 16-bit PNG (grey, RGB or RGBA) of an IMAGE [H, W, C]: clip(65535 * x) truncated like the
    8-bit files, big-endian, with the text chunks of `metadata` (a PngInfo) before the pixels."""
    import struct
    import zlib

    import numpy as np

    pixels = np.clip(65535.0 * image.detach().float().cpu().numpy(), 0, 65535).astype(">u2")
    h, w, c = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * c).view(np.uint8)], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))]
    for kind, body, _after_idat in (metadata.chunks if metadata is not None else []):
        out.append(chunk(kind, body))
    out.append(chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)))
    out.append(chunk(b"IEND", b""))
    return b"".join(out)


def save_animated(images, folder: Path, prefix: str, kind: str, fmt: str, fps: float, prompt=None,
                  extra_pnginfo=None, **options) -> list[dict]:
    """All frames in one animated WEBP or PNG file, with ComfyUI's metadata: WEBP carries EXIF tags
    (0x0110 "prompt:<json>", then 0x010F, 0x010E, ... "<key>:<json>" per extra_pnginfo key), APNG
    "comf" chunks after the pixels ("<key>\\0<json>"). Raises UnsafePath for escaping prefixes."""
    import json

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    target, subfolder, name = _target(folder, prefix, images, kind)
    frames = [Image.fromarray(to_uint8(image)) for image in images]
    save = dict(save_all=True, duration=int(1000.0 / fps), append_images=frames[1:], **options)
    if fmt == "webp":
        exif = frames[0].getexif()
        if _with_metadata():
            if prompt is not None:
                exif[0x0110] = f"prompt:{json.dumps(prompt)}"
            for offset, (key, value) in enumerate((extra_pnginfo or {}).items()):
                exif[0x010F - offset] = f"{key}:{json.dumps(value)}"
        save.update(format="WEBP", exif=exif)
    else:
        info = None
        if _with_metadata():
            info = PngInfo()
            entries = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
            for key, value in entries:
                info.add(b"comf", f"{key}".encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"),
                         after_idat=True)
        save.update(format="PNG", pnginfo=info)
    filename = write_new(target, name, fmt, lambda fh: frames[0].save(fh, **save))
    return [{"filename": filename, "subfolder": subfolder, "type": kind}]


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
