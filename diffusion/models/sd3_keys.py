"""SD3 / SD3.5's key table: each tensor of the original MMDiT layout and its diffusers name(s), read by
the SD3 family (families/sd3.py) and by the LoRA layouts (lora_sd3.py), which must not import the
family (the family imports the handles, which import LoRA)."""

from __future__ import annotations


def entries(depth: int, dual: set, qk_norm: bool) -> list[tuple]:
    """(original key, diffusers key or [q, k, v] keys, op) for every tensor; op: None (same tensor),
    "qkv" (split in three along dim 0), "swap" (the two halves exchanged)."""
    out = [("pos_embed", "pos_embed.pos_embed", None)]

    def pair(orig, diff, op=None):
        out.extend((f"{orig}.{p}", f"{diff}.{p}", op) for p in ("weight", "bias"))

    def qkv(orig, names):
        out.extend((f"{orig}.{p}", [f"{n}.{p}" for n in names], "qkv") for p in ("weight", "bias"))

    pair("x_embedder.proj", "pos_embed.proj")
    pair("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    pair("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    pair("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    pair("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    pair("context_embedder", "context_embedder")
    pair("final_layer.linear", "proj_out")
    pair("final_layer.adaLN_modulation.1", "norm_out.linear", "swap")
    for i in range(depth):
        o, d = f"joint_blocks.{i}", f"transformer_blocks.{i}"
        last = i == depth - 1
        qkv(f"{o}.x_block.attn.qkv", [f"{d}.attn.to_{c}" for c in "qkv"])
        qkv(f"{o}.context_block.attn.qkv", [f"{d}.attn.add_{c}_proj" for c in "qkv"])
        pair(f"{o}.x_block.attn.proj", f"{d}.attn.to_out.0")
        pair(f"{o}.x_block.adaLN_modulation.1", f"{d}.norm1.linear")
        pair(f"{o}.context_block.adaLN_modulation.1", f"{d}.norm1_context.linear", "swap" if last else None)
        pair(f"{o}.x_block.mlp.fc1", f"{d}.ff.net.0.proj")
        pair(f"{o}.x_block.mlp.fc2", f"{d}.ff.net.2")
        if not last:
            pair(f"{o}.context_block.attn.proj", f"{d}.attn.to_add_out")
            pair(f"{o}.context_block.mlp.fc1", f"{d}.ff_context.net.0.proj")
            pair(f"{o}.context_block.mlp.fc2", f"{d}.ff_context.net.2")
        if qk_norm:
            for side, a, b in (("x_block", "norm_q", "norm_k"), ("context_block", "norm_added_q", "norm_added_k")):
                out.append((f"{o}.{side}.attn.ln_q.weight", f"{d}.attn.{a}.weight", None))
                out.append((f"{o}.{side}.attn.ln_k.weight", f"{d}.attn.{b}.weight", None))
        if i in dual:
            qkv(f"{o}.x_block.attn2.qkv", [f"{d}.attn2.to_{c}" for c in "qkv"])
            pair(f"{o}.x_block.attn2.proj", f"{d}.attn2.to_out.0")
            if qk_norm:
                out.append((f"{o}.x_block.attn2.ln_q.weight", f"{d}.attn2.norm_q.weight", None))
                out.append((f"{o}.x_block.attn2.ln_k.weight", f"{d}.attn2.norm_k.weight", None))
    return out
