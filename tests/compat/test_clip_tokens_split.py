"""CLIP.encode_from_tokens for the split-encoder families (SD3: "l", "g", "t5xxl"; Flux: "l",
"t5xxl"): tokens as clip.tokenize made them encode as CLIPTextEncode does, tokens a pack edited
(weights, token ids) as genloom encodes the equivalent prompt, and, for the independent side, as
transformers' encoders compute ComfyUI's weighting (z - z_empty) * w + z_empty."""

import pytest

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402
import tiny_split  # noqa: E402

ROLE = {"l": "clip_l", "g": "clip_g", "t5xxl": "t5xxl"}


@pytest.fixture(scope="module")
def sd3_clip():
    from genloom.diffusion.models.text_encoders import TextEncoder, clip_from_encoders

    torch.set_num_threads(1)
    encoders = [TextEncoder("clip_l", tiny_split.clip_l()), TextEncoder("clip_g", tiny_split.clip_g()),
                TextEncoder("t5xxl", tiny_split.t5())]
    return clip_from_encoders(encoders, "sd3", "tiny-sd3")


@pytest.fixture(scope="module")
def flux_clip():
    from genloom.diffusion.models.text_encoders import TextEncoder, clip_from_encoders

    torch.set_num_threads(1)
    _tok, clip_l, _t5tok, t5 = tiny_flux.text_encoders()
    return clip_from_encoders([TextEncoder("clip_l", clip_l), TextEncoder("t5xxl", t5)], "flux", "tiny-flux")


@pytest.fixture
def cpu(tmp_path):
    from genloom.engine import context
    from genloom.engine.folders import Folders

    folders = Folders(models_dirs=[tmp_path / "models"], input_dir=tmp_path / "in",
                      output_dir=tmp_path / "out", temp_dir=tmp_path / "temp")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    yield
    context.reset(token)


def word_id(clip, key, word):
    tok = clip.tokenizers[clip.roles.index(ROLE[key])]
    ids = tok(word, add_special_tokens=False).input_ids
    assert len(ids) == 1, ids
    return ids[0]


def edited(tokens, key, old, new_id=None, weight=None):
    """The tokens (as a plain dict) with every `old` token of `key` given another id and/or weight."""
    out = {k: [list(w) for w in v] for k, v in tokens.items()}
    hits = 0
    for window in out[key]:
        for i, (t, w) in enumerate(window):
            if t == old:
                window[i] = (old if new_id is None else new_id, w if weight is None else weight)
                hits += 1
    assert hits == 1
    return out


def text_encode(clip, text):
    from genloom.nodes.conditioning import CLIPTextEncode

    ((cond, extras),) = CLIPTextEncode().run(text, clip)[0]
    return cond, extras["pooled_output"]


def same(got, want):
    return torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_tokens_encode_as_clip_text_encode_and_edits_as_the_equivalent_prompt(family, sd3_clip, flux_clip, cpu):
    clip = sd3_clip if family == "sd3" else flux_clip
    keys = ("l", "g", "t5xxl") if family == "sd3" else ("l", "t5xxl")
    tokens = clip.tokenize("a red circle")
    assert tuple(tokens) == keys
    t5 = clip.tokenizers[clip.roles.index("t5xxl")]
    (row,) = tokens["t5xxl"]  # ComfyUI's T5 tokens: one sequence, end token, padding to the minimum
    assert len(row) == (77 if family == "sd3" else 256)
    words = t5("a red circle", add_special_tokens=False).input_ids + [t5.eos_token_id]
    assert [t for t, _w in row[:len(words)]] == words
    assert all(t == t5.pad_token_id and w == 1.0 for t, w in row[len(words):])

    plain = text_encode(clip, "a red circle")
    assert same(clip.encode_from_tokens(tokens, return_pooled=True), plain)
    # the same windows as a pack's dict (not genloom's Tokens) go through the window encoding
    assert same(clip.encode_from_tokens({k: [list(w) for w in v] for k, v in tokens.items()}, return_pooled=True),
                plain)

    for key in keys:  # one encoder's token re-weighted / swapped: that encoder's prompt changed alone
        texts = {role: "a red circle" for role in clip.roles}
        red = word_id(clip, key, "red")
        heavy = clip.encode_from_tokens(edited(tokens, key, red, weight=1.3), return_pooled=True)
        assert same(heavy, clip.encode_roles({**texts, ROLE[key]: "a (red:1.3) circle"})), key
        # Flux takes only CLIP-L's pooled output, which weights never change (ComfyUI's too)
        assert same(heavy, plain) == (family == "flux" and key == "l")
        swapped = clip.encode_from_tokens(edited(tokens, key, red, new_id=word_id(clip, key, "blue")),
                                          return_pooled=True)
        assert same(swapped, clip.encode_roles({**texts, ROLE[key]: "a blue circle"})), key

    heavy, blue = tokens, tokens
    for key in keys:
        red = word_id(clip, key, "red")
        heavy = edited(heavy, key, red, weight=1.3)
        blue = edited(blue, key, red, new_id=word_id(clip, key, "blue"))
    assert same(clip.encode_from_tokens(heavy, return_pooled=True), text_encode(clip, "a (red:1.3) circle"))
    assert same(clip.encode_from_tokens(blue, return_pooled=True), text_encode(clip, "a blue circle"))


def test_shapes_and_returns_as_comfyui(sd3_clip, flux_clip, cpu):
    t5_width, pooled_sd3 = tiny_split.T5_WIDTH, tiny_split.CLIP_L + tiny_split.CLIP_G
    for clip, tokens_shape, pooled_shape in ((sd3_clip, (1, 77 + 77, t5_width), (1, pooled_sd3)),
                                             (flux_clip, (1, 256, tiny_flux.TEXT_DIM), (1, tiny_flux.POOLED_DIM))):
        tokens = clip.tokenize("a red circle")
        heavy = edited(tokens, "l", word_id(clip, "l", "red"), weight=1.3)
        cond = clip.encode_from_tokens(heavy)
        assert isinstance(cond, torch.Tensor) and tuple(cond.shape) == tokens_shape
        cond2, pooled = clip.encode_from_tokens(heavy, return_pooled=True)
        assert torch.equal(cond2, cond) and tuple(pooled.shape) == pooled_shape
        out = clip.encode_from_tokens(heavy, return_dict=True)
        assert set(out) == {"cond", "pooled_output"} and torch.equal(out["cond"], cond)
        assert torch.equal(out["pooled_output"], pooled)
        ((scheduled, extras),) = clip.encode_from_tokens_scheduled(heavy)
        assert torch.equal(scheduled, cond) and torch.equal(extras["pooled_output"], pooled)


def test_sd3_empty_and_missing_token_lists(sd3_clip, cpu):
    """ComfyUI's empty list is no tokens for that encoder (CLIPTextEncodeSD3's empty_padding none);
    a key missing for an encoder the CLIP has is an error naming it."""
    clip = sd3_clip
    tokens = clip.tokenize("a red circle")
    no_t5 = {**edited(tokens, "l", word_id(clip, "l", "red"), weight=1.3), "t5xxl": []}
    want = clip.encode_roles({"clip_l": "a (red:1.3) circle", "clip_g": "a red circle", "t5xxl": None})
    assert same(clip.encode_from_tokens(no_t5, return_pooled=True), want)
    no_clips = {"l": [], "g": [], "t5xxl": tokens["t5xxl"]}
    cond, pooled = clip.encode_from_tokens(no_clips, return_pooled=True)
    assert tuple(cond.shape) == (1, 77, tiny_split.T5_WIDTH) and torch.count_nonzero(pooled) == 0
    with pytest.raises(ValueError, match="'t5xxl'"):
        clip.encode_from_tokens({"l": tokens["l"], "g": tokens["g"]})


def test_sd3_clip_layer_on_a_clone_applies_to_edited_tokens(sd3_clip, cpu):
    c = sd3_clip.clone()
    c.clip_layer(-2)
    heavy = edited(c.tokenize("a red circle"), "g", word_id(c, "g", "red"), weight=1.3)
    want = c.handle.encode_roles({"clip_l": "a red circle", "clip_g": "a (red:1.3) circle", "t5xxl": "a red circle"})
    assert same(c.encode_from_tokens(heavy, return_pooled=True), want)
    assert not torch.equal(want[0], sd3_clip.encode_from_tokens(heavy))


def test_weights_as_the_encoders_compute_them(sd3_clip, flux_clip, cpu):
    """The independent side, on transformers' modules: SD3's CLIP-L part is the penultimate hidden
    state (no final norm) of its 77-token window, Flux's conditioning T5's last hidden state of a
    pack-built sequence (ComfyUI's (token, weight, word id) triples, encoded at the length given),
    each weighted position (z - z_empty) * w + z_empty against the empty prompt's row."""
    clip = sd3_clip
    tokens = clip.tokenize("a red circle")
    red = word_id(clip, "l", "red")
    got = clip.encode_from_tokens(edited(tokens, "l", red, weight=0.5))
    tok, enc_l = clip.tokenizers[0], clip.text_encoders[0]
    ids = [t for t, _w in tokens["l"][0]]
    empty = [tok.bos_token_id, tok.eos_token_id] + [tok.pad_token_id] * 75
    with torch.no_grad():
        z = enc_l(torch.tensor([ids, empty]), output_hidden_states=True).hidden_states[-2]
    w = torch.tensor([0.5 if t == red else 1.0 for t in ids])[:, None]
    want_l = torch.where(w != 1.0, (z[0] - z[1]) * w + z[1], z[0])
    assert torch.allclose(got[0, :77, :tiny_split.CLIP_L], want_l, atol=1e-5)
    assert torch.count_nonzero(got[0, :77, tiny_split.CLIP_L + tiny_split.CLIP_G:]) == 0  # padded to T5's width

    t5tok, t5 = flux_clip.tokenizers[1], flux_clip.text_encoders[1]
    words = t5tok("a red circle", add_special_tokens=False).input_ids + [t5tok.eos_token_id]
    t5_red = word_id(flux_clip, "t5xxl", "red")
    window = [(t, 1.7 if t == t5_red else 1.0, i) for i, t in enumerate(words)]
    cond, pooled = flux_clip.encode_from_tokens({"l": flux_clip.tokenize("x")["l"], "t5xxl": [window]},
                                                return_pooled=True)
    with torch.no_grad():
        z = t5(torch.tensor([words, [t5tok.eos_token_id] + [t5tok.pad_token_id] * (len(words) - 1)]))[0]
        want_pooled = flux_clip.text_encoders[0](torch.tensor([[t for t, _w in flux_clip.tokenize("x")["l"][0]]]))[1]
    w = torch.tensor([1.7 if t == t5_red else 1.0 for t in words])[:, None]
    assert tuple(cond.shape) == (1, len(words), tiny_flux.TEXT_DIM)
    assert torch.allclose(cond[0], torch.where(w != 1.0, (z[0] - z[1]) * w + z[1], z[0]), atol=1e-5)
    assert torch.allclose(pooled, want_pooled, atol=1e-5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_an_embedding_vector_in_place_of_a_t5_token(family, sd3_clip, flux_clip, cpu):
    """A pack's vector in a T5 window reaches T5 (transformers' T5 reads its tokens through
    encoder.embed_tokens, not the `shared` table get_input_embeddings() returns)."""
    clip = sd3_clip if family == "sd3" else flux_clip
    t5 = clip.text_encoders[clip.roles.index("t5xxl")]
    t5 = getattr(t5, "model", t5)
    red, blue = word_id(clip, "t5xxl", "red"), word_id(clip, "t5xxl", "blue")
    table = t5.get_input_embeddings().weight.detach().float()
    tokens = clip.tokenize("a red circle")
    as_vector = {k: [[(table[blue] if (k == "t5xxl" and t == red) else t, w) for t, w in window]
                     for window in v] for k, v in tokens.items()}
    got = clip.encode_from_tokens(as_vector, return_pooled=True)
    want = clip.encode_from_tokens(edited(tokens, "t5xxl", red, new_id=blue), return_pooled=True)
    assert not torch.equal(want[0], text_encode(clip, "a red circle")[0])
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.equal(got[1], want[1])
