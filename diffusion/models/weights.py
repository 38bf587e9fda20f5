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


# -- fp8 files -----------------------------------------------------------------------------------

FP8_MARKERS = ("scaled_fp8",)  # ComfyUI's scaled-fp8 layout: this (empty) tensor + `*.scale_weight`
_DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")  # activation scales, quant tags


def is_fp8(tensor) -> bool:
    return "float8" in str(tensor.dtype)


def stored_dtype(state: dict):
    """The floating dtype a file's weights are kept in; bfloat16 for fp8 files (what they are
    computed in; `loading.load_dtype` turns it into float32 on a CPU run)."""
    import torch

    if any(is_fp8(v) for v in state.values()):
        return torch.bfloat16
    return next((v.dtype for v in state.values() if v.is_floating_point() and v.ndim > 1), torch.float32)


def dequantize(state: dict, dtype) -> dict:
    """fp8 tensors -> `dtype`. Scaled layouts are multiplied out: ComfyUI's `scaled_fp8` marker with
    `<layer>.scale_weight`, and `comfy_quant`-style `<layer>.weight_scale`; their activation scales
    and quantisation tags are dropped (they only steer fp8 matmuls). A state without fp8 is returned
    as it is."""
    if not any(is_fp8(v) for v in state.values()) and not any(m in state for m in FP8_MARKERS):
        return state
    _only_fp8_formats(state)
    out = {}
    for key, tensor in state.items():
        if key in FP8_MARKERS or key.endswith(_DROPPED_SUFFIXES):
            continue
        if key.endswith((".scale_weight", ".weight_scale")):
            continue
        base = key[: -len("weight")] if key.endswith("weight") else None
        scale = None
        if base is not None:
            scale = state.get(base + "scale_weight", state.get(base + "weight_scale"))
        if is_fp8(tensor) or scale is not None:
            value = tensor.float()
            if scale is not None:
                value = value * _broadcast(scale.float(), value)
            tensor = value.to(dtype)
        out[key] = tensor
    return out


def _only_fp8_formats(state: dict) -> None:
    """comfy_quant tags (`<layer>.comfy_quant`: UTF-8 JSON as uint8, {"format": ...}) other than
    float8 (int8, nvfp4 blocks...) are refused by name rather than dequantised wrong."""
    import json

    for key in (k for k in state if k.endswith(".comfy_quant")):
        try:
            fmt = str(json.loads(bytes(state[key].reshape(-1).tolist()).decode("utf-8")).get("format", ""))
        except (ValueError, UnicodeDecodeError, AttributeError):
            fmt = "?"
        if not fmt.startswith("float8"):
            raise CheckpointError(f"{key[: -len('.comfy_quant')]} is quantised as {fmt!r}; genloom reads "
                                  "float8 weights only (plain, scaled_fp8, or comfy_quant float8)")


def _broadcast(scale, value):
    """A per-tensor (scalar) or per-output-row scale shaped to multiply `value`."""
    if scale.numel() == 1:
        return scale.reshape(())
    return scale.reshape(scale.shape[0], *([1] * (value.ndim - 1)))


def exact_keys(state: dict, expected, what: str) -> None:
    """Every tensor of the module filled and nothing left over, or an error naming the keys."""
    expected = set(expected)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:8])}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"the {what} weights do not match its architecture ({'; '.join(parts)})")
