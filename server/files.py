"""Uploads into and downloads from the input/output/temp folders, never anywhere else.

Every name and subfolder from a request goes through `safe_join`, links are refused, and an upload
must decode as an image (or a video: MP4, WEBM) within the size and pixel limits before it is written.
/view serves files with their content type and byte ranges (browsers seek in videos with them). The form fields and
/view's query are declared in schemas.py (UploadForm, ViewQuery).
"""

from __future__ import annotations

import asyncio
import io
import json
import mimetypes
import os
from pathlib import Path

from aiohttp import ClientPayloadError, web

from genloom.engine.videofiles import looks_like_video, probe_video

from .endpoints import Endpoint
from .errors import BadRequest, json_response, safe_path
from .schemas import UploadForm, UploadResult, ViewQuery, parse, parse_query

IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"}
_MAX_PARTS = 16
_FORM_SLACK = 256 * 1024  # the other form fields and multipart framing
_FORM_FIELDS = tuple(name for name in UploadForm.model_fields)


class Files:
    def __init__(self, folders: dict[str, Path], max_upload: int, max_pixels: int):
        self.folders = folders  # "input" | "output" | "temp" -> folder
        self.max_upload, self.max_pixels = max_upload, max_pixels

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", "/upload/image", self.upload, form=UploadForm, response=UploadResult),
            Endpoint("POST", "/upload/mask", self.upload_mask, form=UploadForm, response=UploadResult),
            Endpoint("GET", "/view", self.view, query=ViewQuery),
        ]

    def folder(self, kind: str | None, default: str = "output") -> Path:
        kind = kind or default
        if kind not in self.folders:
            raise BadRequest(f"type must be one of {sorted(self.folders)}, not {kind!r}", "invalid_type")
        return self.folders[kind]

    def resolve(self, kind: str | None, subfolder: str, filename: str, default: str = "output") -> Path:
        """A file's path under its folder; refuses traversal, absolute paths and links."""
        base = self.folder(kind, default)
        if not filename:
            raise BadRequest("filename is required", "invalid_filename")
        path = safe_path(base, subfolder or "", filename)
        unresolved = Path(base).resolve().joinpath(*(p for p in (subfolder, filename) if p))
        for part in [unresolved, *unresolved.parents]:
            if part == Path(base).resolve():
                break
            if part.is_symlink():
                raise BadRequest("links are not served", "invalid_path", 403)
        return path

    # --- /view ---

    async def view(self, request: web.Request) -> web.StreamResponse:
        """A file of input/output/temp, optionally converted (preview=format;quality, channel)."""
        q = parse_query(ViewQuery, request.query)
        path = self.resolve(q.type, q.subfolder, q.filename)
        if not path.is_file():
            raise web.HTTPNotFound(text=f"file not found: {q.filename}")
        preview, channel = q.preview, q.channel
        if preview is None and channel in (None, "rgba"):
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
        body, ctype = await asyncio.get_running_loop().run_in_executor(None, _transform, path, preview, channel)
        return web.Response(body=body, content_type=ctype)

    # --- /upload/image and /upload/mask ---

    async def upload_mask(self, request: web.Request) -> web.Response:
        """Upload a mask: the original image (original_ref) with the mask's alpha, as PNG."""
        return await self.upload(request, mask=True)

    async def upload(self, request: web.Request, mask: bool = False) -> web.Response:
        """Upload an image into input/ (or temp/, output/); an existing different file is kept."""
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("upload as multipart/form-data with an 'image' field", "invalid_upload")
        if request.content_length is not None and request.content_length > self.max_upload + _FORM_SLACK:
            raise BadRequest(f"upload too large (limit {self.max_upload} bytes)", "upload_too_large", 413)
        try:
            fields, data, name = await self._read_form(request)
        except (ValueError, AssertionError, EOFError, asyncio.IncompleteReadError, ClientPayloadError) as exc:
            raise BadRequest(f"malformed multipart body: {exc or type(exc).__name__}", "invalid_upload") from None
        if data is None:
            raise BadRequest("no 'image' field in the upload", "invalid_upload")
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name \
                or not name.isprintable():
            raise BadRequest(f"invalid file name {name!r}", "invalid_filename")
        form = parse(UploadForm, fields)
        loop = asyncio.get_running_loop()
        if not mask and looks_like_video(data[:16]):
            await loop.run_in_executor(None, self._check_video, data)
        else:
            image = await loop.run_in_executor(None, self._check_image, data)
            if mask:
                data = await loop.run_in_executor(None, self._apply_mask, image, form.original_ref)
        path = self.resolve(form.type, form.subfolder, name, default="input")
        path.parent.mkdir(parents=True, exist_ok=True)
        path = _free_name(path, form.overwrite, data)
        if not (path.exists() and path.read_bytes() == data):
            tmp = path.with_name(f".{path.name}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return json_response({"name": path.name, "subfolder": form.subfolder, "type": form.type})

    async def _read_form(self, request: web.Request) -> tuple[dict, bytes | None, str | None]:
        fields, data, name, parts = {}, None, None, 0
        reader = await request.multipart()
        async for part in reader:
            parts += 1
            if parts > _MAX_PARTS:
                raise BadRequest(f"too many form fields (limit {_MAX_PARTS})", "invalid_upload")
            if part.name == "image":
                name = part.filename or ""
                data = await _read_limited(part, self.max_upload)
            elif part.name in _FORM_FIELDS:
                fields[part.name] = (await _read_limited(part, 64 * 1024)).decode("utf-8", "replace")
            else:
                await part.release()
        return fields, data, name

    def _check_image(self, data: bytes):
        from PIL import Image

        try:
            image = Image.open(io.BytesIO(data))
            if image.format not in IMAGE_FORMATS:
                raise BadRequest(f"unsupported image format {image.format}", "invalid_image")
            w, h = image.size
            frames = getattr(image, "n_frames", 1)
            if w * h * frames > self.max_pixels:
                shown = f"{w}x{h}" + (f" x {frames} frames" if frames > 1 else "")
                raise BadRequest(f"image too large: {shown} pixels (limit {self.max_pixels})", "image_too_large", 413)
            image.verify()
            image = Image.open(io.BytesIO(data))
            image.load()  # verify() reads the structure only: a file can pass it and not decode
        except BadRequest:
            raise
        except _unreadable() as exc:
            raise BadRequest(f"not a readable image: {exc}", "invalid_image") from None
        return image

    def _check_video(self, data: bytes) -> None:
        """A video upload must decode, and all its frames together stay within the pixel limit (the
        rule animated images follow), so LoadVideo can hold it."""
        try:
            info = probe_video(io.BytesIO(data))
        except ValueError as exc:
            raise BadRequest(f"not a readable video: {exc}", "invalid_video") from None
        total = info["width"] * info["height"] * info["frames"]
        if total > self.max_pixels:
            raise BadRequest(f"video too large: {info['width']}x{info['height']} x {info['frames']} frames "
                             f"is {total} pixels (limit {self.max_pixels})", "video_too_large", 413)

    def _apply_mask(self, mask_image, original_ref: str | None) -> bytes:
        """The original image with the uploaded mask's alpha as its alpha channel, as PNG."""
        from PIL import Image

        try:
            ref = json.loads(original_ref or "")
            if not isinstance(ref, dict):
                raise ValueError("not an object")
        except ValueError:
            raise BadRequest("original_ref must be JSON {filename, subfolder, type}", "invalid_upload") from None
        path = self.resolve(ref.get("type"), ref.get("subfolder", ""), ref.get("filename", ""), default="input")
        if not path.is_file():
            raise BadRequest(f"original image not found: {ref.get('filename')}", "not_found", 404)
        try:
            with Image.open(path) as original:
                out = original.convert("RGBA")
        except _unreadable():
            raise BadRequest(f"the original image {path.name} is not readable", "invalid_image") from None
        alpha = mask_image.convert("RGBA").getchannel("A").resize(out.size)
        out.putalpha(alpha)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return buf.getvalue()


async def _read_limited(part, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"upload too large (limit {limit} bytes)", "upload_too_large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _free_name(path: Path, overwrite: bool, data: bytes) -> Path:
    """Keep an existing file unless told to overwrite: a different upload gets 'name (1).ext'."""
    if overwrite or not path.exists() or path.read_bytes() == data:
        return path
    n = 1
    while True:
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not candidate.exists() or candidate.read_bytes() == data:
            return candidate
        n += 1


def _unreadable() -> tuple:
    """What PIL raises for a file that does not open or decode."""
    from PIL import Image, UnidentifiedImageError

    return UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError


# The largest side each preview encoder writes.
_MAX_SIDE = {"webp": 16383, "jpeg": 65535, "png": 2**31 - 1}


def _transform(path: Path, preview: tuple[str, int] | None, channel: str | None) -> tuple[bytes, str]:
    """/view's preview=format;quality and channel=rgb|a|rgba options."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
    except _unreadable():
        raise BadRequest(f"{path.name} is not an image that can be converted", "invalid_image") from None
    if channel == "rgb":
        img = img.convert("RGB")
    elif channel == "a":
        alpha = img.convert("RGBA").getchannel("A")
        img = Image.merge("RGBA", (alpha, alpha, alpha, alpha))
    fmt, quality = preview or ("png", 90)
    if max(img.size) > _MAX_SIDE[fmt]:
        raise BadRequest(f"{img.width}x{img.height} is beyond what a {fmt} preview can hold "
                         f"({_MAX_SIDE[fmt]} pixels a side); ask for png", "invalid_preview")
    if fmt == "jpeg":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), quality=quality)
    return buf.getvalue(), f"image/{fmt}"
