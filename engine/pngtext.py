"""Reading PNG text chunks: how a saved picture carries the workflow that made it.

SaveImage writes the API graph under "prompt" and each extra_pnginfo key (the editor's "workflow")
as JSON text; the workflow loader reads them back here. Reading parses the chunk stream directly instead of
decoding the picture: it is fast on large files and needs no image library. Compressed chunks are
inflated with a size cap so a crafted upload cannot exhaust memory.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 64 * 1024 * 1024


class PngTextError(ValueError):
    """The data is not a readable PNG."""


def read_png_text(source: str | os.PathLike | bytes) -> dict[str, str]:
    """All tEXt, zTXt and iTXt chunks of a PNG file (a path or its bytes) as {keyword: text}."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(source, "rb") as fh:
            data = fh.read()
    if not data.startswith(PNG_SIGNATURE):
        raise PngTextError("not a PNG file")
    texts: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) < length:
            break  # truncated file: keep what was read
        pos += 12 + length
        if kind == b"IEND":
            break
        parsed = _parse_text_chunk(kind, body)
        if parsed is not None:
            texts.setdefault(parsed[0], parsed[1])
    return texts


def read_png_json(source: str | os.PathLike | bytes, key: str):
    """One chunk decoded as JSON, or None when it is absent or not JSON."""
    text = read_png_text(source).get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _parse_text_chunk(kind: bytes, body: bytes) -> tuple[str, str] | None:
    if kind not in (b"tEXt", b"zTXt", b"iTXt") or b"\x00" not in body:
        return None
    keyword, rest = body.split(b"\x00", 1)
    key = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            return key, rest.decode("latin-1")
        if kind == b"zTXt":
            return key, _inflate(rest[1:]).decode("latin-1")
        compressed, rest = rest[0], rest[2:]
        _language, _translated, text = rest.split(b"\x00", 2)
        return key, (_inflate(text) if compressed else text).decode("utf-8")
    except (ValueError, zlib.error):
        return None  # one damaged chunk must not hide the others


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("PNG text chunk too large")
    return out
