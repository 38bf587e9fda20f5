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
from .llm_encoding import encode_qwen_image, encode_z_image
from .lora import patched
from .owner import model_owner

KEEP_WHOLE_BELOW = 8  # tokens: a shorter group moves to the next window instead of being cut
ENCODER_KEYS = {1: ("clip_l",), 2: ("clip_l", "clip_g")}  # embedding file keys per encoder
# (the SDXL refiner's one encoder is CLIP-G: "clip_g", encoded as SDXL's big encoder)
# (split encoders use their role names: clip_l, clip_g, t5xxl)


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
    """Token ids per window, and (window, position, vector) for the embedding vectors (whose
    placeholder id is the start token's; T5, which has none, the padding's)."""
    bos, _eos, pad = _specials(tokenizer)
    bos = pad if bos is None else bos
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

    # T5 in transformers 5 looks its tokens up through encoder.embed_tokens, a module apart from the
    # `shared` one get_input_embeddings() returns (same weight): a hook on `shared` would never fire.
    layer = getattr(getattr(encoder, "encoder", None), "embed_tokens", None) or encoder.get_input_embeddings()
    handle = layer.register_forward_hook(put)
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


def _encode_rows(clip, target: str, tokenizer, encoder, windows, empty, lookup, pick):
    """Encode windows of (token, weight) pairs in one batch (the empty prompt's window added when
    weights need it). `pick(encoder, output)` -> (hidden [n, T, D], pooled [n, P] or None).
    Returns (hidden [1, n*T, D] weighted, pooled [1, P] of the first window or None), float32 CPU."""
    import torch

    weighted = any(w != 1.0 for window in windows for _t, w in window)
    rows = windows + empty if weighted else windows
    width = encoder.get_input_embeddings().embedding_dim
    toks, vectors = _ids_and_vectors(rows, tokenizer, width, lookup)
    where = getattr(clip, "device", None)
    with torch.no_grad(), model_owner().memory.use(encoder, where) as enc, patched(enc, clip.patches, target):
        device = next(enc.parameters()).device
        ids = torch.tensor(toks, dtype=torch.long, device=device)
        with _vectors_in(enc, vectors):
            hidden, pooled = pick(enc, enc(ids, output_hidden_states=True))
        hidden = hidden.float().cpu()
        pooled = None if pooled is None else pooled[:1].float().cpu()
    if weighted:
        hidden = _weigh(hidden, windows)
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled


def encode_prompt(clip, text: str, text_2: str):
    """-> (cond [1, T, D] float32 CPU, pooled [1, P] float32 CPU or None)."""
    if clip.kind in FAMILY_ENCODERS or clip.family_encode is not None:  # one prompt for every encoder
        return encode_texts(clip, {role: text for role in clip.roles})
    two = len(clip.text_encoders) == 2
    refiner = clip.kind == "sdxl_refiner"
    texts = (text, text_2) if two else (text_2 if refiner else text,)
    lookup = EmbeddingLookup()
    pairs = list(zip(clip.tokenizers, clip.text_encoders))
    keys = ("clip_g",) if refiner else ENCODER_KEYS[len(pairs)]
    token_lists = [prompt_windows(tok, enc, t, lookup, key) for (tok, enc), t, key in zip(pairs, texts, keys)]
    return encode_windows(clip, token_lists, lookup)


def encode_windows(clip, token_lists: list, lookup: EmbeddingLookup):
    """SD1/SD2/SDXL: (cond, pooled) of each encoder's windows of (token, weight) pairs (the
    encoder with fewer windows gets empty ones); also the encoding of tokens a plugin edited."""
    import torch

    two = len(clip.text_encoders) == 2
    refiner = clip.kind == "sdxl_refiner"
    pairs = list(zip(clip.tokenizers, clip.text_encoders))
    n = max(len(t) for t in token_lists)
    empties = [prompt_windows(tok, enc, "", lookup) for tok, enc in pairs]
    for windows, empty in zip(token_lists, empties):
        windows.extend(empty * (n - len(windows)))

    stop = int(clip.stop_at_layer)
    outputs, pooled = [], None
    for idx, ((tokenizer, encoder), windows) in enumerate(zip(pairs, token_lists)):
        if two or refiner:  # SDXL: penultimate layer (one more per CLIPSetLastLayer step), no final norm
            def pick(_enc, out, big=idx == 1 or refiner):
                return out.hidden_states[stop - 1], (out[0] if big else None)
        else:
            def pick(enc, out):
                return (out[0] if stop == -1 else _final_norm(enc)(out.hidden_states[stop])), out[1]
        target = "text_encoder" if idx == 0 else "text_encoder_2"
        hidden, row_pooled = _encode_rows(clip, target, tokenizer, encoder, windows, empties[idx], lookup, pick)
        pooled = row_pooled if row_pooled is not None else pooled
        outputs.append(hidden)
    return torch.cat(outputs, dim=-1), pooled


def encode_texts(clip, texts: dict):
    """A family's own encoding with one prompt per encoder role (CLIPTextEncodeSD3's clip_l,
    clip_g, t5xxl ...); a role whose text is None gets no tokens (its empty_padding "none")."""
    if clip.family_encode is not None:
        return clip.family_encode(clip, texts)
    if clip.kind not in FAMILY_ENCODERS:
        raise ValueError(f"a {clip.kind} text encoder takes one prompt (or SDXL's two)")
    return FAMILY_ENCODERS[clip.kind](clip, texts)


# -- families of split text encoders (ClipHandle.roles: clip_l, clip_g, t5xxl) ----------------

# Widths ComfyUI gives an encoder missing from the set (zeros in its place).
STANDARD_WIDTHS = {"clip_l": 768, "clip_g": 1280, "t5xxl": 4096}
T5_MIN_TOKENS = {"sd3": 77, "flux": 256}


def _parts(clip) -> dict:
    return {role: (tok, enc) for role, tok, enc in zip(clip.roles, clip.tokenizers, clip.text_encoders)}


def _width(parts: dict, role: str) -> int:
    if role in parts:
        return int(parts[role][1].get_input_embeddings().embedding_dim)
    return STANDARD_WIDTHS[role]


def t5_windows(tokenizer, groups: list[list[tuple]], min_length: int) -> list[list[tuple]]:
    """T5's one sequence: every token, the end token, padding up to `min_length` (no windows, no
    start token: ComfyUI's T5 tokenizer)."""
    row = [pair for group in groups for pair in group] + [(tokenizer.eos_token_id, 1.0)]
    return [row + [(tokenizer.pad_token_id, 1.0)] * (min_length - len(row))]


def split_windows(clip, texts: dict, lookup) -> dict:
    """{role: windows} of one prompt per role as SD3 and Flux take them (clip.tokenize's tokens):
    CLIP windows of 77, T5's one sequence padded to the family's minimum. A None text is no
    tokens (None); a text for an encoder the CLIP lacks is [] (given: SD3 still builds its CLIP
    part, with zeros for the missing encoder)."""
    parts = _parts(clip)
    out = {}
    for role, text in texts.items():
        if text is None or role not in parts:
            out[role] = None if text is None else []
            continue
        tok, enc = parts[role]
        if role == "t5xxl":
            groups = _groups(tok, text, lookup, role, enc.get_input_embeddings().embedding_dim)
            out[role] = t5_windows(tok, groups, T5_MIN_TOKENS[clip.kind])
        else:
            out[role] = prompt_windows(tok, enc, text, lookup, role)
    return out


def encode_t5(clip, parts: dict, windows: list | None, lookup):
    """T5's last hidden state [1, T, D] of its windows (all of one length); None or []: the end
    token alone (no tokens)."""
    tok, enc = parts["t5xxl"]
    windows = windows or t5_windows(tok, [], 1)
    empty = t5_windows(tok, [], len(windows[0]))
    return _encode_rows(clip, "t5xxl", tok, enc, windows, empty, lookup, lambda _e, out: (out[0], None))[0]


def encode_clips(clip, parts: dict, windows: dict, roles: tuple, lookup):
    """CLIP-L / CLIP-G windows as SD3 and Flux take them: penultimate layer without the final norm
    (one more per CLIPSetLastLayer step, as for SDXL), pooled output unprojected for CLIP-L (loaded
    without projection) and projected for CLIP-G (loaded with it); an encoder with fewer windows
    (None: none) gets empty ones, at least one. -> ({role: hidden [1, T, D]}, {role: pooled [1, P]})
    for the roles present."""
    present = [r for r in roles if r in parts]
    stop = int(clip.stop_at_layer)  # -1 (unset): the penultimate layer; CLIPSetLastLayer -2: one earlier
    empties = {role: prompt_windows(*parts[role], "", lookup) for role in present}
    n = max([1] + [len(windows.get(role) or ()) for role in present])
    hidden, pooled = {}, {}
    for role in present:
        tok, enc = parts[role]
        rows = list(windows.get(role) or ())
        rows.extend(empties[role] * (n - len(rows)))

        def pick(_enc, out):  # CLIPTextModelWithProjection (CLIP-G) gives text_embeds
            projected = getattr(out, "text_embeds", None)
            return out.hidden_states[stop - 1], (out.pooler_output if projected is None else projected)
        hidden[role], pooled[role] = _encode_rows(clip, role, tok, enc, rows, empties[role], lookup, pick)
    return hidden, pooled


def encode_sd3(clip, texts: dict):
    """SD3 from one prompt per role (None: no tokens): see encode_sd3_windows."""
    lookup = EmbeddingLookup()
    return encode_sd3_windows(clip, split_windows(clip, texts, lookup), lookup)


def encode_sd3_windows(clip, windows: dict, lookup):
    """SD3's conditioning as ComfyUI builds it from {role: windows}: [CLIP-L | CLIP-G] (zeros for a
    missing one) padded to T5's width when either has tokens, then T5's 77+ tokens along the token
    axis; pooled = [CLIP-L | CLIP-G] (zeros without CLIP tokens)."""
    import torch

    parts = _parts(clip)
    out = lg = None
    pooled = torch.zeros(1, _width(parts, "clip_l") + _width(parts, "clip_g"))
    if windows.get("clip_l") is not None or windows.get("clip_g") is not None:
        hidden, pools = encode_clips(clip, parts, windows, ("clip_l", "clip_g"), lookup)
        pooled = torch.cat([pools.get(r, torch.zeros(1, _width(parts, r))) for r in ("clip_l", "clip_g")], -1)
        if hidden:
            tokens = next(iter(hidden.values())).shape[1]
            lg = torch.cat([hidden.get(r, torch.zeros(1, tokens, _width(parts, r))) for r in ("clip_l", "clip_g")]
                           if "clip_g" in hidden else [hidden["clip_l"]], dim=-1)
            lg = torch.nn.functional.pad(lg, (0, _width(parts, "t5xxl") - lg.shape[-1]))
            out = lg
    if "t5xxl" in parts:
        t5 = encode_t5(clip, parts, windows.get("t5xxl"), lookup)
        out = t5 if lg is None else torch.cat([lg, t5], dim=-2)
    if out is None:
        out = torch.zeros(1, 77, _width(parts, "t5xxl"))
    return out, pooled


def encode_flux(clip, texts: dict):
    """Flux.1 from one prompt per role (None: no tokens): see encode_flux_windows."""
    lookup = EmbeddingLookup()
    return encode_flux_windows(clip, split_windows(clip, texts, lookup), lookup)


def encode_flux_windows(clip, windows: dict, lookup):
    """Flux.1's conditioning as ComfyUI builds it from {role: windows}: T5's last hidden state over
    256+ tokens; pooled = CLIP-L's pooled output of its first window (CLIP-L's hidden states are
    not used)."""
    parts = _parts(clip)
    _hidden, pools = encode_clips(clip, parts, windows, ("clip_l",), lookup)
    return encode_t5(clip, parts, windows.get("t5xxl"), lookup), pools["clip_l"]


# kind -> encode(clip, {role: text or None}) -> (cond [1, T, D], pooled [1, P])
FAMILY_ENCODERS = {"sd3": encode_sd3, "flux": encode_flux, "qwen_image": encode_qwen_image,
                   "z_image": encode_z_image}
# kind -> encode(clip, {role: windows or None}, lookup): the same from tokens (clip.tokenize's, or a pack's)
WINDOW_ENCODERS = {"sd3": encode_sd3_windows, "flux": encode_flux_windows}
