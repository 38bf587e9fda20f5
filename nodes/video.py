"""ComfyUI's video nodes: VIDEO values made from frames, taken apart, loaded and saved.

The files and the VIDEO value live in genloom.diffusion.video; names from workflows are resolved under
their folders like LoadImage's, and a video is measured before it is decoded, so one that cannot fit
the budgets is refused with the input named."""

from __future__ import annotations

from pathlib import Path

from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.folders import UnsafePath
from genloom.engine.node import Combo, Float, Hidden, Input, Node, NodeOutput, Out, String
from genloom.nodes.image import resolve_input

_HIDDEN = [Hidden("prompt", "PROMPT"), Hidden("extra_pnginfo", "EXTRA_PNGINFO")]
_VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")


def _video_files() -> list[str]:
    return [name for name in context.current().folders.list_inputs() if name.lower().endswith(_VIDEO_SUFFIXES)]


def _video_path(file: str) -> Path:
    try:
        path = resolve_input(str(file))
    except UnsafePath as exc:
        raise NodeInputError("file", str(exc)) from None
    if not path.is_file():
        raise NodeInputError("file", f"invalid video file {file!r} (not in the input folder)")
    return path


def _metadata(prompt, extra_pnginfo) -> dict | None:
    """What SaveVideo tags the file with: each extra_pnginfo key ("workflow") and "prompt"."""
    if (context.current().options or {}).get("disable_metadata"):
        return None
    metadata = dict(extra_pnginfo or {})
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata or None


def _save(prefix: str, ext: str, width: int, height: int, write) -> dict:
    """Write a new `{prefix}_{counter:05}_.{ext}` in the output folder; its UI entry."""
    from genloom.diffusion.images import save_target, write_new

    prefix = prefix.replace("%width%", str(width)).replace("%height%", str(height))
    try:
        target, subfolder, name = save_target(context.current().folders.output_dir, prefix)
    except UnsafePath as exc:
        raise NodeInputError("filename_prefix", str(exc)) from None
    filename = write_new(target, name, ext, write)
    return {"filename": filename, "subfolder": subfolder, "type": "output"}


class CreateVideo(Node):
    """Makes a VIDEO of the frames at the given rate, with the audio if one is linked."""

    category = "image/video"
    display_name = "Create Video"
    inputs = [Input("images", "IMAGE", tooltip="The frames, in order."),
              Float("fps", 30.0, min=1.0, max=120.0, step=1.0),
              Input("audio", "AUDIO", optional=True, tooltip="A soundtrack (optional).")]
    outputs = [Out("VIDEO")]

    def run(self, images, fps, audio=None):
        from genloom.diffusion.video import Video

        return (Video.from_components(images, fps, audio),)


class GetVideoComponents(Node):
    """Splits a VIDEO into its frames, its audio (None when silent) and its frame rate."""

    category = "image/video"
    display_name = "Get Video Components"
    inputs = [Input("video", "VIDEO", tooltip="The VIDEO to split.")]
    outputs = [Out("IMAGE", "images"), Out("AUDIO", "audio"), Out("FLOAT", "fps")]

    def run(self, video):
        parts = video.get_components()
        return parts.images, parts.audio, float(parts.frame_rate)


class LoadVideo(Node):
    """Loads a video from the input folder (decoded when its frames are first needed)."""

    category = "image/video"
    display_name = "Load Video"
    inputs = [Combo("file", _video_files, video_upload=True)]
    outputs = [Out("VIDEO")]

    @classmethod
    def validate(cls, file):
        try:
            _video_path(file)
        except NodeInputError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint(cls, file):
        """The file's modification time, as ComfyUI: large videos are not hashed."""
        try:
            return _video_path(file).stat().st_mtime
        except (NodeInputError, OSError):
            return float("nan")

    def run(self, file):
        from genloom.diffusion.errors import VideoError
        from genloom.diffusion.video import Video, probe
        from genloom.engine.budgets import image_batch_problem

        path = _video_path(file)
        try:
            info = probe(path)
        except VideoError as exc:
            raise NodeInputError("file", str(exc)) from None
        problem = image_batch_problem(info["width"], info["height"], info["frames"],
                                      names=("width", "height", "frames"))
        if problem:
            raise NodeInputError("file", f"the video is too large to load: {problem}")
        return (Video.from_file(path),)


class SaveVideo(Node):
    """Writes the VIDEO as an h264 MP4 in the output folder, the workflow in its tags."""

    category = "image/video"
    display_name = "Save Video"
    output_node = True
    inputs = [Input("video", "VIDEO", tooltip="The VIDEO to write."),
              String("filename_prefix", "video/ComfyUI", tooltip="File name prefix; may name subfolders of the output folder."),
              Combo("format", ["auto", "mp4"], "auto", tooltip="Container (auto: MP4)."),
              Combo("codec", ["auto", "h264"], "auto", tooltip="Video codec (auto: h264)."),
              *_HIDDEN]
    outputs = []

    def run(self, video, filename_prefix, format, codec, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.video import write_mp4

        parts = video.get_components()
        width, height = video.get_dimensions()
        meta = _metadata(prompt, extra_pnginfo)
        entry = _save(filename_prefix, "mp4", width, height, lambda fh: write_mp4(fh, parts, meta))
        return NodeOutput(ui={"images": [entry], "animated": (True,)})


class SaveWEBM(Node):
    """Saves the frames as a WEBM video (VP9 or AV1)."""

    category = "image/video"
    display_name = "SaveWEBM"  # ComfyUI gives it none: the editor shows the class name
    output_node = True
    inputs = [Input("images", "IMAGE"), String("filename_prefix", "ComfyUI"),
              Combo("codec", ["vp9", "av1"]),
              Float("fps", 24.0, min=0.01, max=1000.0, step=0.01),
              Float("crf", 32.0, min=0, max=63.0, step=1,
                    tooltip="Constant rate factor: larger is smaller and blurrier."),
              *_HIDDEN]
    outputs = []

    def run(self, images, filename_prefix, codec, fps, crf, prompt=None, extra_pnginfo=None):
        from genloom.diffusion.video import write_webm

        meta = _metadata(prompt, extra_pnginfo)
        entry = _save(filename_prefix, "webm", int(images.shape[2]), int(images.shape[1]),
                      lambda fh: write_webm(fh, images, fps, codec, crf, meta))
        return NodeOutput(ui={"images": [entry], "animated": (True,)})


NODES = [CreateVideo, GetVideoComponents, LoadVideo, SaveVideo, SaveWEBM]
