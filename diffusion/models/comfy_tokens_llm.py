"""ComfyUI token windows of the language-model text encoders, as `clip.tokenize` gives them and as
`clip.encode_from_tokens` encodes them when a node pack built or edited them (comfy_objects.py).

Keys and windows (ComfyUI's tokenizers): one window of the whole templated prompt, no start or end
token added by the window, no padding - "qwen25_7b" (Qwen-Image), "qwen3_4b" (Z-Image, Flux.2 Klein,
padded with `<|endoftext|>` to 512), "mistral3_24b" (Flux.2 dev, `<s>` first) - and "umt5xxl" (Wan:
the prompt's tokens and the end token). The LLM tokenizers read `(text:1.2)` as plain text, so their
weights are all 1; UMT5's reads weights.

Encoding (ComfyUI's SDClipModel over these encoders): each window is a batch row; an entry is a token
id, an embedding vector (in its place; a [n, D] tensor takes n places; a vector of another width is
left out and the row padded at its end) or {"type": "embedding", "data": vector}. The attention mask
is ComfyUI's: every position up to the first end token (UMT5) or the first padding token (the LLMs,
that one masked too), leading padding masked; vectors always attended. A pack's weights are applied
as ComfyUI applies them, against the empty prompt's row (`gen_empty_tokens`: the start and end tokens
the model declares, then padding): `(z - z_empty) * w + z_empty` per position - except on Flux.2,
whose rows hold three layers, where ComfyUI's loop takes the weights of the first three tokens to the
three layers (a weight on any other token changes nothing). UMT5's outputs are zero where the mask is.
Then the family's own steps: Qwen-Image cuts its template at the second `<|im_start|>` of the first
window, Flux.2 lays the layers side by side, Wan pads to 512 positions.
"""

from __future__ import annotations

from .llm_encoding import (FLUX2_LAYERS, _template_end, flux2_token_ids, qwen_image_ids, umt5_pairs,
                           z_image_ids)
from .owner import model_owner

KINDS = ("qwen_image", "z_image", "flux2", "wan")
WAN_TOKENS = 512
QWEN3_8B_WIDTH = 4096


def is_llm(clip) -> bool:
    return clip.kind in KINDS


def key(clip) -> str:
    """ComfyUI's token key: the encoder's role, except Flux.2 Klein 9B's Qwen3 8B ("qwen3_8b")."""
    role = clip.roles[0]
    if role == "umt5":
        return "umt5xxl"
    if clip.kind == "flux2" and role == "qwen3_4b" and \
            clip.text_encoders[0].get_input_embeddings().embedding_dim == QWEN3_8B_WIDTH:
        return "qwen3_8b"
    return role


def window(clip, text: str, template: str | None = None) -> list[tuple]:
    """The one window ComfyUI's tokenizer gives `text` (in a pack's `llama_template` if given): with
    the default template, what genloom's own encoding of `text` reads."""
    tokenizer = clip.tokenizers[0]
    if clip.kind == "wan":
        return umt5_pairs(tokenizer, text)
    if clip.kind == "flux2":
        ids = flux2_token_ids(clip, text, template)[0]
    else:
        ids = (qwen_image_ids if clip.kind == "qwen_image" else z_image_ids)(tokenizer, text, template)
    return [(t, 1.0) for t in ids]


def _specials(clip) -> dict:
    """The special tokens ComfyUI's model of this encoder declares (its empty prompt, its mask rule)."""
    tokenizer = clip.tokenizers[0]
    if clip.kind == "wan":
        return {"start": None, "end": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    if clip.roles[0] == "mistral3_24b":  # ComfyUI's ids 1 and 0
        return {"start": tokenizer.convert_tokens_to_ids("<s>"), "end": None,
                "pad": tokenizer.convert_tokens_to_ids("<unk>")}
    return {"start": None, "end": None, "pad": tokenizer.convert_tokens_to_ids("<|endoftext|>")}


def mask_of(tokens: list, specials: dict) -> list[int]:
    """ComfyUI's attention mask of one row (its SDClipModel.process_tokens rule); vectors (non-int
    entries) are always attended and leave the rule's state alone."""
    end, pad = specials["end"], specials["pad"]
    stop = pad if end is None else end
    mask, done, leading = [], False, False
    for index, token in enumerate(tokens):
        if not isinstance(token, int):
            mask.append(1)
            continue
        leading = leading or (index == 0 and token == pad)
        if done or (leading and token == pad):
            mask.append(0)
        else:
            mask.append(1)
            leading = False
        if not done and token == stop and not leading:
            if end is None:
                mask[-1] = 0
            done = True
    return mask


def _entries(window: list, width: int, warn) -> tuple[list, list, int]:
    """(tokens, weights, vectors left out) of one window: ids as ints, vectors of this width as 1-D tensors (a [n, D]
    tensor as n of them), vectors of another width left out (warned; ComfyUI pads the row at its end)."""
    tokens, weights, dropped = [], [], 0
    for entry in window:
        token, weight = entry[0], float(entry[1]) if len(entry) > 1 else 1.0
        if isinstance(token, dict):
            if token.get("type") != "embedding":
                raise ValueError(f"a token entry of type {token.get('type')!r}: genloom encodes token ids "
                                 "and embedding vectors in these windows")
            token = token["data"]
        if getattr(token, "ndim", 0) == 0:
            tokens.append(int(token))
            weights.append(weight)
            continue
        vectors = token.reshape(-1, token.shape[-1])
        if vectors.shape[-1] != width:
            warn(f"an embedding vector of width {vectors.shape[-1]} does not fit a text encoder of width "
                 f"{width}; it is left out")
            dropped += vectors.shape[0]
            continue
        tokens.extend(vectors)
        weights.extend([weight] * vectors.shape[0])
    return tokens, weights, dropped


def _run(clip, rows: list, masks: list, pick, always_mask: bool):
    """pick(encoder, ids, mask) over rows of ids and vectors, as genloom's text path runs the encoder
    (no mask where every position is attended, unless `always_mask`); float32 CPU."""
    import torch

    from .encoding import _vectors_in

    specials = _specials(clip)
    ids = [[t if isinstance(t, int) else specials["pad"] for t in row] for row in rows]
    vectors = [(r, c, t) for r, row in enumerate(rows) for c, t in enumerate(row) if not isinstance(t, int)]
    with torch.no_grad(), model_owner().memory.use(clip.text_encoders[0], clip.device) as enc, \
            _vectors_in(enc.get_encoder() if clip.kind == "wan" else enc, vectors):  # UMT5's stack has its own
        device = next(enc.parameters()).device
        mask = torch.tensor(masks, device=device)
        return pick(enc, torch.tensor(ids, device=device), mask if always_mask or not bool(mask.all()) else None
                    ).float().cpu()


def _picker(clip):
    """(pick, always_mask): what the text path reads of the encoder's output."""
    import torch

    def llm(layers):
        def pick(enc, ids, mask):
            base = getattr(enc.model, "language_model", enc.model)
            out = base(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            return layers(out)
        return pick

    if clip.kind == "qwen_image":
        return llm(lambda out: out.last_hidden_state), False
    if clip.kind == "z_image":
        return llm(lambda out: out.hidden_states[-2]), False
    if clip.kind == "flux2":  # [rows, 3, T, D] as ComfyUI's intermediate layers
        return llm(lambda out: torch.stack([out.hidden_states[i] for i in FLUX2_LAYERS[clip.roles[0]]], dim=1)), True

    def umt5(enc, ids, mask):
        return enc(input_ids=ids, attention_mask=mask).last_hidden_state.masked_fill(mask[..., None] == 0, 0.0)
    return umt5, True


def encode(clip, name: str, windows: list):
    """(cond [1, T, D] float32 CPU, None) of a pack's windows under the key `name` (the module docstring)."""
    import torch

    from .embeddings import EmbeddingLookup

    if not windows:
        raise ValueError(f"the tokens have no {name!r} windows")
    specials = _specials(clip)
    width = clip.text_encoders[0].get_input_embeddings().embedding_dim
    lookup = EmbeddingLookup()
    rows, weights, lengths = [], [], set()
    for win in windows:
        tokens, row_weights, dropped = _entries(win, width, lookup.warn)
        tokens += [specials["pad"]] * dropped
        rows.append(tokens)
        weights.append(row_weights + [1.0] * dropped)
        lengths.add(len(tokens))
    if len(lengths) != 1:
        raise ValueError(f"the {name!r} windows have different lengths ({sorted(lengths)}); ComfyUI encodes "
                         "them as one batch, which takes windows of one length")
    length = lengths.pop()
    if clip.kind == "wan" and length < WAN_TOKENS:  # padded (masked, zeroed) as genloom's text path does
        rows = [row + [specials["pad"]] * (WAN_TOKENS - length) for row in rows]
        weights = [w + [1.0] * (WAN_TOKENS - length) for w in weights]
    masks = [mask_of(row, specials) for row in rows]
    pick, always = _picker(clip)
    hidden = _run(clip, rows, masks, pick, always)
    if any(w != 1.0 for row in weights for w in row):
        hidden = _weighted(clip, hidden, weights, specials, pick, always)
    if clip.kind == "flux2":  # [n, 3, T, D] -> [1, n * T, 3 * D]
        return hidden.permute(0, 2, 1, 3).reshape(1, -1, 3 * hidden.shape[-1]), None
    if clip.kind == "wan":
        hidden = hidden[:, :length].reshape(1, -1, hidden.shape[-1])
        return torch.nn.functional.pad(hidden, (0, 0, 0, max(WAN_TOKENS - hidden.shape[1], 0))), None
    hidden = hidden.reshape(1, -1, hidden.shape[-1])
    if clip.kind == "qwen_image":
        first = [t if isinstance(t, int) else -1 for t in rows[0]]
        hidden = hidden[:, _template_end(clip.tokenizers[0], first, missing=-1):]
    return hidden, None


def _weighted(clip, hidden, weights: list, specials: dict, pick, always: bool):
    """ComfyUI's weighting of `hidden` [n, T, D] (Flux.2: [n, 3, T, D]) against the empty prompt's row."""
    import torch

    from .encoding import _weigh as weigh

    length = len(weights[0])
    empty = [t for t in (specials["start"], specials["end"]) if t is not None]
    empty += [specials["pad"]] * (length - len(empty))
    mask = mask_of(empty, specials)
    # A row of padding alone has no attended position: ComfyUI's finite mask bias then weighs every
    # visible key alike, and every key holds the same value, so it encodes as the unmasked row does.
    z_empty = _run(clip, [empty], [mask if any(mask) else [1] * length], pick, always)
    if clip.kind == "flux2":  # ComfyUI's loop runs over the layer axis with the first tokens' weights
        n, layers = hidden.shape[:2]
        per_layer = [[(None, w[j] if j < len(w) else 1.0) for j in range(layers)] for w in weights]
        stacked = torch.cat([hidden, z_empty]).reshape(n + 1, layers, -1)
        return weigh(stacked, per_layer).reshape(hidden.shape)
    return weigh(torch.cat([hidden, z_empty]), [[(None, w) for w in row] for row in weights])
