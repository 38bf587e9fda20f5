"""UMT5-XXL, Wan's text encoder, from the single file users download (CLIPLoader type `wan`).

The file holds transformers' UMT5EncoderModel keys (`shared.weight`, `encoder.block.N.layer...`, a
relative attention bias in every block, which is how it differs from T5) and, in ComfyUI's files, its
SentencePiece vocabulary as the uint8 tensor `spiece_model`; the tokenizer is built from that (no hub).
A file without it whose embeddings cover umt5-xxl's 256,000 pieces gets the shipped copy of umt5-xxl's
SentencePiece model (`diffusion/configs/umt5_tokenizer/`, Apache-2.0); any other is refused by name.

Encoding as ComfyUI and diffusers' WanPipeline do it: the prompt's tokens and the end token, padded to
512 positions that the attention mask leaves out and whose outputs are zeroed. Prompt weights follow
ComfyUI's rule (each token's output moved away from the empty prompt's by its weight).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genloom.diffusion.errors import CheckpointError

from .llm_encoding import umt5_pairs  # CLIP.tokenize gives the same pairs
from .loading import build_module, load_dtype
from .weights import dequantize, exact_keys, stored_dtype

MIN_TOKENS = 512
SHIPPED_SPIECE = Path(__file__).resolve().parents[1] / "configs" / "umt5_tokenizer" / "spiece.model"
SHIPPED_PIECES = 256000  # umt5-xxl's vocabulary; its embedding is padded to 256,384 rows
_BIAS1 = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"


def is_umt5(shapes: dict) -> bool:
    return _BIAS1 in shapes and "encoder.block.0.layer.0.SelfAttention.q.weight" in shapes


def config_from_shapes(shapes: dict) -> dict:
    bias = shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = bias[1]
    vocab = shapes.get("shared.weight", shapes.get("encoder.embed_tokens.weight"))
    layers = len({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    return {"vocab_size": vocab[0], "d_model": vocab[1],
            "d_kv": shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0] // heads,
            "d_ff": shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0], "num_heads": heads,
            "num_layers": layers, "relative_attention_num_buckets": bias[0],
            "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
            "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False, "use_cache": False,
            "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def spm_tokenizer(model: bytes):
    """A fast tokenizer that encodes as the SentencePiece unigram model `model` does, from the model's own
    settings: its pieces and scores, normaliser (the precompiled character map; extra spaces removed only
    where it says so), spaces escaped to "▁", the dummy "▁" prefix, byte fallback for pieces it lacks
    (umt5-xxl's has it) and its user-defined pieces kept whole; pad, end and unknown ids as it declares."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(bytes(model))
    spec, trainer = proto.normalizer_spec, proto.trainer_spec
    core = Tokenizer(models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=trainer.unk_id,
                                    byte_fallback=trainer.byte_fallback))
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:  # spaces only: SentencePiece leaves tabs and newlines alone
        steps += [normalizers.Replace(Regex(r"^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "\u2581"))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("\u2581"))
    core.normalizer = normalizers.Sequence(steps)
    user = sorted((p.piece for p in proto.pieces if p.type == 4), key=len, reverse=True)
    if user:  # SentencePiece never splits or merges its user-defined pieces
        core.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(map(re.escape, user))), behavior="isolated")
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
                                     + ([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []))
    pieces = proto.pieces
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=pieces[trainer.unk_id].piece,
                                   eos_token=pieces[trainer.eos_id].piece, pad_token=pieces[trainer.pad_id].piece,
                                   model_max_length=MIN_TOKENS)


@dataclass(frozen=True, eq=False)
class Umt5:
    module: Any
    tokenizer: Any
    name: str = ""


def from_state(state: dict, name: str) -> Umt5:
    from transformers import UMT5Config, UMT5EncoderModel

    spiece = state.pop("spiece_model", None)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = config_from_shapes(shapes)
    if spiece is not None:
        tokenizer = spm_tokenizer(spiece.numpy().tobytes())
    elif config["vocab_size"] >= SHIPPED_PIECES:
        tokenizer = shipped_tokenizer()
    else:
        raise CheckpointError(f"{name}: this UMT5 file carries no tokenizer (the `spiece_model` tensor ComfyUI's "
                              f"files have) and its {config['vocab_size']} token embeddings are not umt5-xxl's "
                              "vocabulary, the one genloom ships; use the wan UMT5 file from ComfyUI's Wan repackage")
    shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    state = {**state, "shared.weight": shared, "encoder.embed_tokens.weight": shared}
    dtype = load_dtype(stored_dtype(state))
    state = dequantize(state, dtype)
    what = f"UMT5 text encoder {name}"
    module = build_module(UMT5EncoderModel, UMT5Config(**config).to_dict(), state, what)
    exact_keys(state, module.state_dict().keys(), what)
    return Umt5(module.eval(), tokenizer, name)


@functools.lru_cache(maxsize=1)
def shipped_tokenizer():
    """umt5-xxl's own SentencePiece model, shipped for files that carry none (built once: 256,000 pieces)."""
    return spm_tokenizer(SHIPPED_SPIECE.read_bytes())


def encode(umt5: Umt5, text: str, min_length: int = MIN_TOKENS):
    """Wan's conditioning [1, max(512, n + 1), D] float32 CPU: the tokens' last hidden states, zeros
    where the padding is; weighted tokens moved from the empty prompt's outputs by their weights."""
    return _encode(umt5.module, umt5.tokenizer, text, min_length)


def encode_clip(clip, texts: dict):
    """ClipHandle.family_encode of a Wan CLIP: (conditioning, no pooled output)."""
    return _encode(clip.text_encoders[0], clip.tokenizers[0], texts.get("umt5") or "", MIN_TOKENS), None


def load_clip(paths: list, device: str | None = None):
    """CLIPLoader type `wan`: one UMT5 file -> a CLIP handle of kind "wan"."""
    from pathlib import Path

    from .handles import ClipHandle
    from .weights import read_state_dict

    if len(paths) != 1:
        raise CheckpointError(f"type wan takes one UMT5 text encoder file, not {len(paths)}")
    path = Path(paths[0])
    encoder = from_state(read_state_dict(path)[0], path.stem)
    return ClipHandle(tokenizers=(encoder.tokenizer,), text_encoders=(encoder.module,), kind="wan",
                      name=path.stem, roles=("umt5",), device=device, family_encode=encode_clip)


def _encode(module, tok, text: str, min_length: int):
    import torch

    from .owner import model_owner

    pairs = umt5_pairs(tok, text)
    length = max(min_length, len(pairs))
    ids = torch.full((1, length), tok.pad_token_id, dtype=torch.long)
    ids[0, :len(pairs)] = torch.tensor([t for t, _w in pairs])
    mask = torch.zeros(1, length, dtype=torch.long)
    mask[0, :len(pairs)] = 1
    weights = torch.tensor([w for _t, w in pairs])
    with torch.no_grad(), model_owner().memory.use(module) as enc:
        device = next(enc.parameters()).device
        out = enc(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float().cpu()
        if bool((weights != 1.0).any()):
            empty = torch.full_like(ids, tok.pad_token_id)
            empty[0, 0] = tok.eos_token_id
            alone = torch.zeros_like(mask)
            alone[0, 0] = 1
            base = enc(input_ids=empty.to(device), attention_mask=alone.to(device)).last_hidden_state.float().cpu()
            base[:, 1:] = 0.0  # ComfyUI zeroes the empty prompt's outputs past its end token too
            w = weights.reshape(1, -1, 1)
            out[:, :len(pairs)] = base[:, :len(pairs)] + (out[:, :len(pairs)] - base[:, :len(pairs)]) * w
    out[:, len(pairs):] = 0.0
    return out
