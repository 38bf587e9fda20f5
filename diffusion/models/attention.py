"""ComfyUI's attention patches on a diffusers UNet.

A pack registers functions in MODEL.model_options["transformer_options"]:
  patches["attn1_patch"] / ["attn2_patch"]   fn(n, context, value, extra_options) -> (n, context, value),
                                             called on the attention's inputs before the projections
                                             (n: the normed hidden states, context/value: what keys
                                             and values are projected from; self-attention: n)
  patches["attn1_output_patch"] / ["attn2_output_patch"]   fn(out, extra_options) -> out
  patches_replace["attn1"|"attn2"][(block_name, number[, transformer_index])]
                                             fn(q, k, v, extra_options) -> attention output, given
                                             the projected q, k, v [B, T, heads * dim_head]; the
                                             output projection follows
extra_options holds the transformer options of the call (cond_or_uncond, sigmas, original_shape and
the pack's own keys) plus block (("input", i) | ("middle", 0) | ("output", i), ComfyUI's LDM block
numbers), block_index (the transformer block inside its Transformer2DModel), transformer_index (the
Transformer2DModel's place in the network, counted in forward order), n_heads and dim_head.

`attention_patched(unet, model_options)` installs processors doing that on the attention modules
concerned for the duration of a `use()`, and puts the original processors back on exit; the
sampler's guidance sets the per-call options with `call_options()`. Entered again inside a `use()`
(a network call with options of its own: calc_cond_batch), it adds processors only where none is.
"""

from __future__ import annotations

import contextvars
import re
from contextlib import contextmanager

from . import keymaps

_CALL: contextvars.ContextVar = contextvars.ContextVar("genloom_transformer_options", default=None)
_PATCH_NAMES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch")
_LDM_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\.")
_BLOCK_NAMES = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}
_PLACE = re.compile(r"\.transformer_blocks\.(\d+)\.(attn[12])$")


@contextmanager
def call_options(options: dict):
    """The transformer options of one network call, as the attention processors read them."""
    token = _CALL.set(options)
    try:
        yield
    finally:
        _CALL.reset(token)


def has_patches(model_options: dict) -> bool:
    to = (model_options or {}).get("transformer_options") or {}
    patches, replace = to.get("patches") or {}, to.get("patches_replace") or {}
    return any(patches.get(n) for n in _PATCH_NAMES) or bool(replace.get("attn1") or replace.get("attn2"))


def _block_of(path: str, table: dict):
    """ComfyUI's (block name, number) of a diffusers attention module path, or None."""
    ldm = keymaps._translate(path + ".to_q.weight", table) if table else None
    found = _LDM_BLOCK.match(ldm or "")
    if found is None:
        return None
    name = _BLOCK_NAMES[found.group(1)]
    return (name, 0 if name == "middle" else int(found.group(2)))


def attention_places(unet) -> list:
    """(module path, attention module, which ('attn1'|'attn2'), block, block_index,
    transformer_index) for every transformer attention of `unet`, in forward order."""
    try:
        table = keymaps.unet_map(dict(unet.config))
    except (ValueError, KeyError, TypeError):
        table = {}
    found_places = []
    for order, (path, module) in enumerate(unet.named_modules()):
        found = _PLACE.search(path)
        if found is not None and hasattr(module, "to_q"):
            found_places.append((order, path, module, found))
    # diffusers registers up_blocks before mid_block, so named_modules() is not the order the network
    # runs them in; ComfyUI's LDM block numbers (input, middle, output) are.
    rank = {"input": 0, "middle": 1, "output": 2}

    def forward_order(item):
        order, path, _module, _found = item
        block = _block_of(path, table)
        return (rank[block[0]], block[1], order) if block else (3, 0, order)

    places, owners = [], {}
    for _order, path, module, found in sorted(found_places, key=forward_order):
        index = owners.setdefault(path[: found.start()], len(owners))
        places.append((path, module, found.group(2), _block_of(path, table), int(found.group(1)), index))
    return places


def _replacement(replace: dict, which: str, block, block_index: int):
    table = replace.get(which) or {}
    if block is None or not table:
        return None
    return table.get((block[0], block[1], block_index)) or table.get(block)


class PatchedAttention:
    """A diffusers attention processor that runs a pack's ComfyUI patches around the attention."""

    def __init__(self, original, which: str, block, block_index: int, transformer_index: int,
                 options: dict):
        self.original, self.which = original, which
        self.block, self.block_index, self.transformer_index = block, block_index, transformer_index
        self.options = options  # the transformer options at install time (outside sampling calls)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        to = _CALL.get() or self.options
        patches, replace = to.get("patches") or {}, to.get("patches_replace") or {}
        extra = {k: v for k, v in to.items() if k not in ("patches", "patches_replace")}
        heads = attn.heads
        extra.update(block=self.block, block_index=self.block_index,
                     transformer_index=self.transformer_index, n_heads=heads,
                     dim_head=attn.to_q.out_features // heads)
        n, context, value = hidden_states, encoder_hidden_states, None
        before = patches.get(f"{self.which}_patch") or []
        if before:
            context = n if context is None else context
            value = context
            for fn in before:
                n, context, value = fn(n, context, value, extra)
        swap = _replacement(replace, self.which, self.block, self.block_index)
        if swap is None and value is None:
            out = self.original(attn, n, context, attention_mask, temb, **kwargs)
        else:
            out = self._attend(attn, n, context, value, attention_mask, swap, extra)
        for fn in patches.get(f"{self.which}_output_patch") or []:
            out = fn(out, extra)
        return out

    def _attend(self, attn, n, context, value, mask, swap, extra):
        import torch.nn.functional as F

        context = n if context is None else context
        if attn.norm_cross is not None and context is not n:
            context = attn.norm_cross(context)
        value = context if value is None else value
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
        if swap is not None:
            out = swap(q, k, v, extra)
        else:
            b, heads = q.shape[0], attn.heads

            def split(t):
                return t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)

            out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
            out = out.transpose(1, 2).reshape(b, -1, heads * out.shape[-1]).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + n
        return out / attn.rescale_output_factor


@contextmanager
def attention_patched(unet, model_options: dict):
    """While inside, `unet`'s attention modules run the ComfyUI patches in `model_options`."""
    if not has_patches(model_options):
        yield unet
        return
    to = model_options.get("transformer_options") or {}
    patches, replace = to.get("patches") or {}, to.get("patches_replace") or {}
    everywhere = {w for w in ("attn1", "attn2")
                  if patches.get(f"{w}_patch") or patches.get(f"{w}_output_patch")}
    originals = []
    try:
        for _path, module, which, block, block_index, index in attention_places(unet):
            if which not in everywhere and _replacement(replace, which, block, block_index) is None:
                continue
            if isinstance(module.processor, PatchedAttention):
                continue  # installed by an enclosing use(): it reads each call's options already
            originals.append((module, module.processor))
            module.processor = PatchedAttention(module.processor, which, block, block_index, index, to)
        yield unet
    finally:
        for module, processor in originals:
            module.processor = processor
