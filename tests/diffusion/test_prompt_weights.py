"""Prompt weighting and long prompts, against ComfyUI's rules written out by hand and the arithmetic
`(z - z_empty) * w + z_empty` computed here on the raw text encoders."""

from __future__ import annotations

import pytest

from genloom.diffusion.prompt_weights import embedding_names, embedding_words, parse_weights


@pytest.mark.parametrize("text,expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat) dog", [("a ", 1.0), ("cat", 1.1), (" dog", 1.0)]),
    ("((cat))", [("cat", 1.1 * 1.1)]),
    ("(cat:1.5)", [("cat", 1.5)]),
    ("((cat:1.5))", [("cat", 1.5)]),  # an explicit weight replaces the one around it
    ("(a (b:0.5) c)", [("a ", 1.1), ("b", 0.5), (" c", 1.1)]),
    ("(a (b:0.5) c:2)", [("a ", 2.0), ("b", 0.5), (" c", 2.0)]),
    ("(a:b)", [("a:b", 1.1)]),
    ("(:1.5)", [(":1.5", 1.1)]),  # a colon at the start is text
    ("(a: 2 )", [("a", 2.0)]),
    (r"\(cat\) (dog)", [("(cat) ", 1.0), ("dog", 1.1)]),
    (r"(a \) b)", [("a ) b", 1.1)]),
    ("[cat] BREAK dog", [("[cat] BREAK dog", 1.0)]),
    ("a (cat", [("a ", 1.0), ("(cat", 1.0)]),  # never closed: text
    ("a) (b)", [("a) (b)", 1.0)]),  # a stray ')' ends weighting for the rest
    ("()x", [("x", 1.0)]),
    ("(embedding:foo:1.2) x", [("embedding:foo", 1.2), (" x", 1.0)]),
])
def test_parse_weights_follows_comfyui(text, expected):
    got = parse_weights(text)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)


def test_embedding_words_and_names():
    assert embedding_words("a embedding:foo b\nembedding:bar, c") == ["a", "embedding:foo b", "embedding:bar, c"]
    assert embedding_words("embedding:foo") == ["embedding:foo"]
    assert embedding_words("xembedding:foo") == ["xembedding:foo"]  # only after a space or newline
    assert embedding_names("(embedding:a:1.2) embedding:b, embedding:a") == ["a", "b,", "b"]


def _clip(tiny_models, kind):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / f"tiny-{kind}").clip


def _ids(tok, *words):
    out = []
    for w in words:
        out += tok(w, add_special_tokens=False).input_ids
    return out


def _window(tok, body, pad=None):
    pad = tok.pad_token_id if pad is None else pad
    return [tok.bos_token_id] + body + [tok.eos_token_id] + [pad] * (75 - len(body))


def test_windows_cut_plain_text_every_75_tokens_and_move_short_groups(tiny_models, tmp_folders):
    from genloom.diffusion.models.embeddings import EmbeddingLookup
    from genloom.diffusion.models.encoding import prompt_windows

    clip = _clip(tiny_models, "sd1")
    tok, enc = clip.tokenizers[0], clip.text_encoders[0]
    cat = _ids(tok, "cat")
    assert len(cat) == 1
    look = EmbeddingLookup()
    windows = prompt_windows(tok, enc, " ".join(["cat"] * 100), look)
    assert [[t for t, _ in w] for w in windows] == [_window(tok, cat * 75), _window(tok, cat * 25)]
    # 70 plain tokens, then a weighted group of 6 (< 8): it does not fit the 5 places left, so the
    # first window is closed and padded and the group starts the second one whole.
    text = " ".join(["cat"] * 70) + " (dog red blue white small big:1.2)"
    group = _ids(tok, "dog", "red", "blue", "white", "small", "big")
    windows = prompt_windows(tok, enc, text, look)
    assert [[t for t, _ in w] for w in windows] == [_window(tok, cat * 70), _window(tok, group)]
    assert [w for _, w in windows[1]] == [1.0] + [1.2] * 6 + [1.0] * 70
    # a weighted group of 8 or more is cut where the window ends
    text = " ".join(["cat"] * 70) + " (" + " ".join(["dog"] * 9) + ":0.5)"
    dog = _ids(tok, "dog")
    windows = prompt_windows(tok, enc, text, look)
    assert [[t for t, _ in w] for w in windows] == [_window(tok, cat * 70 + dog * 5), _window(tok, dog * 4)]
    assert [w for _, w in windows[0]][71:77] == [0.5] * 5 + [1.0]
    # BREAK is a word like any other
    windows = prompt_windows(tok, enc, "cat BREAK dog", look)
    assert [[t for t, _ in w] for w in windows] == [_window(tok, _ids(tok, "cat", "break", "dog"))]


def _hidden(enc, ids, stop=-1, xl=False):
    import torch

    with torch.no_grad():
        out = enc(torch.tensor([ids]), output_hidden_states=True)
    hidden = out.hidden_states[stop - 1] if xl else out[0]
    return hidden[0].float(), out[0 if xl else 1][0].float()


def _weighted(z, z_empty, weights):
    out = z.clone()
    for j, w in enumerate(weights):
        if w != 1.0:
            out[j] = (z[j] - z_empty[j]) * w + z_empty[j]
    return out


def test_sd1_weights_against_arithmetic(tiny_models, tmp_folders):
    import torch

    clip = _clip(tiny_models, "sd1")
    tok, enc = clip.tokenizers[0], clip.text_encoders[0]
    cond, pooled = clip.encode(r"a ((red)) (circle:1.5) on \(blue\)")
    body = _ids(tok, "a", "red", "circle", "on", "(blue)")
    ids = _window(tok, body)
    weights = [1.0, 1.0, 1.21, 1.5] + [1.0] * 73
    z, pooled_ref = _hidden(enc, ids)
    z_empty, _ = _hidden(enc, _window(tok, []))
    assert cond.shape == (1, 77, 32)
    assert torch.allclose(cond[0], _weighted(z, z_empty, weights), atol=1e-5)
    assert torch.allclose(pooled[0], pooled_ref, atol=1e-5)  # the pooled output is not weighted
    # the same tokens unweighted encode to z itself
    plain, _ = clip.encode("a red circle on (blue)".replace("(", r"\(").replace(")", r"\)"))
    assert torch.equal(plain[0], z)  # bit for bit: no weight, no change


def test_sdxl_weights_both_encoders_and_pool_the_first_window(tiny_models, tmp_folders):
    import torch

    clip = _clip(tiny_models, "sdxl")
    (tok_l, tok_g), (enc_l, enc_g) = clip.tokenizers, clip.text_encoders
    text_l, text_g = "a (red:0.5) cat", "(big:2) " + " ".join(["dog"] * 80)
    cond, pooled = clip.encode(text_l, text_g)
    assert cond.shape == (1, 154, 32 + 48)
    # CLIP-L: one window of text and one empty window (to match the big encoder's two windows)
    ids_l = _window(tok_l, _ids(tok_l, "a", "red", "cat"))
    empty_l = _window(tok_l, [])
    z, _ = _hidden(enc_l, ids_l, xl=True)
    ze, _ = _hidden(enc_l, empty_l, xl=True)
    ref_l = torch.cat([_weighted(z, ze, [1.0, 1.0, 0.5] + [1.0] * 74), ze])
    # the big encoder: "big" (weight 2) + 80 dogs = 81 tokens, cut after 75
    body = _ids(tok_g, "big") + _ids(tok_g, "dog") * 80
    w1, w2 = _window(tok_g, body[:75]), _window(tok_g, body[75:])
    z1, pooled_ref = _hidden(enc_g, w1, xl=True)
    z2, _ = _hidden(enc_g, w2, xl=True)
    zge, _ = _hidden(enc_g, _window(tok_g, []), xl=True)
    ref_g = torch.cat([_weighted(z1, zge, [1.0, 2.0] + [1.0] * 75), z2])
    assert torch.allclose(cond[0, :, :32], ref_l, atol=1e-5)
    assert torch.allclose(cond[0, :, 32:], ref_g, atol=1e-5)
    assert torch.allclose(pooled[0], pooled_ref, atol=1e-5)


def test_long_prompt_windows_concatenate_and_pool_from_the_first(tiny_models, tmp_folders):
    import torch

    clip = _clip(tiny_models, "sd2")
    tok, enc = clip.tokenizers[0], clip.text_encoders[0]
    words = (["red", "circle", "on", "blue"] * 40)[:150]
    cond, pooled = clip.with_stop_at_layer(-2).encode(" ".join(words))
    body = _ids(tok, *words)
    assert len(body) == 150
    norm = getattr(enc, "text_model", enc).final_layer_norm
    parts, pools = [], []
    for chunk in (body[:75], body[75:]):
        with torch.no_grad():
            out = enc(torch.tensor([_window(tok, chunk)]), output_hidden_states=True)
            parts.append(norm(out.hidden_states[-2])[0])
        pools.append(out[1][0])
    assert cond.shape == (1, 150 + 4, 32)
    assert torch.allclose(cond[0], torch.cat(parts), atol=1e-5)
    assert torch.allclose(pooled[0], pools[0], atol=1e-5)
