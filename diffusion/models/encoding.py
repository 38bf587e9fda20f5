"""Prompt encoding as ComfyUI does it, with the numbers of diffusers' encode_prompt.

Tokens: the prompt is cut into weighted segments (`prompt_weights`), each segment into text and
`embedding:name` pieces; each piece is tokenized on its own into one group of (token, weight) pairs,
an embedding's group holding its vectors. Groups fill windows of 77 positions (start token, 75
tokens, end token, padding); a group that does not fit in what is left of a window moves whole to the
next one when it is shorter than 8 tokens, and is cut at the window's end otherwise (so a plain prompt
is cut every 75 tokens). Every window is encoded in one batch and the windows are joined along the
token axis; the pooled output is the first window's. BREAK is plain text.

Weights: when any token of an encoder's windows has a weight other than 1, the empty prompt's window is
encoded in the same batch and each weighted token becomes `(z - z_empty) * w + z_empty`, position by
position; tokens of weight 1 are left exactly as encoded, and the pooled output is not weighted.
A prompt with no weights and no embeddings encodes exactly as diffusers' pipelines encode it.

Embedding vectors go in through a hook on the encoder's token-embedding layer, at positions whose
token id is the start token's (never the end token, so pooling still finds the end token); a vector
whose width is not the encoder's is dropped with a warning and the window padded at its end.
"""

from __future__ import annotations

from contextlib import contextmanager

from genloom.diffusion.prompt_weights import (EMBEDDING_PREFIX, embedding_reference, embedding_words,
                                              parse_weights)

from .embeddings import EmbeddingLookup
from .lora import patched
from .owner import model_owner

KEEP_WHOLE_BELOW = 8  # tokens: a shorter group moves to the next window instead of being cut
ENCODER_KEYS = {1: ("clip_l",), 2: ("clip_l", "clip_g")}  # embedding file keys per encoder


def _window(tokenizer, encoder) -> int:
    return min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))


def _specials(tokenizer) -> tuple[int, int, int]:
    eos = tokenizer.eos_token_id
    return tokenizer.bos_token_id, eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos


def _final_norm(encoder):
    return getattr(encoder, "text_model", encoder).final_layer_norm


def _groups(tokenizer, text: str, lookup: EmbeddingLookup, key: str, width: int) -> list[list[tuple]]:
    """[(token id or vector, weight), ...] per segment piece, in prompt order."""
    groups = []
    for segment, weight in parse_weights(text):
        for piece in embedding_words(segment):
            if piece.startswith(EMBEDDING_PREFIX):
                name, rest = embedding_reference(piece)
                vectors = lookup.vectors(name, key, width)
                stripped = name.strip(",")
                if vectors is None and len(stripped) < len(name):
                    vectors = lookup.vectors(stripped, key, width)
                    rest = f"{name[len(stripped):]} {rest}"
                if vectors is None:
                    lookup.missing(name)
                else:
                    groups.append([(v, weight) for v in vectors])
                if not rest:
                    continue
                piece = rest
            ids = tokenizer(piece, add_special_tokens=False, truncation=False).input_ids
            groups.append([(t, weight) for t in ids])
    return groups


def token_windows(tokenizer, groups: list[list[tuple]], window: int) -> list[list[tuple]]:
    """Groups laid out in windows of `window` (token, weight) pairs."""
    bos, eos, pad = _specials(tokenizer)
    windows = [[(bos, 1.0)]]
    for group in groups:
        whole = len(group) < KEEP_WHOLE_BELOW
        while group:
            current = windows[-1]
            room = window - 1 - len(current)  # places left before the end token
            if len(group) <= room:
                current.extend(group)
                break
            if whole:
                current.extend([(eos, 1.0)] + [(pad, 1.0)] * room)
            else:
                current.extend(group[:room] + [(eos, 1.0)])
                group = group[room:]
            windows.append([(bos, 1.0)])
    last = windows[-1]
    last.append((eos, 1.0))
    last.extend([(pad, 1.0)] * (window - len(last)))
    return windows


def prompt_windows(tokenizer, encoder, text: str, lookup: EmbeddingLookup, key: str = "clip_l"):
    width = encoder.get_input_embeddings().embedding_dim
    return token_windows(tokenizer, _groups(tokenizer, text, lookup, key, width), _window(tokenizer, encoder))


def _ids_and_vectors(windows, tokenizer, width: int, lookup: EmbeddingLookup):
    """Token ids per window, and (window, position, vector) for the embedding vectors."""
    bos, _eos, pad = _specials(tokenizer)
    ids, vectors = [], []
    for row, window in enumerate(windows):
        line = []
        for token, _weight in window:
            if isinstance(token, int):
                line.append(token)
            elif token.shape[-1] == width:
                vectors.append((row, len(line), token))
                line.append(bos)
            else:
                lookup.warn(f"an embedding vector of width {token.shape[-1]} does not fit a text encoder "
                            f"of width {width}; it is left out")
        ids.append(line + [pad] * (len(window) - len(line)))
    return ids, vectors


@contextmanager
def _vectors_in(encoder, vectors):
    """The token-embedding layer's output takes the given vectors at their (window, position)."""
    if not vectors:
        yield
        return
    import torch

    rows = [r for r, _c, _v in vectors]
    cols = [c for _r, c, _v in vectors]
    stacked = torch.stack([v for _r, _c, v in vectors])

    def put(_module, _args, output):
        output = output.clone()
        output[rows, cols] = stacked.to(output.device, output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(put)
    try:
        yield
    finally:
        handle.remove()


def _weigh(hidden, windows):
    """hidden [n + 1, T, D] (the last row the empty prompt's) -> [n, T, D] with weights applied."""
    import torch

    empty, rows = hidden[-1:], hidden[:-1]
    weights = torch.tensor([[w for _t, w in window] for window in windows], dtype=hidden.dtype)[..., None]
    return torch.where(weights != 1.0, (rows - empty) * weights + empty, rows)


def encode_prompt(clip, text: str, text_2: str):
    """-> (cond [1, T, D] float32 CPU, pooled [1, P] float32 CPU or None)."""
    import torch

    two = len(clip.text_encoders) == 2
    texts = (text, text_2) if two else (text,)
    lookup = EmbeddingLookup()
    pairs = list(zip(clip.tokenizers, clip.text_encoders))
    token_lists = [prompt_windows(tok, enc, t, lookup, key)
                   for (tok, enc), t, key in zip(pairs, texts, ENCODER_KEYS[len(pairs)])]
    n = max(len(t) for t in token_lists)
    empties = [prompt_windows(tok, enc, "", lookup) for tok, enc in pairs]
    for windows, empty in zip(token_lists, empties):
        windows.extend(empty * (n - len(windows)))

    stop = int(clip.stop_at_layer)
    outputs, pooled = [], None
    for idx, ((tokenizer, encoder), windows) in enumerate(zip(pairs, token_lists)):
        weighted = any(w != 1.0 for window in windows for _t, w in window)
        rows = windows + empties[idx] if weighted else windows
        width = encoder.get_input_embeddings().embedding_dim
        toks, vectors = _ids_and_vectors(rows, tokenizer, width, lookup)
        target = "text_encoder" if idx == 0 else "text_encoder_2"
        with torch.no_grad(), model_owner().memory.use(encoder) as enc, patched(enc, clip.patches, target):
            device = next(enc.parameters()).device
            ids = torch.tensor(toks, dtype=torch.long, device=device)
            with _vectors_in(enc, vectors):
                out = enc(ids, output_hidden_states=True)
            if two:
                # SDXL: penultimate layer (one more per CLIPSetLastLayer step), no final norm.
                hidden = out.hidden_states[stop - 1]
                if idx == 1:
                    pooled = out[0][:1].float().cpu()
            else:
                hidden = out[0] if stop == -1 else _final_norm(enc)(out.hidden_states[stop])
                pooled = out[1][:1].float().cpu()
            hidden = hidden.float().cpu()
            if weighted:
                hidden = _weigh(hidden, windows)
            outputs.append(hidden.reshape(1, -1, hidden.shape[-1]))
    return torch.cat(outputs, dim=-1), pooled
