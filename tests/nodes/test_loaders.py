"""Loader nodes on tiny SD1/SD2/SDXL-shaped models: diffusers folders, genloom single files, the LDM
key layout checked against diffusers' own converter, and refusal of unsafe files."""

from __future__ import annotations

import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from genloom.diffusion.models import keymaps  # noqa: E402
from genloom.diffusion.models.single_file import (detect_kind, save_single_file, shipped_configs,  # noqa: E402
                                                  split_components)
from genloom.diffusion.models.weights import read_state_dict  # noqa: E402
from genloom.nodes.loaders import CheckpointLoaderSimple, DiffusersLoader, VAELoader  # noqa: E402

KINDS = ["sd1", "sd2", "sdxl"]


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_combos_list_model_files(tmp_folders):
    ckpt = CheckpointLoaderSimple.schema().by_name["ckpt_name"].combo_options()
    assert ckpt == ["tiny-sd1.safetensors", "tiny-sd2.safetensors", "tiny-sdxl.safetensors"]
    assert DiffusersLoader.schema().by_name["model_name"].combo_options() == ["tiny-sd1", "tiny-sd2", "tiny-sdxl"]


@pytest.mark.parametrize("kind", KINDS)
def test_single_file_round_trip_gives_identical_model(tmp_folders, kind):
    model, clip, vae = DiffusersLoader().run(f"tiny-{kind}")
    model2, clip2, vae2 = CheckpointLoaderSimple().run(f"tiny-{kind}.safetensors")
    assert (model2.kind, model2.prediction_type) == (kind, "v_prediction" if kind == "sd2" else "epsilon")
    assert model2.scheduler_config == model.scheduler_config
    _same_weights(model.unet, model2.unet)
    _same_weights(vae.vae, vae2.vae)
    assert len(clip2.text_encoders) == (2 if kind == "sdxl" else 1)
    for a, b in zip(clip.text_encoders, clip2.text_encoders):
        _same_weights(a, b)
    for a, b in zip(clip.tokenizers, clip2.tokenizers):
        assert a.get_vocab() == b.get_vocab() and a.pad_token == b.pad_token
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = vae.decode(latents)
    assert images.shape == (1, 16, 16, 3) and images.dtype == torch.float32
    assert torch.equal(images, vae2.decode(latents))
    assert torch.allclose(vae.encode(images), vae2.encode(images))


def test_loader_shares_modules_until_file_changes(tmp_folders, tiny_models, tmp_path):
    first = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    again = CheckpointLoaderSimple().run("tiny-sd1.safetensors")
    assert again[0].unet is first[0].unet
    import os
    import shutil

    copy = tmp_path / "models" / "checkpoints" / "copy.safetensors"
    shutil.copy(tiny_models / "checkpoints" / "tiny-sd1.safetensors", copy)
    one = CheckpointLoaderSimple().run("copy.safetensors")[0]
    os.utime(copy, ns=(1, 1))
    assert CheckpointLoaderSimple().run("copy.safetensors")[0].unet is not one.unet


@pytest.mark.parametrize("kind", KINDS)
def test_ldm_layout_matches_diffusers_converter(tiny_models, kind):
    """diffusers converts LDM -> diffusers independently: it must read our files back exactly."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file

    folder = tiny_models / "diffusers" / f"tiny-{kind}"
    state, meta = read_state_dict(tiny_models / "checkpoints" / f"tiny-{kind}.safetensors")
    assert meta["genloom.kind"] == kind and detect_kind(state) == kind
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    for part, converted in (("unet", sfu.convert_ldm_unet_checkpoint(state, unet_cfg)),
                            ("vae", sfu.convert_ldm_vae_checkpoint(state, vae_cfg))):
        original = load_file(str(next((folder / part).glob("*.safetensors"))))
        assert converted.keys() == original.keys(), part
        for key in original:
            assert torch.equal(converted[key].reshape(original[key].shape), original[key]), key
    if kind != "sd1":
        from transformers import CLIPTextModelWithProjection

        part, prefix = ("text_encoder", "cond_stage_model.model.") if kind == "sd2" else \
                       ("text_encoder_2", "conditioner.embedders.1.model.")
        original = load_file(str(next((folder / part).glob("*.safetensors"))))
        enc = CLIPTextModelWithProjection.from_pretrained(str(folder / part))
        converted = sfu.convert_open_clip_checkpoint(enc, state, prefix=prefix)
        strip = lambda d: {k.removeprefix("text_model."): v for k, v in d.items()}  # noqa: E731
        converted, original = strip(converted), strip(original)
        for key in original:
            assert torch.equal(converted[key], original[key]), key
    else:
        assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in state


REAL_KEYS = {
    "sd1": ["model.diffusion_model.input_blocks.1.1.proj_in.weight",
            "model.diffusion_model.input_blocks.3.0.op.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "model.diffusion_model.output_blocks.5.2.conv.weight",
            "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
            "model.diffusion_model.out.2.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.encoder.down.0.block.1.conv2.bias",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight"],
    "sd2": ["model.diffusion_model.input_blocks.11.0.out_layers.3.weight",
            "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight",
            "cond_stage_model.model.ln_final.weight", "cond_stage_model.model.positional_embedding"],
    "sdxl": ["model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.label_emb.0.2.bias",
             "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn1.to_q.weight",
             "model.diffusion_model.output_blocks.2.2.conv.weight",
             "model.diffusion_model.output_blocks.5.2.conv.weight",
             "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
             "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
             "conditioner.embedders.1.model.text_projection"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_configs_map_to_the_real_checkpoint_layout(kind):
    """Full-size models, built on the meta device (no memory): our key names are the released ones,
    detection recognises them, and reading them back restores every weight name and shape."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = shipped_configs(kind)
    prefixes = keymaps.PREFIXES[kind]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        texts = {}
        for part in ("text_encoder", "text_encoder_2"):
            if part in configs:
                cls = CLIPTextModelWithProjection if part.endswith("2") else CLIPTextModel
                texts[part] = cls(CLIPTextConfig(**configs[part])).state_dict()
    state = {}
    state.update(keymaps.map_keys(unet.state_dict(), keymaps.unet_map(configs["unet"]), prefixes["unet"], "unet"))
    state.update(keymaps.map_keys(vae.state_dict(), keymaps.vae_map(configs["vae"]), prefixes["vae"], "vae"))
    for part, sd in texts.items():
        state.update(keymaps.text_to_ldm(sd, *prefixes[part]))
    for key in REAL_KEYS[kind]:
        assert key in state, key
    assert detect_kind(state) == kind
    back = split_components(state, kind, configs)
    for name, original in [("unet", unet.state_dict()), ("vae", vae.state_dict())] + list(texts.items()):
        original = {k.removeprefix("text_model."): v for k, v in original.items()
                    if not k.endswith("position_ids")}
        got = {k.removeprefix("text_model."): v for k, v in back[name].items()}
        assert got.keys() == original.keys(), name
        assert all(got[k].shape == original[k].shape for k in got), name


def test_vae_loader_reads_ldm_and_diffusers_layouts(tmp_folders, tiny_models):
    from safetensors.torch import save_file

    state, _ = read_state_dict(tiny_models / "checkpoints" / "tiny-sd1.safetensors")
    ldm = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    folder = tmp_folders.folders.models_dirs[0] / "vae"
    meta = {"genloom.configs": json.dumps({"vae": json.loads(
        (tiny_models / "diffusers" / "tiny-sd1" / "vae" / "config.json").read_text())})}
    save_file(ldm, str(folder / "ldm.safetensors"), metadata=meta)
    vae = VAELoader().run("ldm.safetensors")[0]
    ref = DiffusersLoader().run("tiny-sd1")[2]
    _same_weights(vae.vae, ref.vae)
    assert VAELoader.schema().by_name["vae_name"].combo_options() == ["ldm.safetensors"]


def test_unsafe_names_and_files_are_refused_with_the_input_named(tmp_folders, tmp_path):
    with pytest.raises(ValueError, match="CheckpointLoaderSimple: input 'ckpt_name'.*not allowed"):
        CheckpointLoaderSimple().run("../diffusers/tiny-sd1/unet/diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="input 'ckpt_name': no checkpoints model named"):
        CheckpointLoaderSimple().run("missing.safetensors")
    folder = tmp_folders.folders.models_dirs[0] / "checkpoints"

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(folder / "evil.ckpt", "wb") as f:
        pickle.dump({"state_dict": {"x": Payload()}}, f)
    with pytest.raises(ValueError, match="evil.ckpt.*refuses it") as err:
        CheckpointLoaderSimple().run("evil.ckpt")
    assert "ckpt_name" in str(err.value)
    torch.save({"state_dict": {"model.diffusion_model.x": torch.ones(2)}}, folder / "plain.ckpt")
    state, _ = read_state_dict(folder / "plain.ckpt")
    assert torch.equal(state["model.diffusion_model.x"], torch.ones(2))
    with pytest.raises(ValueError, match="no known text encoder"):
        CheckpointLoaderSimple().run("plain.ckpt")
    torch.save({"foo": torch.ones(1)}, folder / "other.pt")
    with pytest.raises(ValueError, match="not a Stable Diffusion checkpoint"):
        CheckpointLoaderSimple().run("other.pt")


def test_save_single_file_writes_fp16_and_loads_as_fp32_on_cpu(tmp_folders, tiny_models):
    out = tmp_folders.folders.models_dirs[0] / "checkpoints" / "half.safetensors"
    save_single_file(tiny_models / "diffusers" / "tiny-sd1", out, dtype=torch.float16)
    state, _ = read_state_dict(out)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    model = CheckpointLoaderSimple().run("half.safetensors")[0]
    ref = DiffusersLoader().run("tiny-sd1")[0]
    assert next(model.unet.parameters()).dtype == torch.float32
    w, r = model.unet.conv_in.weight, ref.unet.conv_in.weight
    assert torch.equal(w, r.half().float())


def test_checkpoint_without_metadata_uses_detected_kind_and_shipped_configs(tmp_folders, tiny_models, monkeypatch):
    """The path real-world files take: no genloom metadata, kind from key families, configs from
    diffusion/configs (here replaced by the tiny model's, so the tiny file fits them)."""
    import shutil

    from safetensors.torch import save_file

    from genloom.diffusion.models import single_file

    for kind in ("sd2", "sdxl"):
        configs = tmp_folders.folders.models_dirs[0].parent / "configs" / kind
        src = tiny_models / "diffusers" / f"tiny-{kind}"
        for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
            if (src / sub).is_dir():
                shutil.copytree(src / sub, configs / sub, ignore=shutil.ignore_patterns("*.safetensors"))
        state, _ = read_state_dict(tiny_models / "checkpoints" / f"tiny-{kind}.safetensors")
        save_file(state, str(tmp_folders.folders.models_dirs[0] / "checkpoints" / f"bare-{kind}.safetensors"))
    monkeypatch.setattr(single_file, "CONFIGS", configs.parent)
    for kind in ("sd2", "sdxl"):
        model, clip, vae = CheckpointLoaderSimple().run(f"bare-{kind}.safetensors")
        ref_model, ref_clip, ref_vae = DiffusersLoader().run(f"tiny-{kind}")
        assert model.kind == kind
        _same_weights(model.unet, ref_model.unet)
        _same_weights(vae.vae, ref_vae.vae)
        for a, b in zip(clip.text_encoders, ref_clip.text_encoders):
            _same_weights(a, b)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="input 'ckpt_name'.*do not fit its configuration.*save_single_file"):
        CheckpointLoaderSimple().run("bare-sd2.safetensors")  # the real SD2 configs: far bigger


@pytest.mark.parametrize("kind", KINDS)
def test_diffusers_from_single_file_reads_our_files(tiny_models, kind):
    """Other tools get the same model from genloom's single file as from the diffusers folder."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    folder = str(tiny_models / "diffusers" / f"tiny-{kind}")
    ours = cls.from_single_file(str(tiny_models / "checkpoints" / f"tiny-{kind}.safetensors"), config=folder,
                                local_files_only=True)
    ref = cls.from_pretrained(folder, local_files_only=True)
    for part in ("unet", "vae", "text_encoder") + (("text_encoder_2",) if kind == "sdxl" else ()):
        _same_weights(getattr(ours, part), getattr(ref, part))
