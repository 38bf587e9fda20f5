"""Text-encoder files as users download them (CLIPLoader, DualCLIPLoader, TripleCLIPLoader):
recognised by their keys and shapes, built with configs read from the shapes, tokenizers shipped.

Layouts (Hugging Face transformers key names, as ComfyUI's files have them):
  CLIP-L   CLIPTextModel keys, with or without the `text_model.` level; a `text_projection.weight`
           (SD3's files have one) is left out: SD3 and Flux use CLIP-L's pooled output unprojected.
  CLIP-G   CLIPTextModelWithProjection keys (`text_model.*` + `text_projection.weight`).
  T5 XXL   T5EncoderModel keys (`shared.weight`, `encoder.block.N.layer...`); relative attention
           bias in block 0 only (UMT5 has it in every block: not this family).
Which CLIP is which: 31 or more layers or width 1280 is CLIP-G, width 768 CLIP-L; two CLIPs of
other sizes (tiny test models) are told apart by width, the wider being CLIP-G; a lone CLIP of
another size is CLIP-G if it has a text projection, else CLIP-L.

What the weights cannot say is fixed by the family (CLIP-L quick_gelu, CLIP-G gelu, T5 gated-gelu,
attention heads of 64 channels for CLIP), unless the file carries a `genloom.config` (a JSON
transformers config in the safetensors metadata, written by `save_text_encoder`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.diffusion.errors import CheckpointError

from . import llm_encoders
from .loading import CONFIGS, TOKENIZER_FILES, _expected_name, build_module, load_dtype
from .weights import dequantize, exact_keys, read_state_dict, stored_dtype

T5_TOKENIZER = CONFIGS / "t5_tokenizer" / "tokenizer.json"
ROLES = ("clip_l", "clip_g", "t5xxl")
_CLIP_TOKEN = "embeddings.token_embedding.weight"
_T5_Q0 = "encoder.block.0.layer.0.SelfAttention.q.weight"
_IGNORED = re.compile(r"(^|\.)position_ids$|^logit_scale$")
# Other text encoders people put in text_encoders/: named instead of "unknown".
_UMT5_BIAS = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
_ELSEWHERE = {_UMT5_BIAS: "UMT5 (Wan: type wan)",
              "spiece_model": "UMT5 / Gemma", "model.embed_tokens.weight": "a Llama/Qwen/Gemma LLM",
              "embed_tokens.weight": "a Llama/Qwen/Gemma LLM"}


@dataclass(frozen=True, eq=False)
class TextEncoder:
    role: str  # clip_l | clip_g | t5xxl
    module: Any
    name: str = ""


def _clip_keys(shapes: dict) -> dict:
    """CLIP key names normalised to the `text_model.` level (other layouts returned as they are)."""
    if _CLIP_TOKEN not in shapes:
        return shapes
    return {("text_model." + k if k.startswith(("embeddings.", "encoder.", "final_layer_norm."))
             else k): v for k, v in shapes.items()}


def detect_text_encoder(shapes: dict) -> str | None:
    """'clip' (CLIP-L or -G: see `clip_role`), 't5xxl', or None for keys genloom does not know."""
    shapes = _clip_keys(shapes)
    if "text_model." + _CLIP_TOKEN in shapes:
        return "clip"
    if _T5_Q0 in shapes and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in shapes:
        return "t5xxl"
    return None


def _layers(shapes: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in shapes if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def clip_role(shapes: dict) -> str | None:
    """'clip_l' / 'clip_g' where the size says so, None for other sizes."""
    shapes = _clip_keys(shapes)
    width = shapes["text_model." + _CLIP_TOKEN][1]
    if _layers(shapes, r"text_model\.encoder\.layers\.(\d+)\.") >= 31 or width == 1280:
        return "clip_g"
    if width == 768:
        return "clip_l"
    return None


def clip_config(shapes: dict, role: str) -> dict:
    shapes = _clip_keys(shapes)
    vocab, width = shapes["text_model." + _CLIP_TOKEN]
    if width % 64:
        raise CheckpointError(f"a CLIP text encoder of width {width} needs its configuration "
                              "(genloom.config metadata): the attention heads cannot be read from it")
    proj = shapes.get("text_projection.weight")
    return {"architectures": ["CLIPTextModelWithProjection" if proj else "CLIPTextModel"],
            "vocab_size": vocab, "hidden_size": width,
            "intermediate_size": shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": _layers(shapes, r"text_model\.encoder\.layers\.(\d+)\."),
            "num_attention_heads": width // 64,
            "max_position_embeddings": shapes["text_model.embeddings.position_embedding.weight"][0],
            "hidden_act": "gelu" if role == "clip_g" else "quick_gelu",
            "projection_dim": proj[0] if proj else width, "layer_norm_eps": 1e-5,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}


def t5_config(shapes: dict) -> dict:
    bias = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = bias[1]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    ff = shapes["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    vocab = shapes.get("shared.weight", shapes.get("encoder.embed_tokens.weight"))
    return {"architectures": ["T5EncoderModel"], "vocab_size": vocab[0], "d_model": vocab[1],
            "d_kv": shapes[_T5_Q0][0] // heads, "d_ff": ff[0], "num_heads": heads,
            "num_layers": _layers(shapes, r"encoder\.block\.(\d+)\."),
            "relative_attention_num_buckets": bias[0], "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu" if gated else "relu", "layer_norm_epsilon": 1e-6,
            "is_encoder_decoder": False, "use_cache": False, "tie_word_embeddings": False,
            "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def _build(role: str, config: dict, state: dict, name: str) -> TextEncoder:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    if role == "t5xxl":
        cls = T5EncoderModel
        shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
        state = {**state, "shared.weight": shared, "encoder.embed_tokens.weight": shared}
    else:
        arch = (config.get("architectures") or ["CLIPTextModel"])[0]
        cls = CLIPTextModelWithProjection if "Projection" in arch else CLIPTextModel
    what = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5"}[role] + f" text encoder {name}"
    probe = _meta_module(cls, config)
    expected = set(probe.state_dict())
    if role != "t5xxl":
        state = {_expected_name(k, expected): v for k, v in state.items()}
    exact_keys(state, expected, what)
    return TextEncoder(role, build_module(cls, config, state, what), name)


def _meta_module(cls, config: dict):
    import torch

    with torch.device("meta"):
        return cls(cls.config_class(**{k: v for k, v in config.items() if k != "_name_or_path"}))


def file_problem(path: Path) -> str | None:
    """Why the CLIP loaders could not use this file, from its .safetensors header alone; None when
    they can (or when only loading can tell)."""
    from .weights import read_header

    if Path(path).suffix.lower() not in (".safetensors", ".sft"):
        return None
    try:
        shapes, _meta = read_header(Path(path))
    except CheckpointError as exc:
        return str(exc)
    if detect_text_encoder({k: v for k, v in shapes.items() if not _IGNORED.search(k)}) is not None:
        return None
    if llm_encoders.detect(shapes) is not None:  # Qwen2.5-VL / Qwen3 (CLIPLoader qwen_image, lumina2)
        return None
    if _UMT5_BIAS in shapes:  # UMT5 (CLIPLoader wan)
        return None if "spiece_model" in shapes else "a UMT5 file without its tokenizer (the spiece_model tensor)"
    return _unknown(shapes)


def _unknown(shapes: dict) -> str:
    what = next((w for k, w in _ELSEWHERE.items() if k in shapes), None)
    return f"a {what} text encoder, which genloom cannot load yet" if what else \
        "not a CLIP-L, CLIP-G or T5 XXL text encoder"


def text_encoder_from_state(state: dict, name: str, role: str | None = None,
                            config: dict | None = None) -> TextEncoder:
    """One text encoder from its tensors (fp8 dequantised; CLIP role from its size unless given)."""
    state = {k: v for k, v in state.items() if not _IGNORED.search(k)}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    family = detect_text_encoder(shapes)
    if family is None:
        raise CheckpointError(f"{name}: {_unknown(shapes)}")
    if family == "clip":
        role = role or clip_role(shapes) or "clip_l"
        if role == "clip_l" and config is None:  # its pooled output is used unprojected (ComfyUI)
            state.pop("text_projection.weight", None)
            shapes.pop("text_projection.weight", None)
    else:
        role = "t5xxl"
    if config is None:
        config = t5_config(shapes) if role == "t5xxl" else clip_config(shapes, role)
    dtype = load_dtype(stored_dtype(state))
    return _build(role, config, dequantize(state, dtype), name)


def clip_roles(shape_sets: list[dict], names: list[str]) -> list[str | None]:
    """The role of each file (None: not a text encoder genloom knows); CLIPs whose sizes name
    neither (tiny models): of two, the wider is CLIP-G; a lone one is CLIP-G if it has a projection."""
    families = [detect_text_encoder(s) for s in shape_sets]
    roles = [clip_role(s) if f == "clip" else f for s, f in zip(shape_sets, families)]
    unnamed = [i for i, (f, r) in enumerate(zip(families, roles)) if f == "clip" and r is None]
    if len(unnamed) == 2:
        widths = [_clip_keys(shape_sets[i])["text_model." + _CLIP_TOKEN][1] for i in unnamed]
        if widths[0] == widths[1]:
            raise CheckpointError(f"{names[unnamed[0]]} and {names[unnamed[1]]} are text encoders of one "
                                  "size: which is CLIP-L and which CLIP-G cannot be told")
        roles[unnamed[0]], roles[unnamed[1]] = ("clip_l", "clip_g") if widths[0] < widths[1] else ("clip_g", "clip_l")
    roles = [("clip_g" if "text_projection.weight" in shapes else "clip_l") if f == "clip" and r is None else r
             for f, r, shapes in zip(families, roles, shape_sets)]
    for role in set(r for r in roles if r):
        if roles.count(role) > 1:
            raise CheckpointError(f"two {role} text encoders given "
                                  f"({', '.join(n for n, r in zip(names, roles) if r == role)})")
    return roles


# -- CLIP handles from files ---------------------------------------------------------------------

# CLIPLoader/DualCLIPLoader/TripleCLIPLoader `type` -> (CLIP kind, roles it takes, roles it needs).
CLIP_TYPES = {
    "stable_diffusion": ("sd1", ("clip_l",), ("clip_l",)),
    "sdxl": ("sdxl", ("clip_l", "clip_g"), ("clip_l", "clip_g")),
    "sd3": ("sd3", ROLES, ()),
    "flux": ("flux", ("clip_l", "t5xxl"), ("clip_l", "t5xxl")),
}


def clip_from_encoders(encoders: list[TextEncoder], clip_type: str, name: str, device: str | None = None):
    """A CLIP handle of `clip_type` from loaded encoders (roles checked, canonical order); `device`
    pins where they run (None: the run's device)."""
    from .encoding import FAMILY_ENCODERS
    from .handles import ClipHandle

    if clip_type not in CLIP_TYPES:
        raise CheckpointError(f"text encoder type {clip_type!r} is not one genloom can load "
                              f"({', '.join(CLIP_TYPES)})")
    kind, takes, needs = CLIP_TYPES[clip_type]
    if kind not in ("sd1", "sdxl") and kind not in FAMILY_ENCODERS:
        raise CheckpointError(f"text encoder type {clip_type!r} is not available in this genloom yet")
    by_role = {e.role: e for e in encoders}
    wrong = [f"{e.name} ({e.role})" for e in encoders if e.role not in takes]
    if wrong:
        raise CheckpointError(f"type {clip_type} takes {' + '.join(takes)} text encoders, not {', '.join(wrong)}")
    missing = [r for r in needs if r not in by_role]
    if missing:
        raise CheckpointError(f"type {clip_type} needs a {' and a '.join(missing)} text encoder")
    order = [r for r in ROLES if r in by_role]
    roles = tuple(order) if kind not in ("sd1", "sdxl") else ()
    return ClipHandle(tokenizers=tuple(tokenizer_for(r) for r in order),
                      text_encoders=tuple(by_role[r].module for r in order), kind=kind, name=name,
                      roles=roles, device=device)


def load_clip_files(paths: list, clip_type: str, device: str | None = None):
    """CLIPLoader & co.: text-encoder files -> one CLIP handle."""
    paths = [Path(p) for p in paths]
    if clip_type == "flux2":  # Mistral 3 or Qwen3
        from . import flux2_text

        return flux2_text.load_clip(paths, device)
    if clip_type in llm_encoders.CLIP_TYPES:
        return llm_encoders.load_clip(paths, clip_type, device)
    llm_encoders.refuse_for(paths, clip_type)
    if clip_type == "wan":  # UMT5, its tokenizer inside the file
        from . import umt5

        return umt5.load_clip(paths, device)
    read = [read_state_dict(p) for p in paths]
    shape_sets = [{k: tuple(v.shape) for k, v in state.items() if not _IGNORED.search(k)} for state, _m in read]
    roles = clip_roles(shape_sets, [p.name for p in paths])
    encoders = [text_encoder_from_state(state, p.stem, role,
                                        json.loads(meta["genloom.config"]) if "genloom.config" in meta else None)
                for p, (state, meta), role in zip(paths, read, roles)]
    return clip_from_encoders(encoders, clip_type, "+".join(p.stem for p in paths), device)


# -- tokenizers (shipped: diffusion/configs) ------------------------------------------------------

def clip_tokenizer(role: str):
    """CLIP's BPE; CLIP-G pads with '!' as ComfyUI's and diffusers' SDXL/SD3 tokenizers do."""
    from transformers import CLIPTokenizer

    pad = "!" if role == "clip_g" else "<|endoftext|>"
    return CLIPTokenizer(str(TOKENIZER_FILES / "vocab.json"), str(TOKENIZER_FILES / "merges.txt"),
                         pad_token=pad, model_max_length=77)


def t5_tokenizer():
    """The T5 v1.1 SentencePiece vocabulary (Apache-2.0), in tokenizers' JSON format."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(tokenizer_file=str(T5_TOKENIZER), eos_token="</s>", pad_token="<pad>",
                           unk_token="<unk>", extra_ids=0, model_max_length=512)


def tokenizer_for(role: str):
    return t5_tokenizer() if role == "t5xxl" else clip_tokenizer(role)


# -- writing (tests, conversions) ----------------------------------------------------------------

def save_text_encoder(module, path: Path, with_config: bool = True) -> Path:
    """A transformers text encoder as one .safetensors file in the layout users download; its
    config in the metadata when `with_config` (needed for sizes the weights do not pin down)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in module.state_dict().items() if not _IGNORED.search(k)}
    state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, stored once
    meta = {"genloom.config": json.dumps(module.config.to_dict())} if with_config else {}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return Path(path)
