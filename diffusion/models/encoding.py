"""Prompt encoding with the numbers of diffusers' encode_prompt.

Prompts longer than one window are split into 75-token chunks, each wrapped in start/end tokens
and encoded on its own, then joined along the token axis (as ComfyUI does); a prompt that fits
one window gives exactly what the diffusers pipeline gives.
"""

from __future__ import annotations

from .lora import patched
from .owner import model_owner


def _chunks(tokenizer, text: str, window: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    body = window - 2
    pieces = [ids[i:i + body] for i in range(0, len(ids), body)] or [[]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return [[bos] + p + [eos] + [pad] * (body - len(p)) for p in pieces]


def _window(tokenizer, encoder) -> int:
    return min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))


def _final_norm(encoder):
    return getattr(encoder, "text_model", encoder).final_layer_norm


def encode_prompt(clip, text: str, text_2: str):
    """-> (cond [1, T, D] float32 CPU, pooled [1, P] float32 CPU or None)."""
    import torch

    two = len(clip.text_encoders) == 2
    texts = (text, text_2) if two else (text,)
    token_lists = [_chunks(tok, t, _window(tok, enc))
                   for tok, enc, t in zip(clip.tokenizers, clip.text_encoders, texts)]
    n = max(len(t) for t in token_lists)
    for tok, enc, toks in zip(clip.tokenizers, clip.text_encoders, token_lists):
        toks.extend(_chunks(tok, "", _window(tok, enc)) * (n - len(toks)))

    stop = int(clip.stop_at_layer)
    outputs, pooled = [], None
    for idx, (encoder, toks) in enumerate(zip(clip.text_encoders, token_lists)):
        target = "text_encoder" if idx == 0 else "text_encoder_2"
        with torch.no_grad(), model_owner().memory.use(encoder) as enc, patched(enc, clip.patches, target):
            device = next(enc.parameters()).device
            ids = torch.tensor(toks, dtype=torch.long, device=device)
            out = enc(ids, output_hidden_states=True)
            if two:
                # SDXL: penultimate layer (one more per CLIPSetLastLayer step), no final norm.
                hidden = out.hidden_states[stop - 1]
                if idx == 1:
                    pooled = out[0][:1].float().cpu()
            else:
                hidden = out[0] if stop == -1 else _final_norm(enc)(out.hidden_states[stop])
                pooled = out[1][:1].float().cpu()
            outputs.append(hidden.float().cpu().reshape(1, -1, hidden.shape[-1]))
    return torch.cat(outputs, dim=-1), pooled
