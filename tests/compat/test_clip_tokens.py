"""CLIP as packs use it beyond tokenize/encode: tokens a pack edits or builds (weights, token ids,
ComfyUI's word ids) encoded as genloom encodes the equivalent prompt and as the text encoder itself
computes them, and CLIP.load_sd loading weights into a clone (diffusion/models/comfy_objects.py)."""

import pytest

torch = pytest.importorskip("torch")

from references import sd1  # noqa: E402,F401 - a fixture


@pytest.fixture(scope="module")
def sdxl(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / "tiny-sdxl")


def word_id(clip, word, index=0):
    ids = clip.tokenizers[index](word, add_special_tokens=False).input_ids
    assert len(ids) == 1, ids
    return ids[0]


def edited(tokens, key, old, new_id=None, weight=None):
    """The tokens with every `old` token of `key` given another id and/or weight."""
    out = {k: [list(w) for w in v] for k, v in tokens.items()}
    for window in out[key]:
        for i, (t, w) in enumerate(window):
            if t == old:
                window[i] = (old if new_id is None else new_id, w if weight is None else weight)
    return out


def test_edited_weight_and_token_id_encode_as_the_equivalent_prompt(sd1, tmp_folders):
    clip = sd1.clip
    tokens = clip.tokenize("a red circle")
    red, blue = word_id(clip, "red"), word_id(clip, "blue")
    heavy = edited(tokens, "l", red, weight=1.3)
    cond, pooled = clip.encode_from_tokens(heavy, return_pooled=True)
    want, want_pooled = clip.encode("a (red:1.3) circle")
    assert torch.equal(cond, want) and torch.equal(pooled, want_pooled)

    swapped = edited(tokens, "l", red, new_id=blue)
    assert torch.equal(clip.encode_from_tokens(swapped), clip.encode("a blue circle")[0])
    out = clip.encode_from_tokens(heavy, return_dict=True)
    assert set(out) == {"cond", "pooled_output"} and torch.equal(out["cond"], want)
    (entry,) = clip.encode_from_tokens_scheduled(heavy, add_dict={"strength": 0.5})
    assert torch.equal(entry[0], want) and torch.equal(entry[1]["pooled_output"], want_pooled)
    assert entry[1]["strength"] == 0.5


def test_weights_as_the_text_encoder_computes_them(sd1, tmp_folders):
    """The independent side: transformers' CLIPTextModel on the window and on the empty prompt's,
    each weighted position (z - z_empty) * w + z_empty, the others as encoded."""
    clip = sd1.clip
    red = word_id(clip, "red")
    # A pack-built window: ComfyUI's (token, weight, word id) triples, not padded.
    tok = clip.tokenizers[0]
    ids = [tok.bos_token_id] + tok("a red circle", add_special_tokens=False).input_ids + [tok.eos_token_id]
    window = [(t, 0.5 if t == red else 1.0, i) for i, t in enumerate(ids)]
    got = clip.encode_from_tokens({"l": [window]})

    length = len(clip.tokenize("")["l"][0])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    full = ids + [pad] * (length - len(ids))
    empty = [tok.bos_token_id, tok.eos_token_id] + [pad] * (length - 2)
    with torch.no_grad():
        z = clip.text_encoders[0](torch.tensor([full, empty]))[0]
    weights = torch.tensor([0.5 if t == red else 1.0 for t in full])[:, None]
    want = torch.where(weights != 1.0, (z[0] - z[1]) * weights + z[1], z[0])
    assert torch.allclose(got[0], want, atol=1e-5)


def test_sdxl_tokens_edited_in_both_encoders(sdxl, tmp_folders):
    clip = sdxl.clip
    tokens = clip.tokenize("a red circle")
    assert set(tokens) == {"l", "g"}
    heavy = edited(edited(tokens, "l", word_id(clip, "red"), weight=1.3), "g", word_id(clip, "red", 1), weight=1.3)
    cond, pooled = clip.encode_from_tokens(heavy, return_pooled=True)
    want, want_pooled = clip.encode("a (red:1.3) circle")
    assert torch.equal(cond, want) and torch.equal(pooled, want_pooled)
    with pytest.raises(ValueError, match="'g'"):
        clip.encode_from_tokens({"l": tokens["l"]})


def test_load_sd_into_a_clone(sd1, tmp_folders):
    clip = sd1.clip
    encoder = clip.text_encoders[0]
    before = clip.encode("a red circle")[0]
    # ComfyUI's spelling of CLIP-L's weights (transformers' own names may lack "text_model.")
    sd = {k if k.startswith("text_model.") else "text_model." + k: v.clone()
          for k, v in encoder.state_dict().items()}
    sd["text_model.final_layer_norm.bias"] = sd["text_model.final_layer_norm.bias"] + 0.25
    dropped = "text_model.encoder.layers.0.mlp.fc1.bias"
    del sd[dropped]
    sd["not.a.weight"] = torch.zeros(1)
    c = clip.clone()
    missing, unexpected = c.load_sd(sd)
    assert missing == [dropped] and unexpected == ["not.a.weight"]
    # the final layer norm's bias moved every output by exactly 0.25; the shared CLIP is untouched
    assert torch.allclose(c.encode_from_tokens(c.tokenize("a red circle")), before + 0.25, atol=1e-5)
    assert torch.equal(clip.encode("a red circle")[0], before)

    full = {"clip_l.transformer.text_model.final_layer_norm.bias": sd["text_model.final_layer_norm.bias"],
            "clip_g.transformer.text_model.x": torch.zeros(1)}
    c2 = clip.clone()
    result = c2.load_sd(full, full_model=True)
    assert result.unexpected_keys == ["clip_g.transformer.text_model.x"]
    assert "clip_l.transformer.text_model.final_layer_norm.bias" not in result.missing_keys
    assert "clip_l.transformer.text_model.final_layer_norm.weight" in result.missing_keys
    assert torch.allclose(c2.encode_from_tokens(c2.tokenize("a red circle")), before + 0.25, atol=1e-5)
    with pytest.raises(RuntimeError, match="size mismatch"):
        clip.clone().load_sd({"text_model.final_layer_norm.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="clone"):
        clip.load_sd(sd)


def test_load_sd_routes_clip_g_weights_on_sdxl(sdxl, tmp_folders):
    clip = sdxl.clip
    before = clip.encode("a red circle")[0]
    g = clip.text_encoders[1]
    sd = {"text_model.final_layer_norm.bias": dict(g.named_parameters())["text_model.final_layer_norm.bias"] + 1.0,
          "text_model.encoder.layers.30.mlp.fc1.weight": torch.zeros(1)}
    c = clip.clone()
    _missing, unexpected = c.load_sd(sd)
    assert unexpected == ["text_model.encoder.layers.30.mlp.fc1.weight"]  # CLIP-G's marker, a tiny G lacks it
    after = c.encode_from_tokens(c.tokenize("a red circle"))
    width_l = clip.text_encoders[0].config.hidden_size
    # SDXL takes CLIP-G's penultimate layer, before its final norm: the bias moves nothing there
    # (the pooled output moves), while CLIP-L's half is untouched either way
    assert torch.equal(after[..., :width_l], before[..., :width_l])
    _, pooled = c.encode_from_tokens(c.tokenize("a red circle"), return_pooled=True)
    assert not torch.equal(pooled, clip.encode("a red circle")[1])
