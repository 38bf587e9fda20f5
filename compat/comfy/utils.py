"""ComfyUI's `comfy.utils` for node packs: progress bars that report as genloom progress events,
resizing, weights files (read weights-only), tiled processing and attribute paths.

torch is imported inside the functions that need it."""

from __future__ import annotations

import math

from genloom.engine import context

PROGRESS_BAR_ENABLED = True
_global_hook = None  # set_progress_bar_global_hook(fn): fn(value, total, preview, node_id)


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = bool(enabled)


def set_progress_bar_global_hook(function) -> None:
    global _global_hook
    _global_hook = function


class ProgressBar:
    """`ProgressBar(total)`; `update(n)` and `update_absolute(value, total, preview)` send the running
    node's progress event (which also stops the node when the user interrupted the run)."""

    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.node_id = node_id
        self.hook = _global_hook

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total) if self.total else value
        image = preview[1] if isinstance(preview, tuple) and len(preview) > 1 else preview
        if self.hook is not None:
            self.hook(self.current, self.total, preview, self.node_id)
        if PROGRESS_BAR_ENABLED:
            context.current().progress(self.current, self.total, preview=image)
        else:
            context.current().check_interrupt()

    def update(self, value):
        self.update_absolute(self.current + value)


def common_upscale(samples, width: int, height: int, upscale_method: str, crop: str):
    """`samples` [B, C, H, W] resized to height x width ("nearest-exact", "bilinear", "area",
    "bicubic", "bislerp", "lanczos"), optionally centre-cropped ("center") to that aspect first."""
    from genloom.diffusion.resample import resize

    return resize(samples, width, height, upscale_method, crop)


def load_torch_file(ckpt, safe_load: bool = False, device=None, return_metadata: bool = False):
    """A weights file's state dict (safetensors, or a pickle through torch's weights-only unpickler:
    genloom never unpickles objects, whatever `safe_load` says); with return_metadata, (sd, metadata)."""
    from pathlib import Path

    from genloom.diffusion.models.weights import read_state_dict

    sd, metadata = read_state_dict(Path(ckpt))
    if device is not None and str(device) != "cpu":
        sd = {k: v.to(device) for k, v in sd.items()}
    return (sd, metadata or None) if return_metadata else sd


def save_torch_file(sd, ckpt, metadata=None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(ckpt), metadata=metadata)


def get_tiled_scale_steps(width, height, tile_x, tile_y, overlap) -> int:
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - overlap, tile - overlap))
    return sorted({min(s, size - tile) for s in starts})


def tiled_scale(samples, function, tile_x=64, tile_y=64, overlap=8, upscale_amount=4, out_channels=3,
                output_device="cpu", pbar=None):
    """`function` applied to `samples` [B, C, H, W] tile by tile, each output tile (scaled by
    `upscale_amount`, `out_channels` channels) blended over the overlaps with a linear feather."""
    import torch

    batch, _, height, width = samples.shape
    out_h, out_w = round(height * upscale_amount), round(width * upscale_amount)
    output = torch.zeros((batch, out_channels, out_h, out_w), device=output_device)
    ys, xs = _starts(height, tile_y, overlap), _starts(width, tile_x, overlap)
    feather = max(1, round(overlap * upscale_amount))
    for b in range(batch):
        acc = torch.zeros((out_channels, out_h, out_w), device=output_device)
        weight = torch.zeros((1, out_h, out_w), device=output_device)
        for y in ys:
            for x in xs:
                context.current().check_interrupt()
                piece = samples[b:b + 1, :, y:y + tile_y, x:x + tile_x]
                result = function(piece).to(output_device).float()
                th, tw = result.shape[-2:]
                oy, ox = round(y * upscale_amount), round(x * upscale_amount)
                mask = torch.ones((th, tw), device=output_device)
                for i in range(min(feather, th // 2, tw // 2)):
                    value = (i + 1) / (feather + 1)
                    if y > 0:
                        mask[i, :] = torch.minimum(mask[i, :], torch.tensor(value))
                    if y + tile_y < height:
                        mask[th - 1 - i, :] = torch.minimum(mask[th - 1 - i, :], torch.tensor(value))
                    if x > 0:
                        mask[:, i] = torch.minimum(mask[:, i], torch.tensor(value))
                    if x + tile_x < width:
                        mask[:, tw - 1 - i] = torch.minimum(mask[:, tw - 1 - i], torch.tensor(value))
                acc[:, oy:oy + th, ox:ox + tw] += result[0] * mask
                weight[:, oy:oy + th, ox:ox + tw] += mask
                if pbar is not None:
                    pbar.update(1)
        output[b] = acc / weight.clamp(min=1e-8)
    return output


def get_attr(obj, attr: str):
    """`obj.a.b.c` for attr 'a.b.c'."""
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj, attr: str, value):
    """Set `obj.a.b.c = value`; returns the previous value."""
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    previous = getattr(obj, last)
    setattr(obj, last, value)
    return previous


def set_attr_param(obj, attr: str, value):
    import torch

    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def copy_to_param(obj, attr: str, value) -> None:
    get_attr(obj, attr).data.copy_(value)


def state_dict_prefix_replace(state_dict: dict, replace_prefix: dict, filter_keys: bool = False) -> dict:
    out = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old):]] = state_dict.pop(key)
    return out


def repeat_to_batch_size(tensor, batch_size: int, dim: int = 0):
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def calculate_parameters(sd: dict, prefix: str = "") -> int:
    return sum(v.nelement() for k, v in sd.items() if k.startswith(prefix))
