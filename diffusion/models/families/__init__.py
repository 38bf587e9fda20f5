"""Diffusion-model families: the files UNETLoader reads (and the diffusion model of an all-in-one
checkpoint), recognised by their keys and shapes and built without any config file.

The contract of a family module (listed in `FAMILIES`, tried in order):

    NAME: str                      a short name for messages ("SD3", "Flux.1")
    detect(shapes: dict[str, tuple]) -> bool
        True when the tensor names/shapes (prefix already stripped, see `strip_prefix`) are this
        family's, in its authors' layout or in diffusers' layout.
    build(state: dict, *, dtype, name: str) -> ModelHandle subclass
        the module built on the meta device with its config read from the shapes (no hard-coded
        widths), every tensor of the module filled from `state` (fp8 already dequantised to
        `dtype`) and nothing left over: `weights.exact_keys` raises a CheckpointError naming the
        missing and unexpected keys. The handle sets kind, latent_channels, vae_scale_factor,
        sampling (ModelSampling) and latent_format.

`load_diffusion_model(path, weight_dtype)` is the one entry point (UNETLoader); `build_from_state`
does the same for a state dict already read (CheckpointLoaderSimple's SD3 files).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from ..handles import ModelHandle
from ..weights import dequantize, is_fp8, read_state_dict, stored_dtype

PREFIXES = ("model.diffusion_model.", "model.model.", "net.")  # stripped, as ComfyUI does
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")

# Keys of families genloom recognises but cannot build (yet): said by name instead of "unknown".
KNOWN_ELSEWHERE = {
    "distilled_guidance_layer.in_proj.weight": "Chroma",
    "cap_embedder.1.weight": "Lumina 2",
    "caption_projection.0.linear.weight": "HiDream",
    "adaln_single.emb.timestep_embedder.linear_1.bias": "LTX-Video",
    "txt_in.individual_token_refiner.blocks.0.norm1.weight": "HunyuanVideo",
    "input_blocks.0.0.weight": "an SD1/SD2/SDXL UNet (load it with its checkpoint)",
}


@dataclass(frozen=True, eq=False)
class DiTHandle(ModelHandle):
    """The base of the transformer families' MODEL handles (`unet` holds the transformer)."""

    @staticmethod
    def batch_timestep(t, x, dtype=None):
        """The sampler's timestep as one value per batch row, on x's device, in `dtype` (default x's)."""
        import torch

        t = torch.as_tensor(t, device=x.device).reshape(-1).to(dtype or x.dtype)
        return t.expand(x.shape[0]) if t.numel() == 1 else t

    @contextmanager
    def use(self, device: str | None = None, dtype=None):
        # weight_dtype fp8 keeps its Linear weights in fp8: moved, never cast wholesale.
        if dtype is not None and any(is_fp8(p) for p in self.unet.parameters()):
            dtype = None
        with super().use(device, dtype) as module:
            yield module


def families() -> list:
    """The family modules, in detection order."""
    from . import flux, flux2, qwen_image, sd3, wan, z_image

    return [sd3, flux, flux2, wan, qwen_image, z_image]


def strip_prefix(state: dict) -> dict:
    """Drop the wrapper prefix that covers most keys (ComfyUI's rule); others are kept as they are."""
    counts = {p: sum(k.startswith(p) for k in state) for p in PREFIXES}
    best = max(counts, key=counts.get)
    if counts[best] == 0 or counts[best] * 2 < len(state):
        return state
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def detect(shapes: dict):
    """The family module whose keys these are, or a CheckpointError saying what the file is."""
    for family in families():
        if family.detect(shapes):
            return family
    for key, what in KNOWN_ELSEWHERE.items():
        if key in shapes:
            raise CheckpointError(f"this is a {what} diffusion model, which genloom cannot load yet")
    names = ", ".join(getattr(f, "NAME", f.__name__) for f in families())
    raise CheckpointError(f"not a diffusion model genloom knows (looked for {names} keys; "
                          f"first keys: {sorted(shapes)[:4]})")


def file_problem(path: Path) -> str | None:
    """Why UNETLoader could not use this file, judged from its .safetensors header (no tensor read);
    None when it can, or when only loading can tell (pickled files)."""
    from ..weights import read_header

    if Path(path).suffix.lower() not in (".safetensors", ".sft"):
        return None
    try:
        shapes, _meta = read_header(Path(path))
        detect(strip_prefix(shapes))
    except CheckpointError as exc:
        return str(exc)
    return None


def fp8_dtype(weight_dtype: str):
    """The torch fp8 dtype a UNETLoader weight_dtype keeps weights in; None for "default"."""
    import torch

    if weight_dtype not in WEIGHT_DTYPES:
        raise CheckpointError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
    return {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
            "fp8_e5m2": torch.float8_e5m2}.get(weight_dtype)


def build_from_state(state: dict, name: str, weight_dtype: str = "default"):
    from ..loading import load_dtype

    state = strip_prefix(state)
    family = detect({k: tuple(v.shape) for k, v in state.items()})
    dtype = load_dtype(stored_dtype(state))
    handle = family.build(dequantize(state, dtype), dtype=dtype, name=name)
    keep = fp8_dtype(weight_dtype)
    if keep is not None:
        store_linears_in(handle.unet, keep)
    return handle


def load_diffusion_model(path: Path, weight_dtype: str = "default"):
    """A diffusion-model file (any family above) -> its MODEL handle."""
    state, _meta = read_state_dict(Path(path))
    return build_from_state(state, Path(path).stem, weight_dtype)


def store_linears_in(module, fp8) -> None:
    """weight_dtype fp8: every Linear keeps its weight in `fp8` and casts it to its input's dtype
    for each call (half the memory of bf16; the matmul itself runs in the compute dtype)."""
    import torch
    import torch.nn.functional as F

    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear) and layer.weight.is_floating_point():
            layer.weight.data = layer.weight.data.to(fp8)

            def forward(x, _layer=layer):
                bias = _layer.bias.to(x.dtype) if _layer.bias is not None else None
                return F.linear(x, _layer.weight.to(x.dtype), bias)

            layer.forward = forward
