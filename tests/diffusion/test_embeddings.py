"""Textual inversion (`embedding:name`): the same conditioning as diffusers' `load_textual_inversion`
on the tiny models, weights on embeddings, files found as ComfyUI finds them, pickles refused."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")


class NotPlainData:  # a pickled instance of this cannot pass torch's weights-only unpickler
    pass


def _clip(tiny_models, kind):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / f"tiny-{kind}").clip


def _pipeline(tiny_models, kind):
    import diffusers

    folder = str(tiny_models / "diffusers" / f"tiny-{kind}")
    if kind == "sdxl":
        return diffusers.StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    return diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                             requires_safety_checker=False)


def _folder(tmp_folders):
    folder = tmp_folders.folders.models_dirs[0] / "embeddings"
    (folder / "sd15").mkdir(parents=True, exist_ok=True)
    return folder


def test_sd1_embeddings_equal_diffusers_load_textual_inversion(tiny_models, tmp_folders):
    from safetensors.torch import save_file

    folder = _folder(tmp_folders)
    gen = torch.Generator().manual_seed(1)
    two, three, one = (torch.randn(n, 32, generator=gen) for n in (2, 3, 1))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": two}, "name": "style", "step": 500},
               folder / "style.pt")  # A1111's layout
    save_file({"emb_params": three}, str(folder / "sd15" / "thing.safetensors"))  # found in a subfolder
    torch.save({"<one>": one[0]}, folder / "single.bin")  # diffusers' learned_embeds layout

    pipe = _pipeline(tiny_models, "sd1")
    pipe.load_textual_inversion(str(folder / "style.pt"), token="stoken")
    pipe.load_textual_inversion(str(folder / "sd15" / "thing.safetensors"), token="ttoken")
    pipe.load_textual_inversion(str(folder / "single.bin"), token="otoken")
    clip = _clip(tiny_models, "sd1")
    for ours, theirs in [
        ("a photo of embedding:style cat", "a photo of stoken cat"),
        ("embedding:style.pt, embedding:thing red\nembedding:single", "stoken , ttoken red otoken"),
        ("embedding:sd15/thing.safetensors dog", "ttoken dog"),
    ]:
        cond, _ = clip.encode(ours)
        with torch.no_grad():
            ref, _ = pipe.encode_prompt(theirs, "cpu", 1, False)
        assert cond.shape == ref.shape == (1, 77, 32)
        assert (cond - ref).abs().max() < 1e-5, ours

    # a weighted embedding: (z - z_empty) * w + z_empty on its two positions only
    cond, _ = clip.encode("(embedding:style:1.3) cat")
    with torch.no_grad():
        z, _ = pipe.encode_prompt("stoken cat", "cpu", 1, False)
        z_empty, _ = pipe.encode_prompt("", "cpu", 1, False)
    ref = z.clone()
    ref[0, 1:3] = (z[0, 1:3] - z_empty[0, 1:3]) * 1.3 + z_empty[0, 1:3]
    assert (cond - ref).abs().max() < 1e-5


def test_sdxl_embedding_uses_clip_l_and_clip_g_like_diffusers(tiny_models, tmp_folders):
    from safetensors.torch import save_file

    folder = _folder(tmp_folders)
    gen = torch.Generator().manual_seed(2)
    state = {"clip_l": torch.randn(2, 32, generator=gen), "clip_g": torch.randn(2, 48, generator=gen)}
    save_file(state, str(folder / "xlstyle.safetensors"))
    pipe = _pipeline(tiny_models, "sdxl")
    pipe.load_textual_inversion(state["clip_l"], token="xtok", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="xtok", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    cond, pooled = _clip(tiny_models, "sdxl").encode("a embedding:xlstyle dog")
    with torch.no_grad():
        ref, _, _, _ = pipe.encode_prompt("a xtok dog", device="cpu", num_images_per_prompt=1,
                                          do_classifier_free_guidance=False)
        # ComfyUI pools at the end token; diffusers' tiny config (eos_token_id 2) would take the largest
        # token id, the new one, so the pooled reference is computed at the end token here.
        ids = pipe.tokenizer_2(pipe.maybe_convert_prompt("a xtok dog", pipe.tokenizer_2), padding="max_length",
                               max_length=77, return_tensors="pt").input_ids
        out = pipe.text_encoder_2(ids, output_hidden_states=True)
        end = int((ids[0] == pipe.tokenizer_2.eos_token_id).nonzero()[0])
        pooled_ref = pipe.text_encoder_2.text_projection(out.last_hidden_state[0, end])
    assert cond.shape == ref.shape == (1, 77, 80)
    assert (cond - ref).abs().max() < 1e-5
    assert (pooled[0] - pooled_ref).abs().max() < 1e-5


def test_unknown_and_unfitting_embeddings_warn_once_and_are_dropped(tiny_models, tmp_folders, caplog):
    from safetensors.torch import save_file

    folder = _folder(tmp_folders)
    save_file({"emb_params": torch.ones(2, 48)}, str(folder / "wide.safetensors"))  # SDXL-G width on SD1
    clip = _clip(tiny_models, "sd1")
    plain, _ = clip.encode("a cat")
    with caplog.at_level(logging.WARNING, logger="genloom.diffusion.models.embeddings"):
        missing, _ = clip.encode("a embedding:nosuch cat embedding:nosuch")
        wide, _ = clip.encode("a embedding:wide cat")
    assert torch.equal(missing, plain) and torch.equal(wide, plain)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("nosuch" in m for m in messages) == 1
    assert sum("width 48" in m for m in messages) == 1
    # a name that would leave the folder is just not found
    from genloom.diffusion.models.embeddings import find_embedding

    assert find_embedding("../checkpoints/x") is None and find_embedding("wide") == folder / "wide.safetensors"


def test_pickled_objects_are_refused(tiny_models, tmp_folders):
    from genloom.diffusion.errors import CheckpointError

    folder = _folder(tmp_folders)
    torch.save({"string_to_param": {"*": torch.ones(1, 32)}, "extra": NotPlainData()}, folder / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        _clip(tiny_models, "sd1").encode("embedding:evil")


def test_embeddings_route_and_node_fingerprint(tiny_models, tmp_folders):
    import asyncio
    import json
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from genloom.nodes.conditioning import CLIPTextEncode, CLIPTextEncodeSDXL
    from genloom.server.system_routes import SystemRoutes

    folder = _folder(tmp_folders)
    before = CLIPTextEncode.fingerprint(text="a (embedding:late:1.1)")
    assert CLIPTextEncode.fingerprint(text="a cat") == ""
    save_file({"emb_params": torch.ones(1, 32)}, str(folder / "sd15" / "late.safetensors"))
    torch.save({"emb_params": torch.ones(1, 32)}, folder / "early.pt")
    assert CLIPTextEncode.fingerprint(text="a (embedding:late:1.1)") != before
    assert CLIPTextEncodeSDXL.fingerprint(text_g="embedding:early", text_l="") != ""

    routes = SystemRoutes(SimpleNamespace(folders=tmp_folders.folders), None, {}, [])
    response = asyncio.run(routes.embeddings(None))
    assert json.loads(response.body) == ["early", "sd15/late"]
