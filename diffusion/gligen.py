"""GLIGEN (ComfyUI's GLIGEN type): text boxes that steer where things go, through gated
self-attention "fusers" that join each transformer block of an SD1 UNet while it samples.

Files (the `gligen` folder, e.g. gligen_sd14_textbox_pruned) hold only what GLIGEN adds to a UNet:
  position_net.*   null_positive_feature [P], null_position_feature [F * 2 * 4],
                   linears.{0,2,4} (P + F*8 -> 512 -> SiLU -> 512 -> SiLU -> K)
  <LDM block>.<...>.fuser.*   one per transformer block, named after the block of the original
                   UNet it joins (input_blocks.1.1.transformer_blocks.0.fuser.attn.to_q.weight, ...):
                   linear (K -> C), attn.to_q/to_k/to_v (no bias), attn.to_out.0, ff.net.0.proj
                   (GEGLU), ff.net.2, norm1, norm2, alpha_attn, alpha_dense
The fusers are ordered as ComfyUI orders them (input blocks, middle block, output blocks, by block
number), which is the order the UNet runs its transformer blocks in; the i-th joins the i-th.

GLIGENTextBoxApply records ComfyUI's value in each conditioning entry:
  extra["gligen"] = ("position", gligen, [(pooled text [1, P], height // 8, width // 8, y // 8, x // 8), ...])
which the model handle turns into the fusers' work while sampling (gligen_boxes.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.diffusion.errors import CheckpointError
from genloom.diffusion.gligen_boxes import MAX_BOXES

_FUSER = re.compile(r"(?:^|\.)(input_blocks|middle_block|output_blocks)\.(\d+)\.(.*?)\.?fuser\.(.+)$")
_SECTIONS = ("input_blocks", "middle_block", "output_blocks")


@dataclass(frozen=True, eq=False)
class Gligen:
    module: Any  # GligenNet: .position_net, .fusers (one per transformer block, in forward order)
    key_dim: int  # P, the pooled text width the boxes take
    name: str = ""

    @property
    def fusers(self) -> int:
        return len(self.module.fusers)


@dataclass(frozen=True, eq=False)
class GligenBundle:
    """What the loaded-model cache keeps for one file (owner.LoadedModels holds its fields weakly)."""

    gligen: Gligen


def _classes():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PositionNet(nn.Module):
        def __init__(self, in_dim: int, position_dim: int, out_dim: int):
            super().__init__()
            self.null_positive_feature = nn.Parameter(torch.empty(in_dim))
            self.null_position_feature = nn.Parameter(torch.empty(position_dim))
            self.linears = nn.Sequential(nn.Linear(in_dim + position_dim, 512), nn.SiLU(), nn.Linear(512, 512),
                                         nn.SiLU(), nn.Linear(512, out_dim))

        def forward(self, boxes, masks, positive_embeddings):
            freqs = self.null_position_feature.shape[0] // 8
            bands = 100 ** (torch.arange(freqs, device=boxes.device, dtype=torch.float32) / freqs)
            angles = boxes.float()[..., None, :] * bands[:, None]  # [B, N, F, 4]
            fourier = torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # per band: sin xyxy, cos xyxy
            m = masks[..., None].to(fourier.dtype)
            fourier = fourier * m + (1 - m) * self.null_position_feature.float()
            text = positive_embeddings.float() * m + (1 - m) * self.null_positive_feature.float()
            dtype = self.linears[0].weight.dtype
            return self.linears(torch.cat([text, fourier], dim=-1).to(dtype))

    class Attention(nn.Module):
        def __init__(self, dim: int, inner: int):
            super().__init__()
            self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner, bias=False) for _ in range(3))
            self.to_out = nn.Sequential(nn.Linear(inner, dim))

        def forward(self, x, heads: int):
            b = x.shape[0]
            q, k, v = (p(x).reshape(b, -1, heads, p.out_features // heads).transpose(1, 2)
                       for p in (self.to_q, self.to_k, self.to_v))
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, self.to_q.out_features)
            return self.to_out(out)

    class GEGLU(nn.Module):
        def __init__(self, dim: int, inner: int):
            super().__init__()
            self.proj = nn.Linear(dim, 2 * inner)

        def forward(self, x):
            h, gate = self.proj(x).chunk(2, dim=-1)
            return h * F.gelu(gate)

    class Fuser(nn.Module):
        def __init__(self, dim: int, key_dim: int, inner: int, ff_inner: int):
            super().__init__()
            self.linear = nn.Linear(key_dim, dim)
            self.attn = Attention(dim, inner)
            self.ff = nn.Module()
            self.ff.net = nn.Sequential(GEGLU(dim, ff_inner), nn.Identity(), nn.Linear(ff_inner, dim))
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.alpha_attn, self.alpha_dense = nn.Parameter(torch.empty(())), nn.Parameter(torch.empty(()))

        def forward(self, x, objs, heads: int):
            n = x.shape[1]
            joint = torch.cat([x, self.linear(objs.to(x.dtype))], dim=1)
            x = x + torch.tanh(self.alpha_attn) * self.attn(self.norm1(joint), heads)[:, :n]
            return x + torch.tanh(self.alpha_dense) * self.ff.net(self.norm2(x))

    class GligenNet(nn.Module):
        def __init__(self, position_net, fusers):
            super().__init__()
            self.position_net, self.fusers = position_net, nn.ModuleList(fusers)

    return PositionNet, Fuser, GligenNet


def _fuser_groups(state: dict) -> list:
    """[(sort key, {param: tensor})] per fuser, in ComfyUI's order."""
    groups: dict[tuple, dict] = {}
    for key, tensor in state.items():
        found = _FUSER.search(key)
        if found:
            section, number, inside, param = found.groups()
            place = (_SECTIONS.index(section), int(number), inside)
            groups.setdefault(place, {})[param] = tensor
    return sorted(groups.items())


def gligen_from_state(state: dict, name: str = "") -> Gligen:
    import torch

    from genloom.diffusion.models.loading import load_dtype

    prefix = next((k[: -len("null_positive_feature")] for k in state
                   if k.endswith("position_net.null_positive_feature")), None)
    groups = _fuser_groups(state)
    if prefix is None or not groups:
        raise CheckpointError("not a GLIGEN model (no position_net.* and *.fuser.* weights)")
    net = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    PositionNet, Fuser, GligenNet = _classes()
    try:
        in_dim, position_dim = int(net["null_positive_feature"].shape[0]), int(net["null_position_feature"].shape[0])
        key_dim = int(net["linears.4.weight"].shape[0])
        with torch.device("meta"):
            position = PositionNet(in_dim, position_dim, key_dim)
            fusers = [Fuser(int(p["linear.weight"].shape[0]), int(p["linear.weight"].shape[1]),
                            int(p["attn.to_q.weight"].shape[0]), int(p["ff.net.2.weight"].shape[1]))
                      for _place, p in groups]
            module = GligenNet(position, fusers)
        weights = {f"position_net.{k}": v for k, v in net.items()}
        weights.update({f"fusers.{i}.{k}": v for i, (_place, p) in enumerate(groups) for k, v in p.items()})
        dtype = load_dtype(net["linears.0.weight"].dtype)
        module.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"the GLIGEN weights do not fit together: {str(exc).splitlines()[0][:300]}") from None
    if position_dim % 8:
        raise CheckpointError(f"a GLIGEN position net takes 8 features per frequency, not {position_dim} in all")
    return Gligen(module.eval().requires_grad_(False), in_dim, name)


def load_gligen(path) -> GligenBundle:
    from genloom.diffusion.models.weights import read_state_dict

    path = Path(path)
    state, _meta = read_state_dict(path)
    try:
        return GligenBundle(gligen_from_state(state, path.stem))
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None


def add_text_box(conditioning: list, gligen: Gligen, pooled, width: int, height: int, x: int, y: int) -> list:
    """GLIGENTextBoxApply: every entry's GLIGEN boxes gain one (see the module doc); new entries.
    `pooled`: the box text's pooled encoding [1, gligen.key_dim]."""
    box = (pooled[:1].float().cpu(), int(height) // 8, int(width) // 8, int(y) // 8, int(x) // 8)
    out = []
    for entry in conditioning:
        extra = dict(entry[1])
        boxes = list(extra["gligen"][2]) if extra.get("gligen") else []
        if len(boxes) >= MAX_BOXES:
            raise ValueError(f"GLIGEN takes at most {MAX_BOXES} text boxes per conditioning")
        extra["gligen"] = ("position", gligen, boxes + [box])
        out.append([entry[0], extra])
    return out
