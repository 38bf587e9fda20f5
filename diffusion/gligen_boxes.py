"""GLIGEN while sampling: a conditioning entry's text boxes become object tokens, and the GLIGEN
model's fusers join the UNet's transformer blocks for the calls that carry them (the model handle's
`predict`). Kept apart from gligen.py (reading files, building the modules) so the handle and the
guidance code can import it.

Each box (pooled text, height, width, y, x in latent cells) becomes (x1, y1, x2, y2) in fractions
of the latent being denoised (x / w, y / h, (x + width) / w, (y + height) / h): at most 30 boxes
with mask 1, the rest zeros with mask 0. The position net turns [pooled, Fourier features of the
box] (masked entries: its null features) into object tokens; in every transformer block, after the
self-attention's residual:
  x = x + tanh(alpha_attn) * attn(norm1([x, linear(objs)]))[:, :len(x)]
  x = x + tanh(alpha_dense) * ff(norm2(x))
The fuser attention's head count, which shapes cannot show, is its host block's (SD1: 8, what
ComfyUI fixes for 768-wide files). As in ComfyUI, a negative conditioning without GLIGEN of its
own gets the positive's boxes (`share_with_negative`); a kind other than "position" means no boxes
(every mask 0).
"""

from __future__ import annotations

from contextlib import contextmanager

from genloom.diffusion.errors import SamplingError

MAX_BOXES = 30


def share_with_negative(positive: list | None, negative: list | None) -> list | None:
    """ComfyUI's rule: a negative with no GLIGEN of its own takes the positive's, entry by entry
    (areas left out; the i-th positive GLIGEN goes to negative entry i modulo their number, the last
    one given to an entry staying)."""
    def plain(entries):
        return [(i, e) for i, e in enumerate(entries or []) if not (len(e) > 1 and e[1] and e[1].get("area"))]

    given = [e[1]["gligen"] for _i, e in plain(positive) if e[1].get("gligen") is not None]
    if not given or negative is None or any(e[1].get("gligen") is not None for _i, e in plain(negative)):
        return negative
    targets = plain(negative)
    if not targets:
        return negative
    out = list(negative)
    for k, value in enumerate(given):
        index, entry = targets[k % len(targets)]
        out[index] = [entry[0], {**(entry[1] or {}), "gligen": value}]
    return out


def _objects(value, batch: int, h: int, w: int, device):
    """(boxes [B, 30, 4], masks [B, 30], pooled [B, 30, P]) for one call on [B, C, h, w] latents."""
    import torch

    kind, gligen, params = value
    boxes = torch.zeros((MAX_BOXES, 4))
    masks = torch.zeros(MAX_BOXES)
    texts = torch.zeros((MAX_BOXES, gligen.key_dim))
    if kind == "position":
        for i, (pooled, bh, bw, by, bx) in enumerate(params[:MAX_BOXES]):
            boxes[i] = torch.tensor([bx / w, by / h, (bx + bw) / w, (by + bh) / h])
            masks[i], texts[i] = 1.0, pooled.reshape(-1).float()
    return tuple(t.unsqueeze(0).repeat(batch, *([1] * t.ndim)).to(device) for t in (boxes, masks, texts))


def _forward_blocks(unet) -> list:
    """The UNet's transformer blocks in the order they run: down blocks, middle, up blocks."""
    from diffusers.models.attention import BasicTransformerBlock

    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    found = [(order.get(path.split(".")[0], 3), i, m) for i, (path, m) in enumerate(unet.named_modules())
             if isinstance(m, BasicTransformerBlock)]
    return [m for _s, _i, m in sorted(found, key=lambda t: t[:2])]


@contextmanager
def fused(unet, value, x):
    """While inside, `unet` runs the GLIGEN of a conditioning's `gligen` value on latents like `x`;
    yields the UNet call's cross_attention_kwargs. The UNet's own modules are not changed: the
    fusers and position net are lent through diffusers' GLIGEN slots for the call only."""
    from genloom.diffusion.models.owner import model_owner

    gligen = value[1]
    blocks = _forward_blocks(unet)
    if len(blocks) != gligen.fusers:
        raise SamplingError(f"this GLIGEN model has {gligen.fusers} fusers but the model has {len(blocks)} "
                            "transformer blocks: it belongs to another model family")
    if hasattr(unet, "position_net") or any(hasattr(b, "fuser") for b in blocks):
        raise SamplingError("this model has GLIGEN layers of its own: use it without GLIGENTextBoxApply")
    with model_owner().memory.use(gligen.module, str(x.device), x.dtype, name="GLIGEN") as net:
        for block, fuser in zip(blocks, net.fusers):
            object.__setattr__(block, "fuser", _Joined(fuser, block.attn1.heads))
        object.__setattr__(unet, "position_net", net.position_net)
        boxes, masks, texts = _objects(value, x.shape[0], x.shape[-2], x.shape[-1], x.device)
        try:
            yield {"gligen": {"boxes": boxes, "masks": masks, "positive_embeddings": texts}}
        finally:
            for block in blocks:
                object.__delattr__(block, "fuser")
            object.__delattr__(unet, "position_net")


class _Joined:
    """A fuser with its host block's head count, called as diffusers calls a block's `fuser`."""

    def __init__(self, fuser, heads: int):
        self.fuser, self.heads = fuser, int(heads)

    def __call__(self, hidden_states, objs):
        return self.fuser(hidden_states, objs, self.heads)
