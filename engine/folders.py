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
    "diffusers": (),  # folders, not files
}


class UnsafePath(ValueError):
    """A requested path that would leave its allowed folder."""


def safe_join(base: str | os.PathLike, *parts: str) -> Path:
    """Join untrusted parts under `base`, refusing '..', absolute parts and links that lead out."""
    root = Path(base).resolve()
    for part in parts:
        if part is None:
            continue
        if "\x00" in part or os.path.isabs(part) or part.startswith(("/", "\\")):
            raise UnsafePath(f"absolute path not allowed: {part!r}")
        if any(seg == ".." for seg in part.replace("\\", "/").split("/")):
            raise UnsafePath(f"'..' not allowed in path: {part!r}")
    path = root.joinpath(*[p for p in parts if p])
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePath(f"path leaves its folder: {'/'.join(p for p in parts if p)!r}")
    return resolved


@dataclass
class Folders:
    """Model search paths (user's first, then the shipped ones) and the data folders."""

    models_dirs: list[Path] = field(default_factory=lambda: default_models_dirs())
    input_dir: Path = field(default_factory=lambda: Path.cwd() / "input")
    output_dir: Path = field(default_factory=lambda: Path.cwd() / "output")
    temp_dir: Path = field(default_factory=lambda: Path.cwd() / "temp")

    def list_models(self, kind: str) -> list[str]:
        """Names (relative paths) of the models of one kind, for COMBO options."""
        exts = MODEL_FOLDERS.get(kind, ())
        found: set[str] = set()
        for base in self.models_dirs:
            folder = Path(base) / kind
            if not folder.is_dir():
                continue
            if kind == "diffusers":
                found.update(p.name for p in folder.iterdir() if (p / "model_index.json").is_file())
                continue
            for path in folder.rglob("*"):
                if path.is_file() and path.suffix.lower() in exts:
                    found.add(path.relative_to(folder).as_posix())
        return sorted(found)

    def model_path(self, kind: str, name: str) -> Path:
        """The file (or folder) for a model name from a COMBO; never outside the model folders."""
        for base in self.models_dirs:
            folder = Path(base) / kind
            if folder.is_dir():
                path = safe_join(folder, name)
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
