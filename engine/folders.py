"""Where models, inputs and outputs live, and the one gate every request path goes through."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The repository (or installed package) root: the shipped models sit in models/ beside engine/.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

MODEL_FOLDERS = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth"),
    "loras": (".safetensors", ".ckpt", ".pt", ".pth"),
    "vae": (".safetensors", ".ckpt", ".pt", ".pth"),
    "upscale_models": (".safetensors", ".pth", ".pt"),
    "style_models": (".pth", ".model", ".safetensors", ".pt"),
    "vgg": (".pth", ".safetensors"),
    "embeddings": (".safetensors", ".pt", ".bin"),
    "controlnet": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),  # ControlNets and T2I-Adapters
    "diffusers": (),  # folders, not files
    "diffusion_models": (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"),
    "text_encoders": (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"),
    "clip_vision": (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"),
    "gligen": (".safetensors", ".ckpt", ".pt", ".pth", ".bin"),
}
# Kinds whose files ComfyUI finds in more than one folder of each models dir, in its search order;
# the legacy kind names ("unet", "clip") mean the same.
SUBFOLDERS = {"diffusion_models": ("unet", "diffusion_models"), "text_encoders": ("text_encoders", "clip"),
              "controlnet": ("controlnet", "t2i_adapter")}
KIND_ALIASES = {"unet": "diffusion_models", "clip": "text_encoders"}


def subfolders(kind: str) -> tuple[str, ...]:
    """The folder names under a models dir that hold models of `kind`."""
    kind = KIND_ALIASES.get(kind, kind)
    return SUBFOLDERS.get(kind, (kind,))


class UnsafePath(ValueError):
    """A requested path that would leave its allowed folder."""


def _check_parts(parts) -> None:
    """Refuse absolute parts and '..' segments: what a request may never name."""
    for part in parts:
        if part is None:
            continue
        if "\x00" in part or os.path.isabs(part) or part.startswith(("/", "\\")):
            raise UnsafePath(f"absolute path not allowed: {part!r}")
        if any(seg == ".." for seg in part.replace("\\", "/").split("/")):
            raise UnsafePath(f"'..' not allowed in path: {part!r}")


def safe_join(base: str | os.PathLike, *parts: str) -> Path:
    """Join untrusted parts under `base`, refusing '..', absolute parts and links that lead out."""
    root = Path(base).resolve()
    _check_parts(parts)
    path = root.joinpath(*[p for p in parts if p])
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePath(f"path leaves its folder: {'/'.join(p for p in parts if p)!r}")
    return resolved


def model_join(base: str | os.PathLike, name: str) -> Path:
    """A model name under a models folder: '..' and absolute names are refused as in `safe_join`, but
    links the user placed inside the folder (a file or folder linked from another disk) are trusted,
    as ComfyUI follows them; the path is returned unresolved, so it keeps the name the user sees."""
    _check_parts([name])
    return Path(base).resolve().joinpath(name)


def _model_files(folder: Path):
    """Every file under `folder`, following linked folders (each real folder visited once)."""
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            yield Path(top) / name


@dataclass
class Folders:
    """Model search paths (user's first, then the shipped ones) and the data folders."""

    models_dirs: list[Path] = field(default_factory=lambda: default_models_dirs())
    input_dir: Path = field(default_factory=lambda: Path.cwd() / "input")
    output_dir: Path = field(default_factory=lambda: Path.cwd() / "output")
    temp_dir: Path = field(default_factory=lambda: Path.cwd() / "temp")

    def list_models(self, kind: str) -> list[str]:
        """Names (relative paths) of the models of one kind, for COMBO options."""
        exts = MODEL_FOLDERS.get(KIND_ALIASES.get(kind, kind), ())
        found: set[str] = set()
        for folder in (Path(base) / sub for base in self.models_dirs for sub in subfolders(kind)):
            if not folder.is_dir():
                continue
            if kind == "diffusers":
                found.update(p.name for p in folder.iterdir() if (p / "model_index.json").is_file())
                continue
            for path in _model_files(folder):
                if path.is_file() and path.suffix.lower() in exts:
                    found.add(path.relative_to(folder).as_posix())
        return sorted(found)

    def model_path(self, kind: str, name: str) -> Path:
        """The file (or folder) for a model name from a COMBO; never outside the model folders."""
        for folder in (Path(base) / sub for base in self.models_dirs for sub in subfolders(kind)):
            if folder.is_dir():
                path = model_join(folder, name)
                if path.exists():
                    return path
        raise FileNotFoundError(f"{kind} model {name!r} not found in {[str(p) for p in self.models_dirs]}")

    def model_stamp(self, kind: str, name: str) -> str:
        """Changes whenever the model's file (or any file of a model folder) changes: loader nodes
        use it as their fingerprint, since the cache otherwise keys them by name alone."""
        try:
            return path_stamp(self.model_path(kind, name))
        except (OSError, ValueError):
            return "missing"

    def list_inputs(self) -> list[str]:
        folder = Path(self.input_dir)
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                      if p.is_file() and not p.name.startswith("."))


def path_stamp(path: Path) -> str:
    """'mtime:size' of a file, or of the newest file and total size of a folder: the one fingerprint of
    a model on disk (loader fingerprints, the loaded-model cache). OSError when it is gone."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    return f"{max((st.st_mtime_ns for st in stats), default=0)}:{sum(st.st_size for st in stats)}"


def default_models_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("GENLOOM_MODELS_DIR", "").split(os.pathsep) if p]
    shipped = PACKAGE_ROOT / "models"
    if shipped.is_dir() and shipped not in dirs:
        dirs.append(shipped)
    return dirs
