"""Merges are weight arithmetic on patched copies (the inputs never change); the save nodes write
single files in the original layout that load back to the same weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def two_sd1(tmp_folders, tmp_path):
    """tiny-sd1 and a second SD1 of the same shapes with other weights, as checkpoints."""
    import tiny

    from genloom.diffusion.models.single_file import save_single_file
    from genloom.nodes.loaders import CheckpointLoaderSimple

    tiny.build_sd(tmp_path / "other", "sd1", seed=1)
    save_single_file(tmp_path / "other", tmp_path / "models" / "checkpoints" / "other-sd1.safetensors")
    a = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    b = CheckpointLoaderSimple().run("other-sd1.safetensors")
    return a, b


def _unet(model) -> dict:
    with model.use("cpu") as unet:
        return {k: v.detach().clone().float() for k, v in unet.state_dict().items()}


def _close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_merge_simple_add_subtract(two_sd1):
    from genloom.nodes.model_merging import ModelMergeAdd, ModelMergeSimple, ModelMergeSubtract

    (m1, _c1, _v1), (m2, _c2, _v2) = two_sd1
    w1, w2 = _unet(m1), _unet(m2)
    (mixed,) = ModelMergeSimple().run(m1, m2, 0.25)
    _close(_unet(mixed), {k: 0.25 * w1[k] + 0.75 * w2[k] for k in w1})
    (added,) = ModelMergeAdd().run(m1, m2)
    _close(_unet(added), {k: w1[k] + w2[k] for k in w1})
    (diff,) = ModelMergeSubtract().run(m1, m2, 2.0)
    _close(_unet(diff), {k: 2.0 * (w1[k] - w2[k]) for k in w1})
    # the inputs are untouched, the copies share the loaded modules
    assert m1.patches == () and mixed.unet is m1.unet
    _close(_unet(m1), w1)
    # merges compose: the second merge reads the first's weights
    (again,) = ModelMergeSimple().run(mixed, m2, 0.5)
    _close(_unet(again), {k: 0.5 * (0.25 * w1[k] + 0.75 * w2[k]) + 0.5 * w2[k] for k in w1})


def test_merge_blocks_by_ldm_block_names(two_sd1):
    from genloom.nodes.model_merging import ModelMergeBlocks

    (m1, _c, _v), (m2, _c2, _v2) = two_sd1
    w1, w2 = _unet(m1), _unet(m2)
    (merged,) = ModelMergeBlocks().run(m1, m2, 0.2, 0.5, 0.9)

    def ratio(key):  # diffusers names of the LDM blocks: input_blocks, middle_block, out*
        if key.startswith(("down_blocks.", "conv_in.")):
            return 0.2
        if key.startswith("mid_block."):
            return 0.5
        if key.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")):
            return 0.9
        return 0.2  # time_embed: no block name matches, the first ratio
    _close(_unet(merged), {k: ratio(k) * w1[k] + (1 - ratio(k)) * w2[k] for k in w1})


def test_clip_merge_simple(two_sd1):
    from genloom.nodes.model_merging import CLIPMergeSimple

    (_m, c1, _v), (_m2, c2, _v2) = two_sd1
    s1 = {k: v.clone() for k, v in c1.text_encoders[0].state_dict().items()}
    s2 = c2.text_encoders[0].state_dict()
    (merged,) = CLIPMergeSimple().run(c1, c2, 0.3)
    from genloom.diffusion.models.saving import text_states

    got = text_states(merged)[0]
    want = {k: (0.3 * s1[k] + 0.7 * s2[k]) if s1[k].is_floating_point() else s1[k]
            for k in got}
    _close({k: v.float() for k, v in got.items()}, {k: v.float() for k, v in want.items()})
    _close(dict(c1.text_encoders[0].state_dict()), s1)  # clip1 untouched
    assert c1.encode("a red cat")[0].shape == merged.encode("a red cat")[0].shape


def test_checkpoint_save_round_trip(two_sd1, tmp_folders, tmp_path):
    from safetensors import safe_open

    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.model_merging import CheckpointSave, CLIPSave, ModelMergeSimple, VAESave

    (m1, c1, v1), (m2, _c2, _v2) = two_sd1
    (merged,) = ModelMergeSimple().run(m1, m2, 0.5)
    CheckpointSave().run(merged, c1, v1, "checkpoints/merged", prompt={"1": {}})
    out = tmp_folders.folders.output_dir / "checkpoints"
    saved = out / "merged_00001_.safetensors"
    with safe_open(str(saved), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # the original (LDM) layout
    assert "first_stage_model.encoder.conv_in.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    assert meta["prompt"] == '{"1": {}}'
    saved.rename(tmp_path / "models" / "checkpoints" / "merged.safetensors")
    m3, c3, v3 = CheckpointLoaderSimple().run("merged.safetensors")
    _close(_unet(m3), _unet(merged))
    _close(dict(v3.vae.state_dict()), dict(v1.vae.state_dict()))
    _close(dict(c3.text_encoders[0].state_dict()), dict(c1.text_encoders[0].state_dict()))
    torch.testing.assert_close(c3.encode("a red cat")[0], c1.encode("a red cat")[0])

    VAESave().run(v1, "vae/mine")
    vae_file = tmp_folders.folders.output_dir / "vae" / "mine_00001_.safetensors"
    with safe_open(str(vae_file), "pt") as f:
        assert "encoder.down.0.block.0.conv1.weight" in set(f.keys())
    vae_file.rename(tmp_path / "models" / "vae" / "mine.safetensors")
    from genloom.nodes.loaders import VAELoader

    (v4,) = VAELoader().run("mine.safetensors")
    _close(dict(v4.vae.state_dict()), dict(v1.vae.state_dict()))

    CLIPSave().run(c1, "clip/te")
    clip_file = tmp_folders.folders.output_dir / "clip" / "te_clip_l_00001_.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(clip_file))
    want = {("text_model." + k if not k.startswith("text_model.") else k): v
            for k, v in c1.text_encoders[0].state_dict().items() if not k.endswith("position_ids")}
    _close(state, want)


def test_sdxl_checkpoint_and_clip_save(tmp_folders, tmp_path):
    from safetensors import safe_open

    from genloom.nodes.loaders import CheckpointLoaderSimple
    from genloom.nodes.model_merging import CheckpointSave, CLIPSave

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sdxl.safetensors")
    CheckpointSave().run(model, clip, vae, "xl")
    out = tmp_folders.folders.output_dir
    with safe_open(str(out / "xl_00001_.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            "conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.label_emb.0.0.weight"} <= keys
    (out / "xl_00001_.safetensors").rename(tmp_path / "models" / "checkpoints" / "xl.safetensors")
    m2, c2, _v2 = CheckpointLoaderSimple().run("xl.safetensors")
    _close(_unet(m2), _unet(model))
    torch.testing.assert_close(c2.encode("a red cat")[1], clip.encode("a red cat")[1])
    CLIPSave().run(clip, "te")
    names = sorted(p.name for p in out.glob("te_*"))
    assert names == ["te_clip_g_00001_.safetensors", "te_clip_l_00001_.safetensors"]
    with safe_open(str(out / "te_clip_g_00001_.safetensors"), "pt") as f:
        assert "text_projection.weight" in set(f.keys())
