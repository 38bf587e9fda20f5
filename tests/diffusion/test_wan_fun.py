"""Wan Fun models (InP, Control, Wan 2.2 Fun Control's channel order) and chained WanVaceToVideo nodes,
on tiny random transformers saved in the original layout and loaded by UNETLoader's path.

References: Fun InP is WanImageToVideoPipeline's first-last-frame conditioning given the start image's
CLIP-vision tokens only (what WanFunInpaintToVideo hands on); diffusers has no Fun Control pipeline, so
those runs are checked against a sampling loop written here around diffusers' transformer and
scheduler, with the concatenated channels built from diffusers' VAE by hand. Chained VACE controls are
checked against WanVACEPipeline (two identical controls of strengths a and b are one of strength a + b)
and, for two different controls, against diffusers' transformer with the second control's hints,
taken from a diffusers run of its own, added after the hinted blocks (ComfyUI's sum)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

from test_wan import FRAMES, SIZE, _conds, _embeds, _loaded, _tiny_clip_vision, _VisionOutput, wan  # noqa: E402,F401

from genloom.diffusion.errors import SamplingError  # noqa: E402
from genloom.diffusion.models.families import load_diffusion_model  # noqa: E402
from genloom.diffusion.models.families import wan as wan_family  # noqa: E402
from genloom.nodes.ksampler import KSampler  # noqa: E402

CELLS = SIZE // 8


def _transformer(seed, in_channels, **extra):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                 in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256,
                                 num_layers=2, rope_max_seq_len=64, **extra).eval()


def _saved(transformer, path):
    wan_family.save_original(transformer, path, "model.diffusion_model.")
    return load_diffusion_model(path)


def _tokens(image):
    vision, processor = _tiny_clip_vision()
    with torch.no_grad():
        return vision(**processor(images=image.permute(0, 3, 1, 2), return_tensors="pt"),
                      output_hidden_states=True).hidden_states[-2]


def _model_space(wan, frames):
    """diffusers' VAE latent of IMAGE frames [T, H, W, 3], normalised as the Wan pipelines do."""
    config = wan["vae"].config
    mean = torch.tensor(config.latents_mean).reshape(1, 16, 1, 1, 1)
    std = torch.tensor(config.latents_std).reshape(1, 16, 1, 1, 1)
    with torch.no_grad():
        latent = wan["vae"].encode(frames.movedim(-1, 0)[None] * 2 - 1).latent_dist.mode()
    return (latent - mean) / std, mean, std


def _euler_cfg(transformer, concat, pos, neg, seed, steps, cfg, **kwargs):
    """The reference loop: diffusers' flow-matching Euler (shift 8) with CFG, the condition channels
    concatenated to the latent at every step; noise from the seed as ComfyUI and the pipelines draw it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=8.0)
    sched.set_timesteps(steps)
    latents = torch.randn((1, 16, 2, CELLS, CELLS), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in sched.timesteps:
            x = torch.cat([latents, concat], dim=1)
            cond, uncond = (transformer(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=e,
                                        return_dict=False, **kwargs)[0] for e in (pos, neg))
            latents = sched.step(uncond + cfg * (cond - uncond), t, latents, return_dict=False)[0]
    return latents


def test_fun_inpaint_equals_the_first_last_frame_pipeline(wan, tmp_path, tmp_folders):
    """WanFunInpaintToVideo on a Fun InP model (36 input channels, CLIP-vision K/V, no learned image
    positions): start and end frames with their mask, the start image's CLIP-vision tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    from genloom.nodes.wan import WanFunInpaintToVideo

    inp = _transformer(31, 36, image_dim=24, added_kv_proj_dim=256)
    model = _saved(inp, tmp_path / "wan2.1_fun_inp_1.3B.safetensors")
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a cat walking", "")
    gen = torch.Generator().manual_seed(12)
    first, last = torch.rand(1, SIZE, SIZE, 3, generator=gen), torch.rand(1, SIZE, SIZE, 3, generator=gen)
    tokens = _tokens(first)
    pos, neg, latent = WanFunInpaintToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1,
                                                  clip_vision_output=_VisionOutput(tokens), start_image=first,
                                                  end_image=last)
    assert pos[0][1]["concat_mask"][0, :, :, 0, 0].tolist() == [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert pos[0][1]["clip_vision_output"].penultimate_hidden_states.shape == (1, 17, 24)
    (out,) = KSampler().run(model, 29, 3, 2.0, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan["vae"], transformer=inp,
                                   image_encoder=None, image_processor=None,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))
    pipe.encode_image = lambda _images, device=None: tokens  # the start image's tokens only, as the node
    ref = pipe(image=first.permute(0, 3, 1, 2), last_image=last.permute(0, 3, 1, 2),
               prompt_embeds=_embeds(wan, "a cat walking"), negative_prompt_embeds=_embeds(wan, ""),
               height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3, guidance_scale=2.0,
               generator=torch.Generator("cpu").manual_seed(29), output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_fun_control_concatenates_control_then_start_latents(wan, tmp_path, tmp_folders):
    """Wan 2.1 Fun Control (48 input channels): the control video's latent, then the start image's (its
    own frames only, the rest zero in model space), no mask; sampled like the reference loop."""
    from genloom.nodes.wan import WanFunControlToVideo

    control = _transformer(32, 48, image_dim=24, added_kv_proj_dim=256)
    model = _saved(control, tmp_path / "wan2.1_fun_control_1.3B.safetensors")
    assert model.unet.config.in_channels == 48
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a dog running", "a cat")
    gen = torch.Generator().manual_seed(13)
    video, start = torch.rand(FRAMES, SIZE, SIZE, 3, generator=gen), torch.rand(1, SIZE, SIZE, 3, generator=gen)
    tokens = _tokens(start)
    pos, neg, latent = WanFunControlToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1,
                                                  clip_vision_output=_VisionOutput(tokens), start_image=start,
                                                  control_video=video)
    assert "concat_mask" not in pos[0][1] and pos[0][1]["concat_latent_image"].shape == (1, 32, 2, CELLS, CELLS)
    (out,) = KSampler().run(model, 37, 3, 3.0, "euler", "normal", pos, neg, latent)
    controlled, mean, std = _model_space(wan, video)
    started = torch.zeros_like(controlled)
    started[:, :, :1] = _model_space(wan, start)[0]
    ref = _euler_cfg(control, torch.cat([controlled, started], dim=1), _embeds(wan, "a dog running"),
                     _embeds(wan, "a cat"), 37, 3, 3.0, encoder_hidden_states_image=tokens)
    assert (out["samples"] - (ref * std + mean)).abs().max() < 1e-4


def test_wan22_fun_control_puts_the_mask_between_control_and_start(wan, tmp_path, tmp_folders):
    """Wan22FunControlToVideo (52 input channels): control latent, four mask channels (nothing given:
    1 - mask is zero), then the start latent's 16 (zero in model space), as concat_mask_index 16 says."""
    from genloom.nodes.wan import Wan22FunControlToVideo

    control = _transformer(33, 52)
    model = _saved(control, tmp_path / "wan2.2_fun_control_high_noise_14B.safetensors")
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a red circle", "")
    video = torch.rand(FRAMES, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(14))
    pos, neg, latent = Wan22FunControlToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1, control_video=video)
    extra = pos[0][1]
    assert extra["concat_mask_index"] == 16 and extra["concat_mask"].shape == (1, 4, 2, CELLS, CELLS)
    concat = model.cond_extras({**extra, "latent_image": latent["samples"]}, SIZE, SIZE)["concat"]
    controlled, mean, std = _model_space(wan, video)
    assert concat.shape == (1, 36, 2, CELLS, CELLS)
    assert torch.allclose(concat[:, :16], controlled, atol=1e-5) and not concat[:, 16:].any()
    (out,) = KSampler().run(model, 41, 2, 2.5, "euler", "normal", pos, neg, latent)
    ref = _euler_cfg(control, torch.cat([controlled, torch.zeros(1, 20, 2, CELLS, CELLS)], dim=1),
                     _embeds(wan, "a red circle"), _embeds(wan, ""), 41, 2, 2.5)
    assert (out["samples"] - (ref * std + mean)).abs().max() < 1e-4


def test_wan22_fun_reference_image_is_a_frame_of_tokens_ahead(wan, tmp_path, tmp_folders):
    """Wan 2.2 Fun Control's `ref_conv` (ComfyUI's reference_latent): the reference latent's tokens ahead
    of the video's, one rotary frame more, their outputs dropped. Reference: diffusers' transformer on a
    video one frame longer whose first frame embeds to the same tokens (ref_conv here is the patch
    embedding's first 16 input channels), that frame's output cut off."""
    from safetensors.torch import save_file

    from genloom.nodes.wan import Wan22FunControlToVideo

    control = _transformer(36, 52)
    state = wan_family.to_original(control.state_dict())
    embed = control.patch_embedding
    state.update({"ref_conv.weight": embed.weight[:, :16, 0].clone(), "ref_conv.bias": embed.bias.clone()})
    path = tmp_path / "wan2.2_fun_control_low_noise_14B.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in state.items()}, str(path))
    model = load_diffusion_model(path)
    assert tuple(model.unet.ref_conv.weight.shape) == (256, 16, 2, 2)
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a cat walking", "a dog")
    gen = torch.Generator().manual_seed(15)
    video, ref_image = torch.rand(FRAMES, SIZE, SIZE, 3, generator=gen), torch.rand(1, SIZE, SIZE, 3, generator=gen)
    pos, neg, latent = Wan22FunControlToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1, ref_image=ref_image,
                                                    control_video=video)
    assert len(pos[0][1]["reference_latents"]) == 1 and len(neg[0][1]["reference_latents"]) == 1
    (out,) = KSampler().run(model, 47, 2, 2.5, "euler", "normal", pos, neg, latent)
    controlled, mean, std = _model_space(wan, video)
    first = torch.cat([_model_space(wan, ref_image)[0], torch.zeros(1, 36, 1, CELLS, CELLS)], dim=1)

    def one_frame_longer(hidden_states, **kwargs):
        return (control(hidden_states=torch.cat([first, hidden_states], dim=2), **kwargs)[0][:, :, 1:],)

    ref = _euler_cfg(one_frame_longer, torch.cat([controlled, torch.zeros(1, 20, 2, CELLS, CELLS)], dim=1),
                     _embeds(wan, "a cat walking"), _embeds(wan, "a dog"), 47, 2, 2.5)
    assert (out["samples"] - (ref * std + mean)).abs().max() < 1e-4


def test_concat_channels_follow_comfyui_rule(wan, tmp_path, tmp_folders):
    """No conditioning on a model with extra channels: zeros (ComfyUI's concat_cond); a 32-channel Fun
    Control conditioning on an image-to-video model: its first 16 channels and the noise mask's
    1 - mask; a conditioning too narrow for the model: a clear error."""
    model = _saved(_transformer(34, 36), tmp_path / "wan_i2v.safetensors")
    latent = torch.zeros(1, 16, 2, CELLS, CELLS)
    assert not model.cond_extras({"latent_image": latent}, SIZE, SIZE)["concat"].any()
    given = torch.randn(1, 32, 2, CELLS, CELLS, generator=torch.Generator().manual_seed(2))
    noise_mask = torch.ones(1, 1, 2, CELLS, CELLS)
    noise_mask[:, :, :1] = 0.25
    concat = model.cond_extras({"latent_image": latent, "concat_latent_image": given, "denoise_mask": noise_mask},
                               SIZE, SIZE)["concat"]
    mean = torch.tensor(wan_family.WAN21_MEAN).reshape(1, 16, 1, 1, 1)
    std = torch.tensor(wan_family.WAN21_STD).reshape(1, 16, 1, 1, 1)
    assert torch.allclose(concat[:, 4:], (given[:, :16] - mean) / std, atol=1e-6)
    assert concat[0, :4, 0].eq(0.75).all() and concat[0, :4, 1].eq(0.0).all()
    fun48 = _saved(_transformer(35, 48), tmp_path / "wan_fun48.safetensors")
    with pytest.raises(SamplingError, match="takes 32 channels"):
        fun48.cond_extras({"latent_image": latent, "concat_latent_image": given[:, :16]}, SIZE, SIZE)


# --- chained WanVaceToVideo ---


@pytest.fixture(scope="module")
def vace(tmp_path_factory):
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(39)
    module = WanVACETransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                       in_channels=16, out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256,
                                       num_layers=4, rope_max_seq_len=64, vace_layers=[0, 2],
                                       vace_in_channels=96).eval()
    with torch.no_grad():  # diffusers starts the hint projections at zero: give them weight
        for block in module.vace_blocks:
            block.proj_out.weight.normal_(std=0.05)
    path = tmp_path_factory.mktemp("vace") / "wan_vace.safetensors"
    return module, path


def _control(seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    held = np.zeros((FRAMES, SIZE, SIZE), dtype=np.uint8)
    held[:, 8 * (seed % 2):8 * (seed % 2) + 16, 4:20] = 255
    return pixels, held


def _vace_node(pos, neg, vae, strength, pixels, held):
    from genloom.nodes.wan import WanVaceToVideo

    return WanVaceToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1, strength,
                                control_video=torch.tensor(pixels / 255.0, dtype=torch.float32),
                                control_masks=torch.tensor(held / 255.0, dtype=torch.float32))


def test_chained_identical_controls_add_their_strengths(wan, vace, tmp_folders):
    """Two chained WanVaceToVideo nodes with the same control and strengths 0.3 and 0.4 run two hint
    streams whose sum is one stream at 0.7: equal to WanVACEPipeline(conditioning_scale=0.7)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline
    from PIL import Image

    module, path = vace
    model = _saved(module, path)
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a green square", "")
    pixels, held = _control(5)
    pos, neg, _latent, _trim = _vace_node(pos, neg, vae, 0.3, pixels, held)
    pos, neg, latent, trim = _vace_node(pos, neg, vae, 0.4, pixels, held)
    assert trim == 0 and pos[0][1]["vace_strength"] == [0.3, 0.4] and len(neg[0][1]["vace_frames"]) == 2
    extras = model.cond_extras({**pos[0][1], "latent_image": latent["samples"]}, SIZE, SIZE)
    assert extras["vace_context"].shape == (1, 2, 96, 2, CELLS, CELLS)
    assert torch.allclose(extras["vace_scale"], torch.tensor([[0.3, 0.4]]))
    (out,) = KSampler().run(model, 43, 3, 3.0, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=wan["vae"], transformer=module,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))
    ref = pipe(video=[Image.fromarray(p) for p in pixels], mask=[Image.fromarray(m).convert("RGB") for m in held],
               conditioning_scale=0.7, prompt_embeds=_embeds(wan, "a green square"),
               negative_prompt_embeds=_embeds(wan, ""), height=SIZE, width=SIZE, num_frames=FRAMES,
               num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(43),
               output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def _hints(module, x, t, emb, context):
    """The hints diffusers' own forward makes from one control context (each hint block's output)."""
    hints = []
    handles = [b.register_forward_hook(lambda _m, _a, out: hints.append(out[0])) for b in module.vace_blocks]
    try:
        module(hidden_states=x, timestep=t, encoder_hidden_states=emb, control_hidden_states=context,
               return_dict=False)
    finally:
        for h in handles:
            h.remove()
    return hints


def _with_added(module, x, t, emb, context, scale, added):
    """diffusers' forward on one context, with `added` [(hints, strength)] put after the hinted blocks."""
    def hook(k):
        return lambda _m, _a, out: out + sum(hints[k] * s for hints, s in added)

    handles = [module.blocks[layer].register_forward_hook(hook(k)) for k, layer in enumerate(module.config.vace_layers)]
    try:
        return module(hidden_states=x, timestep=t, encoder_hidden_states=emb, control_hidden_states=context,
                      control_hidden_states_scale=torch.tensor([scale] * 2), return_dict=False)[0]
    finally:
        for h in handles:
            h.remove()


def test_chained_different_controls_sum_their_hints(wan, vace, tmp_folders):
    """Two different controls (strengths 0.6 and 0.9 on the positive, 0.5 and 0.2 on the negative, one
    batch): each row's prediction is diffusers' forward on the first control plus the second control's
    hints (from a diffusers run on it alone) times its strength after each hinted block."""
    module, path = vace
    model = _saved(module, path)
    text, vae = _loaded(wan)
    pos0, neg0 = _conds(text, "a red circle", "a dog")
    pos, _n, _latent, _t = _vace_node(pos0, neg0, vae, 0.6, *_control(6))
    pos, _n, latent, _t = _vace_node(pos, neg0, vae, 0.9, *_control(7))
    _p, neg, _latent, _t = _vace_node(pos0, neg0, vae, 0.5, *_control(6))
    _p, neg, _latent, _t = _vace_node(pos0, neg, vae, 0.2, *_control(7))
    ex = [model.cond_extras({**c[0][1], "latent_image": latent["samples"]}, SIZE, SIZE) for c in (pos, neg)]
    contexts = torch.cat([e["vace_context"] for e in ex])
    extras = {"vace_context": contexts, "vace_scale": torch.cat([e["vace_scale"] for e in ex])}
    x = torch.randn(2, 16, 2, CELLS, CELLS, generator=torch.Generator().manual_seed(8))
    emb, t = torch.cat([pos[0][0], neg[0][0]]), torch.tensor([650.0, 650.0])
    with torch.no_grad():
        got = model.predict(module, x, t, emb, extras)
        rows = []
        for i, (a, b) in enumerate(((0.6, 0.9), (0.5, 0.2))):
            r = slice(i, i + 1)
            second = _hints(module, x[r], t[r], emb[r], contexts[r, 1])
            rows.append(_with_added(module, x[r], t[r], emb[r], contexts[r, 0], a, [(second, b)]))
        single = model.predict(module, x[:1], t[:1], emb[:1], {"vace_context": contexts[:1, :1],
                                                                "vace_scale": torch.tensor([[0.6]])})
    assert torch.allclose(got, torch.cat(rows), atol=1e-5)
    assert not torch.allclose(got[:1], single, atol=1e-3)  # the second control does change the result


def test_chained_controls_of_different_sizes_are_refused(wan, vace, tmp_folders):
    from genloom.nodes.wan import WanVaceToVideo

    module, path = vace
    model = _saved(module, path)
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a red circle", "")
    pos, neg, latent, _t = WanVaceToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1, 1.0)
    pos, neg, _latent, _t = WanVaceToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES + 4, 1, 1.0)
    with pytest.raises(SamplingError, match="different sizes"):
        model.cond_extras({**pos[0][1], "latent_image": latent["samples"]}, SIZE, SIZE)


# --- the shipped UMT5 tokenizer ---

UMT5_SPIECE_SHA256 = "e3909a67b780650b35cf529ac782ad2b6b26e6d1f849d3fbb6a872905f452458"  # configs/README.md
PROMPTS = ("a cat walking on the beach at sunset, cinematic", "一只猫在海滩上行走",
           "tabs\tand\nnewlines  kept", "emoji 🐱🚀 and 12345", "[web] a user-defined piece", "  spaces  around  ")


def test_umt5_file_without_its_vocabulary_gets_the_shipped_one(tmp_path, tmp_folders):
    """A UMT5 file without `spiece_model` whose embeddings are umt5-xxl's size tokenizes with the shipped
    umt5-xxl SentencePiece model: as the same file carrying that model does, as SentencePiece itself
    encodes (byte fallback, spaces and user-defined pieces included), and it encodes prompts the same;
    a file of another vocabulary without one is refused by name."""
    import hashlib

    import sentencepiece as spm
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models import umt5

    model = umt5.SHIPPED_SPIECE.read_bytes()
    assert hashlib.sha256(model).hexdigest() == UMT5_SPIECE_SHA256
    torch.manual_seed(9)
    text = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=8, d_kv=4, d_ff=16, num_heads=2, num_layers=2,
                                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)).eval()
    state = {k: v.contiguous() for k, v in text.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(state, str(tmp_path / "umt5_bare.safetensors"))
    save_file({**state, "spiece_model": torch.tensor(np.frombuffer(model, dtype=np.uint8).copy())},
              str(tmp_path / "umt5_carrying.safetensors"))
    bare, carrying = (umt5.load_clip([tmp_path / f"umt5_{n}.safetensors"]) for n in ("bare", "carrying"))
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert sp.get_piece_size() == 256000
    for prompt in PROMPTS:
        ids = bare.tokenizers[0](prompt, add_special_tokens=False).input_ids
        assert ids == carrying.tokenizers[0](prompt, add_special_tokens=False).input_ids == sp.encode(prompt), prompt
    assert torch.equal(bare.encode("a (red:1.3) circle")[0], carrying.encode("a (red:1.3) circle")[0])
    small = UMT5EncoderModel(UMT5Config(vocab_size=48, d_model=8, d_kv=4, d_ff=16, num_heads=2, num_layers=2,
                                        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8))
    with pytest.raises(CheckpointError, match="carries no tokenizer"):
        umt5.from_state(dict(small.state_dict()), "umt5_small")
