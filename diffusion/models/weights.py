"""Reading weights files: safetensors, and pickled torch files only through torch's weights-only
unpickler, so a file that holds Python objects (which could run code when loaded) is refused."""

from __future__ import annotations

from pathlib import Path

from genloom.diffusion.errors import CheckpointError


def read_state_dict(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata). Pickled files load only if torch's weights-only unpickler accepts them."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                meta = dict(f.metadata() or {})
            return load_file(str(path)), meta
        except SafetensorError as exc:
            raise CheckpointError(f"{path.name}: {exc}") from exc
    import torch

    data = load_pickled_weights(path)
    if isinstance(data, dict):
        for key in ("state_dict", "params_ema", "params"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
        if not tensors:
            raise CheckpointError(f"{path.name} holds no tensors")
        data = tensors
    return data, {}


def load_pickled_weights(path: Path):
    """What a pickled torch file holds (nested dicts, lists, tensors, numbers, strings), read with
    torch's weights-only unpickler; a file that holds any other Python object is refused."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError) as exc:
        raise CheckpointError(
            f"{path.name} is not a plain weights file: it contains Python objects that could run "
            f"code when loaded, so genloom refuses it (convert it to .safetensors). Detail: "
            f"{str(exc).splitlines()[0][:200]}") from exc


def read_weights(path: Path) -> dict:
    """The tensors of a weights file; every failure to read it is a CheckpointError naming the file."""
    try:
        return read_state_dict(path)[0]
    except OSError as exc:
        raise CheckpointError(f"{Path(path).name}: {exc}") from exc


def read_header(path: Path) -> tuple[dict[str, list[int]], dict]:
    """(tensor name -> shape, metadata) of a .safetensors file from its JSON header alone: no tensor
    is read and torch is not imported, so validation can look inside model files cheaply."""
    import json
    import struct

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100 * 2**20:
                raise CheckpointError(f"{path.name}: a safetensors header of {size} bytes is not plausible")
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a readable .safetensors file ({exc})") from exc
    meta = header.pop("__metadata__", None) or {}
    return {name: list(entry.get("shape", [])) for name, entry in header.items()}, meta

