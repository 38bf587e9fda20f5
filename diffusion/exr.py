"""OpenEXR files of IMAGE batches (SaveImageAdvanced's `exr` format): 32-bit float, scene-linear, the
full range kept (no clipping), encoded by FFmpeg's EXR encoder through PyAV (a genloom dependency),
with ComfyUI's metadata (the prompt and the workflow as JSON string attributes in the header).

The input's colour space says how to reach linear light: `sRGB` undoes the sRGB transfer curve,
`HDR` the BT.2100 HLG curve (the primaries stay BT.2020), `linear` is written as it is.
"""

from __future__ import annotations

import json
import math
import struct
from fractions import Fraction
from pathlib import Path

COLOR_SPACES = ("sRGB", "HDR", "linear")
_PIXEL_FORMATS = {1: "grayf32le", 3: "gbrpf32le", 4: "gbrapf32le"}
# Scanlines per chunk for each EXR compression (the header's `compression` value).
_LINES_PER_CHUNK = {0: 1, 1: 1, 2: 1, 3: 16, 4: 32, 5: 16, 6: 32, 7: 32, 8: 32, 9: 256}
_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * math.log(4 * _HLG_A)


def to_linear(pixels, color_space: str):
    """Float RGB(A) [H, W, C] -> scene-linear light; alpha (a 4th channel) is left as it is. Values
    outside 0..1 keep their place on the curve (mirrored for negatives), nothing is clipped."""
    import numpy as np

    if color_space not in COLOR_SPACES:
        raise ValueError(f"unknown colour space {color_space!r}; one of {', '.join(COLOR_SPACES)}")
    pixels = np.asarray(pixels, dtype=np.float64)
    if color_space == "linear":
        return pixels.astype(np.float32)
    colour, alpha = (pixels[..., :3], pixels[..., 3:]) if pixels.shape[-1] == 4 else (pixels, None)
    sign, x = np.sign(colour), np.abs(colour)
    if color_space == "sRGB":
        linear = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    else:
        with np.errstate(over="ignore"):
            linear = np.where(x <= 0.5, x * x / 3.0, (np.exp((x - _HLG_C) / _HLG_A) + _HLG_B) / 12.0)
    out = sign * linear
    if alpha is not None:
        out = np.concatenate([out, alpha], axis=-1)
    return out.astype(np.float32)


def exr_bytes(image, color_space: str = "sRGB", attributes: dict[str, str] | None = None) -> bytes:
    """One IMAGE [H, W, C] (C = 1, 3 or 4) as an EXR file, with string `attributes` in its header."""
    import av

    pixels = to_linear(image.detach().float().cpu().numpy(), color_space)
    h, w, c = pixels.shape
    fmt = _PIXEL_FORMATS[c]
    frame = av.VideoFrame.from_ndarray(pixels[..., 0] if c == 1 else pixels, format=fmt)
    codec = av.CodecContext.create("exr", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = w, h, fmt, Fraction(1, 1)
    frame.pts = 0
    data = b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])
    return add_attributes(data, attributes) if attributes else data


def add_attributes(data: bytes, attributes: dict[str, str]) -> bytes:
    """`data` (a single-part scanline EXR file) with string attributes added at the end of its
    header; the offset table after the header is moved along with the pixels."""
    if data[:4] != b"\x76\x2f\x31\x01":
        raise ValueError("not an OpenEXR file")
    if struct.unpack_from("<I", data, 4)[0] & 0x1600:  # tiled, deep or multi-part: not written here
        raise ValueError("only single-part scanline EXR files take attributes here")
    pos, compression, window = 8, 0, None
    while data[pos] != 0:
        name_end = data.index(b"\x00", pos)
        type_end = data.index(b"\x00", name_end + 1)
        size = struct.unpack_from("<i", data, type_end + 1)[0]
        value = type_end + 5
        name = data[pos:name_end]
        if name == b"compression":
            compression = data[value]
        elif name == b"dataWindow":
            window = struct.unpack_from("<4i", data, value)
        pos = value + size
    if window is None:
        raise ValueError("EXR header without a dataWindow")
    chunks = -(-(window[3] - window[1] + 1) // _LINES_PER_CHUNK.get(compression, 1))
    added = b"".join(key.encode() + b"\x00string\x00" + struct.pack("<i", len(text.encode())) + text.encode()
                     for key, text in attributes.items())
    table_start = pos + 1
    offsets = struct.unpack_from(f"<{chunks}Q", data, table_start)
    table = struct.pack(f"<{chunks}Q", *(o + len(added) for o in offsets))
    return data[:pos] + added + data[pos:table_start] + table + data[table_start + 8 * chunks:]


def metadata_attributes(prompt=None, extra_pnginfo=None) -> dict[str, str]:
    """ComfyUI's metadata as EXR string attributes: `prompt`, then one per extra_pnginfo key."""
    attributes = {}
    if prompt is not None:
        attributes["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        attributes[key] = json.dumps(value)
    return attributes


def save_exr(images, folder: Path, prefix: str, kind: str, color_space: str, prompt=None,
             extra_pnginfo=None) -> list[dict]:
    """Write each image as `{prefix}_{counter:05}_.exr` under `folder`; returns the UI entries."""
    from .images import _next_counter, _target, _with_metadata, _write_new

    target, subfolder, name = _target(folder, prefix, images, kind)
    attributes = metadata_attributes(prompt, extra_pnginfo) if _with_metadata() else None
    counter = _next_counter(target, name)
    results = []
    for index, image in enumerate(images):
        data = exr_bytes(image, color_space, attributes)
        stem = name.replace("%batch_num%", str(index))
        filename, counter = _write_new(target, stem, counter, "exr", lambda fh, data=data: fh.write(data))
        results.append({"filename": filename, "subfolder": subfolder, "type": kind})
    return results
