"""Flux.2's text encoders (CLIPLoader type `flux2`) and their prompt encoding, as ComfyUI has them.

Files: dev takes Mistral Small 3.1 24B's language model (ComfyUI's `mistral_3_small_flux2_*.safetensors`:
`model.embed_tokens`, `model.layers.N.{self_attn,mlp,...}`, `model.norm` in transformers' names, no biases,
no q/k norms, and Mistral's tekken tokenizer inside the file as the uint8 tensor `tekken_model`); Klein
takes Qwen3 4B / 8B (`qwen_3_4b.safetensors`, `qwen_3_8b*.safetensors`: llm_encoders.py builds it, its
tokenizer as llm_encoders finds it). Mistral's sizes come from the shapes (heads of
128 channels, rope theta 1e9 as Mistral Small 3.1 has) or a `genloom.config` in the metadata (tiny test
models); a file pruned to 30 layers without the final norm (ComfyUI reads those too) is fine, as only
layer inputs are read. The tokenizer is the file's `tekken_model` (converted by transformers' tekken
reader), else `tekken.json` or `tokenizer.json` in a folder next to the file, `<file stem>_tokenizer/` or
`mistral3_tokenizer/`; without any, loading fails naming them.

Encoding (ComfyUI's Flux2Tokenizer / KleinTokenizer; the layers are diffusers' Flux2Pipeline's too):
  dev    `<s>` + `[SYSTEM_PROMPT]{BFL's system message}[/SYSTEM_PROMPT][INST]{prompt}[/INST]`, no
         padding; the inputs of layers 10, 20 and 30 stacked per token -> [1, T, 3 * 5120]
  Klein  `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n`,
         right-padded with `<|endoftext|>` to 512 tokens (attention-masked), the inputs of layers 9, 18
         and 27 stacked -> [1, 512, 3 * width]
The diffusion model left-pads shorter conditioning with zeros to 512 tokens (families/flux2.py). No
prompt weights (ComfyUI disables them for these encoders), no pooled output.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from . import llm_encoders
from .llm_encoding import FLUX2_LAYERS, flux2_token_ids  # the templates (CLIP.tokenize builds them too)
from .weights import dequantize, read_state_dict, stored_dtype

ROLES = {"mistral3": "mistral3_24b", "qwen3": "qwen3_4b"}
TOKENIZER_DIRS = ("{stem}_tokenizer", "mistral3_tokenizer")
_TEKKEN = "tekken_model"


def mistral_config(shapes: dict) -> dict:
    vocab, width = shapes["model.embed_tokens.weight"]
    head = 128
    depth = len({int(m.group(1)) for k in shapes if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    return {"vocab_size": vocab, "hidden_size": width,
            "intermediate_size": shapes["model.layers.0.mlp.gate_proj.weight"][0],
            "num_hidden_layers": depth,
            "num_attention_heads": shapes["model.layers.0.self_attn.q_proj.weight"][0] // head,
            "num_key_value_heads": shapes["model.layers.0.self_attn.k_proj.weight"][0] // head, "head_dim": head,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "sliding_window": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000000.0}, "tie_word_embeddings": False}


def build_mistral(state: dict, name: str, config: dict | None = None):
    """Mistral Small 3.1's language model as a MistralForCausalLM, every tensor filled (an absent output
    head or final norm, which the encoding never reads, are made to fit)."""
    import torch
    from transformers import MistralForCausalLM

    from .loading import build_module, load_dtype
    from .weights import exact_keys

    state = {k: v for k, v in state.items() if k != _TEKKEN}
    config = config or mistral_config({k: tuple(v.shape) for k, v in state.items()})
    state = dequantize(state, load_dtype(stored_dtype(state)))
    embed = state["model.embed_tokens.weight"]
    state.setdefault("lm_head.weight", embed)
    pruned = "model.norm.weight" not in state
    state.setdefault("model.norm.weight", torch.ones(embed.shape[1], dtype=embed.dtype))
    what = f"Mistral 3 text encoder {name}"
    module = build_module(MistralForCausalLM, config, state, what, buffers=llm_encoders._rotary_tables)
    exact_keys(state, module.state_dict().keys(), what)
    if pruned:  # its last layer's output is read as it is (ComfyUI's final_norm off)
        module.model.norm = torch.nn.Identity()
    return module.eval()


def tekken_tokenizer(path: Path, state: dict):
    """Mistral's tokenizer: the file's own tekken data, else a tokenizer folder next to it."""
    from transformers import AutoTokenizer
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    if _TEKKEN in state:
        with tempfile.TemporaryDirectory() as folder:
            tekken = Path(folder) / "tekken.json"
            tekken.write_bytes(state[_TEKKEN].numpy().tobytes())
            return convert_tekken_tokenizer(str(tekken), chat_template="")
    names = [n.format(stem=path.stem) for n in TOKENIZER_DIRS]
    for root in (path.parent, path.parent.parent):
        for name in names:
            folder = root / name
            if (folder / "tekken.json").is_file():
                return convert_tekken_tokenizer(str(folder / "tekken.json"), chat_template="")
            if (folder / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    raise CheckpointError(f"{path.name}: no Mistral tokenizer found: the file has no {_TEKKEN} tensor (ComfyUI's "
                          f"repackage has one); put Mistral's tekken.json or tokenizer.json in "
                          f"{path.parent / names[1]}/")


def load_clip(paths: list, device: str | None = None):
    """CLIPLoader type flux2: one Mistral 3 (dev) or Qwen3 (Klein) file -> a CLIP handle of kind flux2."""
    from .handles import ClipHandle

    if len(paths) != 1:
        raise CheckpointError(f"type flux2 takes one text-encoder file, not {len(paths)}")
    path = Path(paths[0])
    state, meta = read_state_dict(path)
    config = json.loads(meta["genloom.config"]) if "genloom.config" in meta else None
    family = llm_encoders.detect({k: tuple(v.shape) for k, v in state.items()})
    if family == "mistral3":
        tokenizer, module = tekken_tokenizer(path, state), build_mistral(state, path.stem, config)
    elif family == "qwen3":
        module = llm_encoders.build(state, path.stem, config)[1]
        tokenizer = llm_encoders.find_tokenizer(path, module.get_input_embeddings().num_embeddings)
    else:
        raise CheckpointError(f"type flux2 takes a Mistral 3 (Flux.2 dev) or Qwen3 (Flux.2 Klein) text encoder; "
                              f"{path.name} is neither")
    return ClipHandle(tokenizers=(tokenizer,), text_encoders=(module,), kind="flux2", name=path.stem,
                      roles=(ROLES[family],), device=device, family_encode=encode)


def encode(clip, texts: dict):
    """ClipHandle.family_encode of a flux2 CLIP: ([1, T, 3 * width] float32 CPU, no pooled output)."""
    import torch

    from .owner import model_owner

    text = next(iter(texts.values())) or ""
    ids, mask = flux2_token_ids(clip, text)
    layers = FLUX2_LAYERS[clip.roles[0]]
    with torch.no_grad(), model_owner().memory.use(clip.text_encoders[0], clip.device) as enc:
        device = next(enc.parameters()).device
        out = enc.model(input_ids=torch.tensor([ids], device=device),
                        attention_mask=torch.tensor([mask], device=device), output_hidden_states=True)
        hidden = torch.stack([out.hidden_states[i] for i in layers], dim=2)  # [1, T, 3, D]
    return hidden.reshape(1, len(ids), -1).float().cpu(), None
