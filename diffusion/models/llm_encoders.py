"""Language models as text encoders (CLIPLoader types `qwen_image` and `lumina2`): Qwen2.5-VL for
Qwen-Image, Qwen3 for Z-Image, loaded as causal LMs (their output head kept, so TextGenerate can write
with them; tied to the token embeddings where the file has no `lm_head.weight`).

Files (ComfyUI's `qwen_2.5_vl_7b*.safetensors`, `qwen_3_4b*.safetensors`): transformers' original key
names, `model.embed_tokens`, `model.layers.N.{self_attn,mlp,...}`, `model.norm`, optionally
`lm_head.weight`; Qwen2.5-VL adds its vision tower under `visual.*`. Qwen2.5 has q/k/v biases, Qwen3
has per-head q/k norms instead (whose width is the head size). Sizes come from the shapes (heads of
128 channels for Qwen2.5-VL, as its 3B/7B/32B/72B have), or from a `genloom.config` JSON in the file's
metadata (tiny test models).

Tokenizer: not in the weights file. Qwen2.5-VL and Qwen3 share one byte-level BPE vocabulary (ComfyUI
ships it as `qwen25_tokenizer`): genloom reads Qwen's tokenizer files (tokenizer.json, or vocab.json +
merges.txt, with tokenizer_config.json) from a folder next to the model file, `<file stem>_tokenizer/`
or `qwen25_tokenizer/`, or one level up (the models folder), else its own copy
(`diffusion/configs/qwen25_tokenizer/`, Apache-2.0, see the README there). A model whose token table
is smaller than the tokenizer (a test model with its own vocabulary) is refused naming the folder.

Encoding (what CLIPTextEncode gets from these encoders): llm_encoding.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from .weights import dequantize, read_state_dict, stored_dtype

TOKENIZER_DIRS = ("{stem}_tokenizer", "qwen25_tokenizer")
SHIPPED_TOKENIZER = Path(__file__).resolve().parent.parent / "configs" / "qwen25_tokenizer"
# CLIPLoader type -> (CLIP kind, the LLM the type takes, its ComfyUI key name)
CLIP_TYPES = {"qwen_image": ("qwen_image", "qwen25_vl", "qwen25_7b"), "lumina2": ("z_image", "qwen3", "qwen3_4b")}
# type flux2 (Flux.2: Klein's Qwen3, dev's Mistral 3) is loaded by flux2_text.py (text_encoders.py calls it)
CLIP_TYPES["flux2"] = ("flux2", "qwen3", "qwen3_4b")
_EMBED = "model.embed_tokens.weight"
_Q = "model.layers.0.self_attn.q_proj.weight"


def _text_keys(state: dict) -> dict:
    """transformers 5's `model.language_model.*` / `model.visual.*` names -> the original ones."""
    out = {}
    for k, v in state.items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif k.startswith("model.visual."):
            k = k[len("model."):]
        out[k] = v
    return out


def detect(shapes: dict) -> str | None:
    """'qwen25_vl' (Qwen2.5 / Qwen2.5-VL: q/k/v biases), 'qwen3' (q/k norms), 'mistral3', or None."""
    shapes = _text_keys(shapes)
    if _EMBED not in shapes or _Q not in shapes:
        return None
    if "model.layers.0.self_attn.q_norm.weight" in shapes:
        return "qwen3"
    if "model.layers.0.self_attn.q_proj.bias" in shapes:
        return "qwen25_vl"
    if "tekken_model" in shapes:  # Mistral 3 with its tokenizer inside (Flux.2 dev's, flux2_text.py)
        return "mistral3"
    return None


def _depth(shapes: dict, pattern: str) -> int:
    return len({int(m.group(1)) for k in shapes if (m := re.match(pattern, k))})


def config_from_shapes(shapes: dict, family: str) -> dict:
    vocab, width = shapes[_EMBED]
    head = shapes["model.layers.0.self_attn.q_norm.weight"][0] if family == "qwen3" else 128
    text = {"vocab_size": vocab, "hidden_size": width,
            "intermediate_size": shapes["model.layers.0.mlp.gate_proj.weight"][0],
            "num_hidden_layers": _depth(shapes, r"model\.layers\.(\d+)\."),
            "num_attention_heads": shapes[_Q][0] // head,
            "num_key_value_heads": shapes["model.layers.0.self_attn.k_proj.weight"][0] // head,
            "head_dim": head, "rms_norm_eps": 1e-6, "max_position_embeddings": 128000}
    if family == "qwen3":
        return {**text, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
                "tie_word_embeddings": "lm_head.weight" not in shapes}
    half = head // 2
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0,
                               "mrope_section": [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]}
    vision = {}
    if "visual.patch_embed.proj.weight" in shapes:
        vwidth, _c, temporal, patch, _ = shapes["visual.patch_embed.proj.weight"]
        vision = {"depth": _depth(shapes, r"visual\.blocks\.(\d+)\."), "hidden_size": vwidth,
                  "intermediate_size": shapes["visual.blocks.0.mlp.gate_proj.weight"][0],
                  "out_hidden_size": shapes["visual.merger.mlp.2.weight"][0], "patch_size": patch,
                  "temporal_patch_size": temporal}
    return {"text_config": text, "vision_config": vision}


def build(state: dict, name: str, config: dict | None = None):
    """The causal LM (Qwen2_5_VLForConditionalGeneration or Qwen3ForCausalLM), every tensor filled."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3ForCausalLM

    from .loading import build_module, load_dtype  # loading imports handles, which imports this module
    from .weights import exact_keys

    state = _text_keys({k: v for k, v in state.items() if not k.endswith("position_ids")})
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    family = detect(shapes)
    if family in (None, "mistral3"):
        raise CheckpointError(f"{name}: not a Qwen2.5-VL or Qwen3 language model"
                              + (" (a Mistral 3 one: load it with type flux2)" if family else ""))
    config = config or config_from_shapes(shapes, family)
    dtype = load_dtype(stored_dtype(state))
    state = dequantize(state, dtype)
    if "lm_head.weight" not in state:  # tied output head: the token embeddings
        state["lm_head.weight"] = state[_EMBED]
    what = f"{'Qwen2.5-VL' if family == 'qwen25_vl' else 'Qwen3'} text encoder {name}"
    if family == "qwen25_vl":
        if "visual.patch_embed.proj.weight" not in state:
            raise CheckpointError(f"{what}: the file has no vision tower (visual.*); use the Qwen2.5-VL "
                                  "text-encoder file ComfyUI's Qwen-Image repackage has")
        state = {("model.language_model." + k[len("model."):] if k.startswith("model.") else
                  "model." + k if k.startswith("visual.") else k): v for k, v in state.items()}
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        cls = Qwen3ForCausalLM
    module = build_module(cls, config, state, what, buffers=_rotary_tables)
    exact_keys(state, module.state_dict().keys(), what)
    return family, module.eval()


def _rotary_tables(module) -> None:
    """The rotary frequency tables are computed, not stored: rebuilt on the CPU (the rest is on meta)."""
    for name, sub in list(module.named_modules()):
        table = getattr(sub, "inv_freq", None)
        if table is None or not table.is_meta:
            continue
        fresh = type(sub)(config=sub.config) if hasattr(sub, "config") else type(sub)(table.shape[0] * 2)
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, fresh)


def find_tokenizer(path: Path, vocab_size: int | None = None):
    """Qwen's tokenizer from a folder next to the model file (or in the folder above), else the shipped
    copy; `vocab_size` (the model's token table) must hold every id the tokenizer can give."""
    from transformers import Qwen2Tokenizer

    path = Path(path)
    names = [n.format(stem=path.stem) for n in TOKENIZER_DIRS]
    found = [root / name for root in (path.parent, path.parent.parent) for name in names
             if (root / name / "tokenizer.json").is_file() or (root / name / "vocab.json").is_file()]
    folder = found[0] if found else SHIPPED_TOKENIZER
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder), local_files_only=True)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(f"{path.name}: its token table has {vocab_size} entries, fewer than the Qwen "
                              f"tokenizer in {folder} ({len(tokenizer)}); put this model's own tokenizer files "
                              f"(tokenizer.json or vocab.json + merges.txt, and tokenizer_config.json) in "
                              f"{path.parent / names[1]}/")
    return tokenizer


def refuse_for(paths: list, clip_type: str) -> None:
    """A language-model file given to another CLIP type: say which types take it."""
    from .weights import read_header

    for path in paths:
        if Path(path).suffix.lower() not in (".safetensors", ".sft"):
            continue
        family = detect(read_header(Path(path))[0])
        if family == "mistral3":
            raise CheckpointError(f"{Path(path).name} is a Mistral 3 language model (Flux.2 dev's text encoder): "
                                  f"load it with type flux2, not {clip_type}")
        if family is not None:
            takes = [t for t, (_kind, wants, _role) in CLIP_TYPES.items() if wants == family]
            raise CheckpointError(f"{Path(path).name} is a {'Qwen2.5-VL' if family == 'qwen25_vl' else 'Qwen3'} "
                                  f"language model: load it with type {' or '.join(takes)}, not {clip_type}")


def load_clip(paths: list, clip_type: str, device: str | None = None):
    """CLIPLoader for an LLM text encoder: one file -> a CLIP handle of the type's kind."""
    from .handles import ClipHandle

    kind, wants, role = CLIP_TYPES[clip_type]
    if len(paths) != 1:
        raise CheckpointError(f"type {clip_type} takes one text-encoder file, not {len(paths)}")
    path = Path(paths[0])
    state, meta = read_state_dict(path)
    config = json.loads(meta["genloom.config"]) if "genloom.config" in meta else None
    family, module = build(state, path.stem, config)
    if family != wants:
        names = {"qwen25_vl": "a Qwen2.5-VL", "qwen3": "a Qwen3"}
        raise CheckpointError(f"type {clip_type} takes {names[wants]} text encoder; {path.name} is {names[family]}")
    tokenizer = find_tokenizer(path, module.get_input_embeddings().num_embeddings)
    return ClipHandle(tokenizers=(tokenizer,), text_encoders=(module,), kind=kind, name=path.stem,
                      roles=(role,), device=device)
