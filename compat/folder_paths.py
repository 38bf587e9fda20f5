"""ComfyUI's `folder_paths` over genloom's folders (engine/folders.py): the model search paths and the
input/output/temp folders of the running engine (the server's or the CLI's).

`folder_names_and_paths[kind]` is `([folders], {extensions})`, computed from the engine's model
directories each time it is read; `add_model_folder_path` adds folders of a kind (a pack's own model
kinds included), which every function here then searches too.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import MutableMapping
from pathlib import Path
from types import SimpleNamespace

from genloom.diffusion import images as _images
from genloom.engine.folders import MODEL_FOLDERS, PACKAGE_ROOT, safe_join

from . import plugin_folders
from ._services import folders as _folders

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = str(PACKAGE_ROOT)

# ComfyUI's kind names that genloom stores under another folder name.
_ALIASES = {"unet": "diffusion_models", "clip": "text_encoders"}
_extra: dict[str, list[str]] = {}  # kind -> folders added with add_model_folder_path (first = default)
_extra_exts: dict[str, set] = {}
_KINDS = ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
          "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
          "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders", "vgg",
          "custom_nodes")


def _models_dirs() -> list[str]:
    return [str(p) for p in _folders().models_dirs]


def _paths(kind: str) -> list[str]:
    kind = _ALIASES.get(kind, kind)
    added = _extra.get(kind, [])
    defaults = [p for p in added if p.endswith("\0default")]
    rest = [p for p in added if not p.endswith("\0default")]
    if kind == "custom_nodes":  # the plugins folders genloom loaded packs from
        base = plugin_folders()
    else:
        base = [os.path.join(d, kind) for d in _models_dirs()]
    return [p.removesuffix("\0default") for p in defaults] + base + rest


def _extensions(kind: str) -> set:
    kind = _ALIASES.get(kind, kind)
    exts = set(MODEL_FOLDERS.get(kind, ())) or set(supported_pt_extensions)
    if kind == "configs":
        exts = {".yaml"}
    elif kind == "custom_nodes":
        exts = set()  # every file
    return exts | _extra_exts.get(kind, set())


class _FolderTable(MutableMapping):
    """`folder_names_and_paths`: kind -> ([folders], {extensions}), live over the engine's folders."""

    def __getitem__(self, kind):
        if kind not in self:
            raise KeyError(kind)
        return _paths(kind), _extensions(kind)

    def __setitem__(self, kind, value):
        paths, exts = value
        _extra[kind] = [str(p) for p in paths if str(p) not in _paths(kind)]
        _extra_exts[kind] = set(exts)

    def __delitem__(self, kind):
        _extra.pop(kind, None)
        _extra_exts.pop(kind, None)

    def __contains__(self, kind):
        return kind in _KINDS or kind in _ALIASES or kind in _extra or kind in MODEL_FOLDERS

    def __iter__(self):
        return iter(dict.fromkeys([*_KINDS, *MODEL_FOLDERS, *_extra]))

    def __len__(self):
        return len(list(iter(self)))


folder_names_and_paths = _FolderTable()


def __getattr__(name):
    """models_dir, output_directory, input_directory, temp_directory, user_directory: read live."""
    if name == "models_dir":
        dirs = _models_dirs()
        return dirs[0] if dirs else os.path.join(base_path, "models")
    if name in ("output_directory", "input_directory", "temp_directory"):
        return str(getattr(_folders(), name.replace("directory", "dir")))
    if name == "user_directory":
        return get_user_directory()
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r}")


def get_output_directory() -> str:
    return str(_folders().output_dir)


def get_input_directory() -> str:
    return str(_folders().input_dir)


def get_temp_directory() -> str:
    return str(_folders().temp_dir)


def get_user_directory() -> str:
    return str(Path(get_output_directory()).parent / "user")


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": get_output_directory, "temp": get_temp_directory,
            "input": get_input_directory}.get(type_name, lambda: None)()


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """'x.png [output]' -> ('x.png', the output folder); no annotation -> (name, None)."""
    for kind in ("output", "input", "temp"):
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], get_directory_by_type(kind)
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base = annotated_filepath(name)
    if base is None:
        base = default_dir if default_dir is not None else get_input_directory()
    return str(safe_join(base, name))


def exists_annotated_filepath(name: str) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def get_folder_paths(folder_name: str) -> list[str]:
    return list(_paths(folder_name))


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = _ALIASES.get(folder_name, folder_name)
    path = str(full_folder_path)
    entries = [p for p in _extra.get(folder_name, []) if p.removesuffix("\0default") != path]
    if is_default:
        entries.insert(0, path + "\0default")
    else:
        entries.append(path)
    _extra[folder_name] = entries


def filter_files_extensions(files, extensions) -> list[str]:
    exts = {e.lower() for e in extensions}
    return sorted(f for f in files if not exts or os.path.splitext(f)[1].lower() in exts)


def get_filename_list(folder_name: str) -> list[str]:
    """Relative paths of the files of one kind in every folder of that kind, sorted."""
    found: set[str] = set()
    exts = _extensions(folder_name)
    for folder in _paths(folder_name):
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.is_file() and (not exts or path.suffix.lower() in exts):
                found.add(path.relative_to(root).as_posix())
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    for folder in _paths(folder_name):
        try:
            path = safe_join(folder, filename)
        except ValueError:
            return None
        if path.is_file():
            return str(path)
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0):
    """(full_output_folder, filename, counter, subfolder, filename_prefix) as ComfyUI returns them:
    the counter is one past the highest one already used by files of that prefix."""
    prefix = _images._expand_prefix(filename_prefix, SimpleNamespace(shape=(0, image_height, image_width)))
    target, subfolder, filename = _images.save_target(Path(output_dir), prefix)
    return str(target), filename, _images._next_counter(target, filename), subfolder, filename_prefix


def filter_files_content_types(files, content_types) -> list[str]:
    """The files whose guessed MIME type's major part is one of `content_types` ("image", "video",
    "audio", "model")."""
    wanted = set(content_types)
    out = []
    for name in files:
        mime = mimetypes.guess_type(name, strict=False)[0] or ""
        major = mime.split("/", 1)[0]
        if name.lower().endswith((".safetensors", ".gguf")):
            major = "model"
        if major in wanted:
            out.append(name)
    return out
