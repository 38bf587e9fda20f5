"""Textual inversion files (`embedding:name` in a prompt), found and read the way ComfyUI does.

Finding: the name is looked up in every `embeddings/` folder as given, then with `.safetensors`,
`.pt`, `.bin` added; then every subfolder is searched the same way (so `embedding:foo` also finds
`embeddings/sd15/foo.pt`). Names never leave the folder.

Reading: `.safetensors` as it is; other files only through torch's weights-only unpickler (a file
that holds Python objects is refused with a CheckpointError). The vectors of one text encoder are:
  - A1111's `.pt`: the first tensor of `string_to_param`
  - a list of dicts: every tensor as wide as the encoder, in order
  - the encoder's key when the file has it: `clip_l` (SD1, SD2, SDXL's CLIP-L), `clip_g` (SDXL's big one)
  - embeddings bundled in a LoRA file: `bundle_emb.*.string_to_param.*`, then `bundle_emb.*.<key>`
  - otherwise the file's first tensor (diffusers' `{"<token>": vector}`, `emb_params`)
A 1-D tensor is one vector; a 2-D tensor is one vector per row.

The torch-free half (finding files, their stamps) serves node fingerprints and validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from genloom.diffusion.errors import CheckpointError
from genloom.engine import context
from genloom.engine.folders import MODEL_FOLDERS, path_stamp

log = logging.getLogger(__name__)
KIND = "embeddings"
EXTENSIONS = MODEL_FOLDERS[KIND]  # .safetensors, .pt, .bin, in the order ComfyUI tries them


def _spellings(name: str) -> list[str]:
    return [name] + [name + ext for ext in EXTENSIONS]


def find_embedding(name: str, folders=None) -> Path | None:
    """The file an `embedding:name` refers to, or None."""
    folders = folders or context.current().folders
    if not name:
        return None
    for spelling in _spellings(name):
        try:
            path = folders.model_path(KIND, spelling)
        except (FileNotFoundError, ValueError):  # missing, or a name that would leave the folder
            continue
        if path.is_file():
            return path
    listed = folders.list_models(KIND)
    for spelling in _spellings(name):
        for rel in listed:
            if rel.endswith("/" + spelling):
                return folders.model_path(KIND, rel)
    return None


def embedding_stamp(names: list[str], folders=None) -> str:
    """One string that changes when any of the named embedding files appears, goes or changes."""
    parts = []
    for name in names:
        path = find_embedding(name, folders)
        try:
            parts.append(f"{name}={path_stamp(path)}" if path is not None else f"{name}=missing")
        except OSError:
            parts.append(f"{name}=missing")
    return ";".join(parts)


def read_embedding_file(path: Path):
    """The file's contents: a dict of tensors (.safetensors) or whatever plain data a pickle holds."""
    from .weights import load_pickled_weights, read_state_dict

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_state_dict(path)[0]
    return load_pickled_weights(path)


def _bundled(data: dict, suffix: str):
    import torch

    found = [v for k, v in data.items() if k.startswith("bundle_emb.") and k.endswith(suffix)]
    return torch.cat(found, dim=0) if found else None


def embedding_vectors(data, key: str, width: int, name: str = "embedding"):
    """The [n, width?] vectors for one text encoder (see the module doc for the rules)."""
    import torch

    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        found = next(iter(data["string_to_param"].values()))
    elif isinstance(data, list):
        rows = [t.reshape(-1, t.shape[-1]) for entry in data if isinstance(entry, dict)
                for t in entry.values() if isinstance(t, torch.Tensor) and t.shape[-1] == width]
        if not rows:
            raise CheckpointError(f"{name}: no vectors of width {width} in the file")
        found = torch.cat(rows, dim=0)
    elif isinstance(data, dict) and key in data:
        found = data[key]
    elif isinstance(data, dict) and data:
        found = _bundled(data, ".string_to_param.*")
        if found is None:
            found = _bundled(data, "." + key)
        if found is None:
            found = next(iter(data.values()))
    else:
        raise CheckpointError(f"{name}: not a textual inversion file")
    if not isinstance(found, torch.Tensor) or found.dim() not in (1, 2):
        raise CheckpointError(f"{name}: not a textual inversion file (no vector or matrix of vectors)")
    return found.reshape(1, -1) if found.dim() == 1 else found


class EmbeddingLookup:
    """The embeddings of one prompt encoding: each file read once, each problem warned about once."""

    def __init__(self, folders=None):
        self.folders = folders or context.current().folders
        self._data: dict[str, object] = {}
        self._warned: set[str] = set()

    def vectors(self, name: str, key: str, width: int):
        """[n, D] vectors for the encoder (key, width), or None when no such file exists."""
        if name not in self._data:
            path = find_embedding(name, self.folders)
            self._data[name] = None if path is None else read_embedding_file(path)
        data = self._data[name]
        return None if data is None else embedding_vectors(data, key, width, name)

    def warn(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    def missing(self, name: str) -> None:
        self.warn(f"embedding:{name} is not in the embeddings folder; it is left out of the prompt")
