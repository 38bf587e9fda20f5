"""CLIP.tokenize / encode_from_tokens on the language-model text encoders (Qwen-Image's Qwen2.5-VL,
Z-Image's Qwen3, Flux.2 dev's Mistral 3 and Klein's Qwen3, Wan's UMT5), loaded from the files users
have: ComfyUI's keys and windows; tokens as clip.tokenize made them encode as CLIPTextEncode does;
an edited id, an embedding vector and weights give what transformers' own models compute with
ComfyUI's rules written out here."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")

import flux2_tiny  # noqa: E402
import qwen_tiny  # noqa: E402
from test_clip_tokens_split import cpu  # noqa: E402,F401 - the fixture: a CPU run context

FAMILIES = ["qwen_image", "z_image", "flux2_dev", "flux2_klein", "wan"]
KEYS = {"qwen_image": "qwen25_7b", "z_image": "qwen3_4b", "flux2_dev": "mistral3_24b", "flux2_klein": "qwen3_4b",
        "wan": "umt5xxl"}
PROMPT = "a red circle"
WAN_WORDS = "a red circle on the blue square with green trees".split()


def _spiece(folder) -> bytes:
    lines = [" ".join(WAN_WORDS[i:] + WAN_WORDS[:i]) for i in range(len(WAN_WORDS))] * 5
    (folder / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "m"), vocab_size=30,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return (folder / "m.model").read_bytes()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{family: (CLIP handle loaded from its file, the transformers module it was saved from)}."""
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    from genloom.diffusion.models.text_encoders import load_clip_files

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("text_encoders")
    qwen_tiny.write_tokenizer(root / "qwen25_tokenizer")
    parts = {"qwen_image": qwen_tiny.tiny_qwen25_vl(2), "z_image": qwen_tiny.tiny_qwen3(3),
             "flux2_dev": flux2_tiny.mistral(1), "flux2_klein": flux2_tiny.qwen3(2)}
    qwen_tiny.save_llm(parts["qwen_image"], root / "qwen_image.safetensors")
    qwen_tiny.save_llm(parts["z_image"], root / "z_image.safetensors", lm_head=False)
    flux2_tiny.save_mistral(parts["flux2_dev"], root / "flux2_dev.safetensors")
    qwen_tiny.save_llm(parts["flux2_klein"], root / "flux2_klein.safetensors", lm_head=False)
    torch.manual_seed(4)
    parts["wan"] = UMT5EncoderModel(UMT5Config(vocab_size=30, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                                               feed_forward_proj="gated-gelu",
                                               relative_attention_num_buckets=8)).eval()
    state = {k: v.contiguous() for k, v in parts["wan"].state_dict().items() if k != "encoder.embed_tokens.weight"}
    state["spiece_model"] = torch.tensor(np.frombuffer(_spiece(root), dtype=np.uint8).copy())
    save_file(state, str(root / "wan.safetensors"))
    types = {"qwen_image": "qwen_image", "z_image": "lumina2", "flux2_dev": "flux2", "flux2_klein": "flux2",
             "wan": "wan"}
    return {f: (load_clip_files([root / f"{f}.safetensors"], t), parts[f]) for f, t in types.items()}


def plain(tokens) -> dict:
    """The tokens as a pack passes on a copy: a plain dict of lists."""
    return {k: [list(w) for w in v] for k, v in tokens.items()}


def ids_of(clip, text):
    return clip.tokenizers[0](text, add_special_tokens=False).input_ids


def reference(family, module, ids, mask=None, embeds=None):
    """What each pipeline reads of transformers' model, over one row of ids (or input embeddings)."""
    ids = torch.tensor([ids])
    mask = None if mask is None else torch.tensor([mask])
    inputs = {"input_ids": ids} if embeds is None else {"inputs_embeds": embeds}
    with torch.no_grad():
        if family == "wan":
            out = module(**inputs, attention_mask=mask).last_hidden_state
            return out * mask[..., None]
        base = getattr(module.model, "language_model", module.model)
        states = base(**inputs, attention_mask=mask, output_hidden_states=True).hidden_states
    if family == "qwen_image":
        return states[-1]
    if family == "z_image":
        return states[-2]
    layers = (10, 20, 30) if family == "flux2_dev" else (9, 18, 27)
    return torch.cat([states[i] for i in layers], dim=-1)  # per token: the three layers side by side


def row(clip, family, tokens):
    """The id row and attention mask the reference model gets for `tokens`' one window."""
    ids = [t for t, _w in tokens[KEYS[family]][0]]
    tok = clip.tokenizers[0]
    if family == "flux2_klein":
        real = ids.index(tok.convert_tokens_to_ids("<|endoftext|>"))
        return ids, [1] * real + [0] * (len(ids) - real)
    if family == "wan":
        n = len(ids)
        return ids + [tok.pad_token_id] * (512 - n), [1] * n + [0] * (512 - n)
    return ids, [1] * len(ids) if family == "flux2_dev" else None


def cut(clip, family, ids):
    """Qwen-Image drops its system template: up to the second <|im_start|> and `user\\n` (the pipeline's 34)."""
    if family != "qwen_image":
        return 0
    start = ids_of(clip, "<|im_start|>")[0]
    return [i for i, t in enumerate(ids) if t == start][1] + 1 + len(ids_of(clip, "user\n"))


def test_tokenize_gives_comfyui_keys_and_windows(models):
    for family, (clip, _module) in models.items():
        tokens = clip.tokenize("a (red:1.5) circle")
        assert list(tokens) == [KEYS[family]], family
        (window,) = tokens[KEYS[family]]
        tok = clip.tokenizers[0]
        ids = [t for t, _w in window]
        if family == "wan":  # UMT5's tokenizer reads weights; the end token closes the window, no padding
            assert ids == ids_of(clip, "a ") + ids_of(clip, "red") + ids_of(clip, " circle") + [tok.eos_token_id]
            red = set(ids_of(clip, "red"))
            assert [w for t, w in window] == [1.5 if t in red else 1.0 for t in ids]
            continue
        assert all(w == 1.0 for _t, w in window), family  # the LLM tokenizers read "(red:1.5)" as text
        assert "a (red:1.5) circle" in tok.decode(ids)
        if family == "flux2_dev":
            assert ids[0] == tok.convert_tokens_to_ids("<s>")
        if family == "flux2_klein":
            assert len(ids) == 512 and ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")


@pytest.mark.parametrize("family", FAMILIES)
def test_tokens_encode_as_clip_text_encode(family, models, cpu):
    from genloom.nodes.conditioning import CLIPTextEncode

    clip, _module = models[family]
    ((want, extras),) = CLIPTextEncode().run(PROMPT, clip)[0]
    tokens = clip.tokenize(PROMPT)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(cond, want) and pooled is None and extras.get("pooled_output") is None
    assert torch.equal(clip.encode_from_tokens(plain(tokens)), want)  # a copy: through the windows
    ((scheduled, extra),) = clip.encode_from_tokens_scheduled(plain(tokens))
    assert torch.equal(scheduled, want) and extra == {"pooled_output": None}


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edited_id_encodes_as_the_model_computes_it(family, models, cpu):
    clip, module = models[family]
    tokens = plain(clip.tokenize(PROMPT))
    window = tokens[KEYS[family]][0]
    red, blue = ids_of(clip, " red")[-1], ids_of(clip, " blue")[-1]
    at = [i for i, (t, _w) in enumerate(window) if t == red]
    assert len(at) == 1 and red != blue
    window[at[0]] = (blue, 1.0)
    ids, mask = row(clip, family, tokens)
    want = reference(family, module, ids, mask)[:, cut(clip, family, ids):]
    got = clip.encode_from_tokens(tokens)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, clip.encode_from_tokens(clip.tokenize(PROMPT)), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_embedding_vector_takes_a_tokens_place(family, models, cpu):
    clip, module = models[family]
    tokens = plain(clip.tokenize(PROMPT))
    window = tokens[KEYS[family]][0]
    red = ids_of(clip, " red")[-1]
    at = next(i for i, (t, _w) in enumerate(window) if t == red)
    table = module.get_input_embeddings().weight.detach()
    own = [list(w) for w in window]
    own[at] = (table[red].clone(), 1.0)  # the token's own vector: the same conditioning
    same = clip.encode_from_tokens({KEYS[family]: [own]})
    assert torch.allclose(same, clip.encode_from_tokens(clip.tokenize(PROMPT)), atol=1e-5)
    vector = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(7))
    window[at] = ({"type": "embedding", "data": vector}, 1.0)
    ids, mask = row(clip, family, {KEYS[family]: [[(red if i == at else t, w) for i, (t, w) in enumerate(window)]]})
    embeds = table[torch.tensor(ids)].clone()[None]
    embeds[0, at] = vector
    want = reference(family, module, ids, mask, embeds)[:, cut(clip, family, ids):]
    assert torch.allclose(clip.encode_from_tokens(tokens), want, atol=1e-5)


def test_a_vector_of_another_width_is_left_out_and_the_row_padded(models, cpu):
    clip, module = models["z_image"]
    tokens = plain(clip.tokenize(PROMPT))
    window = tokens["qwen3_4b"][0]
    at = next(i for i, (t, _w) in enumerate(window) if t == ids_of(clip, " red")[-1])
    pad = clip.tokenizers[0].convert_tokens_to_ids("<|endoftext|>")
    ids = [t for i, (t, _w) in enumerate(window) if i != at] + [pad]
    window[at] = (torch.ones(7), 1.0)
    want = reference("z_image", module, ids, [1] * (len(ids) - 1) + [0])  # the padding at the end is masked
    assert torch.allclose(clip.encode_from_tokens(tokens), want, atol=1e-5)


def _empty_row(clip, family, length):
    """ComfyUI's empty prompt of `length` positions (gen_empty_tokens) and the mask its rule gives."""
    tok = clip.tokenizers[0]
    if family == "wan":  # end token, padding: only the end token attended, the rest zeroed
        return [tok.eos_token_id] + [tok.pad_token_id] * (length - 1), [1] + [0] * (length - 1)
    if family == "flux2_dev":  # ComfyUI's Mistral: start 1, padding 0 (masked)
        return [1] + [0] * (length - 1), [1] + [0] * (length - 1)
    # padding alone: every position masked, which with ComfyUI's finite bias is the unmasked row
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    return [pad] * length, None if family != "flux2_klein" else [1] * length


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_follow_comfyuis_rule(family, models, cpu):
    clip, module = models[family]
    tokens = plain(clip.tokenize(PROMPT))
    window = tokens[KEYS[family]][0]
    red = ids_of(clip, " red")[-1] if family != "wan" else ids_of(clip, "red")[-1]
    at = next(i for i, (t, _w) in enumerate(window) if t == red)
    ids, mask = row(clip, family, tokens)
    z = reference(family, module, ids, mask)
    empty, empty_mask = _empty_row(clip, family, len(ids))
    z_empty = reference(family, module, empty, empty_mask)
    if family.startswith("flux2"):
        # ComfyUI's loop over a Flux.2 row runs over its three layers: token j's weight moves layer j
        window[1] = (window[1][0], 1.5)
        width = z.shape[-1] // 3
        want = z.clone()
        want[..., width:2 * width] = (z - z_empty)[..., width:2 * width] * 1.5 + z_empty[..., width:2 * width]
        assert torch.allclose(clip.encode_from_tokens(tokens), want, atol=1e-5)
        later = plain(clip.tokenize(PROMPT))
        later[KEYS[family]][0][at] = (red, 1.5)  # any later token's weight: nothing moves
        assert torch.allclose(clip.encode_from_tokens(later), z, atol=1e-5)
        return
    window[at] = (red, 1.5)
    want = z.clone()
    want[:, at] = (z[:, at] - z_empty[:, at]) * 1.5 + z_empty[:, at]
    got = clip.encode_from_tokens(tokens)
    assert torch.allclose(got, want[:, cut(clip, family, ids):], atol=1e-5)
    if family == "wan":  # past the end token the empty row is zero: the output is simply scaled
        assert torch.allclose(got[:, at], z[:, at] * 1.5, atol=1e-5)
        ((text_cond, _),) = clip.encode_from_tokens_scheduled(clip.tokenize("a (red:1.5) circle"))
        assert torch.allclose(text_cond, clip.encode_from_tokens(plain(clip.tokenize("a (red:1.5) circle"))),
                              atol=1e-5)


def test_a_packs_llama_template_is_encoded_through_the_windows(models, cpu):
    clip, module = models["qwen_image"]
    template = "<|im_start|>user\n{}<|im_end|>\n"
    tokens = clip.tokenize(PROMPT, llama_template=template)
    ids = [t for t, _w in tokens["qwen25_7b"][0]]
    assert ids == ids_of(clip, template.format(PROMPT))
    keep = 1 + len(ids_of(clip, "user\n"))  # one <|im_start|>: cut past it and `user\n`
    want = reference("qwen_image", module, ids)[:, keep:]
    assert torch.allclose(clip.encode_from_tokens(tokens), want, atol=1e-5)


def test_klein_9bs_qwen3_8b_has_comfyuis_key(models):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from genloom.diffusion.models.handles import ClipHandle

    klein = models["flux2_klein"][0]
    wide = Qwen3ForCausalLM(Qwen3Config(vocab_size=416, hidden_size=4096, intermediate_size=8, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    clip = ClipHandle(tokenizers=klein.tokenizers, text_encoders=(wide,), kind="flux2", roles=("qwen3_4b",))
    assert list(clip.tokenize(PROMPT)) == ["qwen3_8b"] and list(klein.tokenize(PROMPT)) == ["qwen3_4b"]


def test_bad_windows_are_named(models, cpu):
    clip, _module = models["qwen_image"]
    with pytest.raises(ValueError, match="qwen25_7b"):
        clip.encode_from_tokens({"l": [[(1, 1.0)]]})
    with pytest.raises(ValueError, match="different lengths"):
        clip.encode_from_tokens({"qwen25_7b": [[(1, 1.0)], [(1, 1.0), (2, 1.0)]]})
    with pytest.raises(ValueError, match="'image'"):
        clip.encode_from_tokens({"qwen25_7b": [[({"type": "image", "data": None}, 1.0)]]})
