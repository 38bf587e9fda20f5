"""Wan 2.1 / 2.2 on tiny random models saved in the original layouts (transformer, UMT5 with its
SentencePiece vocabulary inside the file, the video VAE): genloom's text-to-video equals diffusers'
WanPipeline on the same weights and noise, one expert or two (Wan 2.2's high/low-noise hand-over
through KSamplerAdvanced), and the writers round-trip through diffusers' own converters."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
spm = pytest.importorskip("sentencepiece")

from genloom.diffusion.models import umt5, wan_vae  # noqa: E402
from genloom.diffusion.models.families import load_diffusion_model  # noqa: E402
from genloom.diffusion.models.families import wan as wan_family  # noqa: E402
from genloom.nodes.ksampler import KSampler, KSamplerAdvanced  # noqa: E402

WORDS = ("a red circle left of blue square the cat sits on mat big small green yellow three stars picture "
         "with and walking dog running").split()
FRAMES, SIZE = 5, 32  # 5 frames -> 2 latent frames; 32 px -> 4 x 4 latent cells


def spiece_model() -> bytes:
    folder = tempfile.mkdtemp()
    lines = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5
    corpus = f"{folder}/corpus.txt"
    with open(corpus, "w") as fh:
        fh.write("\n".join(lines))
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=f"{folder}/m", vocab_size=48, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    return open(f"{folder}/m.model", "rb").read()


def tiny_transformer(seed):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                 in_channels=16, out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256,
                                 num_layers=2, rope_max_seq_len=64).eval()


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """Original-layout files of a tiny Wan: two transformers (Wan 2.2's experts), UMT5, the VAE."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    folder = tmp_path_factory.mktemp("wan")
    high, low = tiny_transformer(1), tiny_transformer(2)
    wan_family.save_original(high, folder / "wan_high.safetensors", "model.diffusion_model.")
    wan_family.save_original(low, folder / "wan_low.safetensors", "model.diffusion_model.")
    torch.manual_seed(3)
    text = UMT5EncoderModel(UMT5Config(vocab_size=48, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                                       feed_forward_proj="gated-gelu", relative_attention_num_buckets=8)).eval()
    model = spiece_model()
    state = {k: v.contiguous() for k, v in text.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state["spiece_model"] = torch.tensor(np.frombuffer(model, dtype=np.uint8).copy())
    save_file(state, str(folder / "umt5_tiny.safetensors"))
    torch.manual_seed(4)
    vae = AutoencoderKLWan(base_dim=16, z_dim=16).eval()
    wan_vae.save_original(vae, folder / "wan_vae.safetensors")
    return {"folder": folder, "high": high, "low": low, "text": text, "vae": vae,
            "spiece": spm.SentencePieceProcessor(model_proto=model)}


def _embeds(wan, prompt):
    """WanPipeline's own prompt encoding (tokens, end token, padded to 512, outputs past the end zeroed)."""
    ids = wan["spiece"].encode(prompt) + [1]
    n = len(ids)
    tokens = torch.tensor([ids + [0] * (512 - n)])
    mask = torch.tensor([[1] * n + [0] * (512 - n)])
    with torch.no_grad():
        out = wan["text"](input_ids=tokens, attention_mask=mask).last_hidden_state
    out[:, n:] = 0
    return out


def _pipeline(wan, two_experts=False, boundary=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    return WanPipeline(tokenizer=None, text_encoder=None, vae=wan["vae"], transformer=wan["high"],
                       transformer_2=wan["low"] if two_experts else None, boundary_ratio=boundary,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))


def _loaded(wan):
    from genloom.diffusion.models.weights import read_state_dict

    folder = wan["folder"]
    text = umt5.from_state(read_state_dict(folder / "umt5_tiny.safetensors")[0], "umt5_tiny")
    vae = wan_vae.build(read_state_dict(folder / "wan_vae.safetensors")[0], "wan_vae")
    return text, vae


def _conds(text, prompt, negative):
    return [[umt5.encode(text, prompt), {}]], [[umt5.encode(text, negative), {}]]


def test_the_writers_round_trip_through_diffusers_converters(wan):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

    original = wan_family.to_original(wan["high"].state_dict())
    assert "head.modulation" in original and "blocks.0.norm3.weight" in original
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(wan["high"].state_dict())
    vae_back = convert_wan_vae_to_diffusers(dict(wan_vae.to_original(wan["vae"].state_dict())))
    assert set(vae_back) == set(wan["vae"].state_dict())


def test_umt5_tokens_and_encoding_equal_the_pipeline(wan, tmp_folders):
    text, _vae = _loaded(wan)
    for prompt in ("a red circle", "the cat  sits on the mat", "Three Yellow STARS"):
        assert text.tokenizer(prompt, add_special_tokens=False).input_ids == wan["spiece"].encode(prompt)
    assert torch.allclose(umt5.encode(text, "a dog running"), _embeds(wan, "a dog running"), atol=1e-5)


def test_text_to_video_equals_wan_pipeline(wan, tmp_folders):
    model = load_diffusion_model(wan["folder"] / "wan_high.safetensors")
    assert model.kind == "wan" and model.latent_channels == 16
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a cat walking", "")
    latent = {"samples": torch.zeros(1, 16, 2, SIZE // 8, SIZE // 8)}
    (out,) = KSampler().run(model, 42, 4, 4.0, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    pipe = _pipeline(wan)
    ref = pipe(prompt_embeds=_embeds(wan, "a cat walking"), negative_prompt_embeds=_embeds(wan, ""),
               height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=4, guidance_scale=4.0,
               generator=torch.Generator("cpu").manual_seed(42), output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_two_experts_hand_over_like_the_pipeline(wan, tmp_folders):
    """Wan 2.2 14B: the high-noise expert for timesteps at or above boundary * 1000, then the low-noise
    one; in ComfyUI two KSamplerAdvanced nodes, the first returning its leftover noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    high = load_diffusion_model(wan["folder"] / "wan_high.safetensors")
    low = load_diffusion_model(wan["folder"] / "wan_low.safetensors")
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a dog running", "a cat")
    steps, boundary = 6, 0.9
    sched = FlowMatchEulerDiscreteScheduler(shift=8.0)
    sched.set_timesteps(steps)
    switch = int((sched.timesteps >= boundary * 1000).sum())  # steps the high-noise expert takes
    assert 0 < switch < steps
    common = dict(noise_seed=7, steps=steps, cfg=3.0, sampler_name="euler", scheduler="normal",
                  positive=pos, negative=neg)
    empty = {"samples": torch.zeros(1, 16, 2, SIZE // 8, SIZE // 8)}
    (half,) = KSamplerAdvanced().run(high, "enable", latent_image=empty, start_at_step=0, end_at_step=switch,
                                     return_with_leftover_noise="enable", **common)
    (done,) = KSamplerAdvanced().run(low, "disable", latent_image=half, start_at_step=switch,
                                     end_at_step=10000, return_with_leftover_noise="disable", **common)
    frames = vae.decode(done["samples"])
    pipe = _pipeline(wan, two_experts=True, boundary=boundary)
    ref = pipe(prompt_embeds=_embeds(wan, "a dog running"), negative_prompt_embeds=_embeds(wan, "a cat"),
               height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=steps, guidance_scale=3.0,
               guidance_scale_2=3.0, generator=torch.Generator("cpu").manual_seed(7), output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_vae_encode_decode_matches_diffusers(wan, tmp_folders):
    _text, vae = _loaded(wan)
    frames = torch.rand(FRAMES, SIZE, SIZE, 3)
    latent = vae.encode(frames)
    assert latent.shape == (1, 16, 2, SIZE // 8, SIZE // 8)
    with torch.no_grad():
        ref = wan["vae"].encode(frames.movedim(-1, 0)[None] * 2 - 1).latent_dist.mode()
        pixels = wan["vae"].decode(ref).sample
    assert torch.allclose(latent, ref, atol=1e-5)
    assert torch.allclose(vae.decode(latent), ((pixels + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0), atol=1e-5)


def _tiny_clip_vision():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(6)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=32, patch_size=8)).eval()
    return model, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


class _VisionOutput:
    """What CLIPVisionEncode hands on (ComfyUI's clip_vision Output): the tokens Wan 2.1 i2v reads."""

    def __init__(self, states):
        self.penultimate_hidden_states = states


def test_image_to_video_equals_the_i2v_pipeline(wan, tmp_path, tmp_folders):
    """Wan 2.1 image-to-video: WanImageToVideo encodes the start frame (grey after it) with its mask,
    the model reads them as extra input channels and the CLIP-vision tokens through its image K/V."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    from genloom.nodes.wan import WanImageToVideo

    torch.manual_seed(5)
    i2v = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=36,
                                out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256, num_layers=2,
                                rope_max_seq_len=64, image_dim=24, added_kv_proj_dim=256).eval()
    wan_family.save_original(i2v, tmp_path / "wan_i2v.safetensors", "model.diffusion_model.")
    model = load_diffusion_model(tmp_path / "wan_i2v.safetensors")
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a red circle", "")
    start = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(9))
    vision, processor = _tiny_clip_vision()
    with torch.no_grad():  # what CLIPVisionEncode gives: the penultimate hidden states
        tokens = vision(**processor(images=start.permute(0, 3, 1, 2), return_tensors="pt"),
                        output_hidden_states=True).hidden_states[-2]
    pos, neg, latent = WanImageToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1,
                                             clip_vision_output=_VisionOutput(tokens), start_image=start)
    assert latent["samples"].shape == (1, 16, 2, SIZE // 8, SIZE // 8)
    assert pos[0][1]["concat_mask"][0, 0, :, 0, 0].tolist() == [0.0, 1.0]
    (out,) = KSampler().run(model, 11, 3, 2.5, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan["vae"], transformer=i2v,
                                   image_encoder=vision, image_processor=processor,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))
    ref = pipe(image=start.permute(0, 3, 1, 2), prompt_embeds=_embeds(wan, "a red circle"),
               negative_prompt_embeds=_embeds(wan, ""), height=SIZE, width=SIZE,
               num_frames=FRAMES, num_inference_steps=3, guidance_scale=2.5,
               generator=torch.Generator("cpu").manual_seed(11), output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


# --- Wan 2.2 TI2V 5B (48 latent channels, its VAE, per-frame timesteps) and first-last-frame ---

SIZE22 = 64  # 64 px -> 4 x 4 latent cells at 16x -> 2 x 2 patches a frame


@pytest.fixture(scope="module")
def wan22(tmp_path_factory):
    """Original-layout files of a tiny Wan 2.2 5B: the 48-channel transformer and the Wan 2.2 VAE."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    folder = tmp_path_factory.mktemp("wan22")
    torch.manual_seed(21)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                        in_channels=48, out_channels=48, text_dim=32, freq_dim=64, ffn_dim=256,
                                        num_layers=2, rope_max_seq_len=64).eval()
    wan_family.save_original(transformer, folder / "wan22_5b.safetensors", "model.diffusion_model.")
    torch.manual_seed(22)  # the statistics the 5B pipeline's VAE config carries (ComfyUI's Wan22 format)
    vae = AutoencoderKLWan(base_dim=16, decoder_base_dim=24, z_dim=48, is_residual=True, in_channels=12,
                           out_channels=12, patch_size=2, scale_factor_spatial=16,
                           latents_mean=list(wan_family.WAN22_MEAN), latents_std=list(wan_family.WAN22_STD)).eval()
    wan_vae.save_original(vae, folder / "wan22_vae.safetensors")
    return {"folder": folder, "transformer": transformer, "vae": vae}


def _vae22(wan22):
    """The Wan 2.2 VAE file as VAELoader reads it."""
    from genloom.diffusion.models.single_file import load_vae_file

    return load_vae_file(wan22["folder"] / "wan22_vae.safetensors").vae


def test_wan22_vae_layout_round_trips_and_encodes_like_diffusers(wan22):
    from genloom.diffusion.models.weights import read_state_dict

    state = read_state_dict(wan22["folder"] / "wan22_vae.safetensors")[0]
    assert "encoder.downsamples.1.downsamples.2.resample.1.weight" in state  # resampler after two blocks
    assert "decoder.upsamples.0.upsamples.3.time_conv.weight" in state  # after three in the decoder
    assert set(wan_vae.wan22_to_diffusers(state)) == set(wan22["vae"].state_dict())
    vae = _vae22(wan22)
    assert (vae.latent_channels, vae.scale_factor) == (48, 16)
    frames = torch.rand(FRAMES, SIZE22, SIZE22, 3, generator=torch.Generator().manual_seed(1))
    latent = vae.encode(frames)
    assert latent.shape == (1, 48, 2, SIZE22 // 16, SIZE22 // 16)
    with torch.no_grad():
        ref = wan22["vae"].encode(frames.movedim(-1, 0)[None] * 2 - 1).latent_dist.mode()
        pixels = wan22["vae"].decode(ref).sample
    assert torch.allclose(latent, ref, atol=1e-5)
    assert torch.allclose(vae.decode(latent), ((pixels + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0), atol=1e-5)


def test_wan22_5b_text_to_video_equals_the_expand_timesteps_pipeline(wan, wan22, tmp_folders):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from genloom.nodes.wan import Wan22ImageToVideoLatent

    model = load_diffusion_model(wan22["folder"] / "wan22_5b.safetensors")
    assert (model.latent_channels, model.vae_scale_factor, model.latent_format.channels) == (48, 16, 48)
    text, _vae = _loaded(wan)
    vae = _vae22(wan22)
    pos, neg = _conds(text, "a cat walking", "a dog")
    (latent,) = Wan22ImageToVideoLatent().run(vae, SIZE22, SIZE22, FRAMES, 3)
    assert latent["samples"].shape == (1, 48, 2, 4, 4) and "noise_mask" not in latent  # ComfyUI: batch 1
    (out,) = KSampler().run(model, 5, 3, 4.0, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=wan22["vae"], transformer=wan22["transformer"],
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0), expand_timesteps=True)
    ref = pipe(prompt_embeds=_embeds(wan, "a cat walking"), negative_prompt_embeds=_embeds(wan, "a dog"),
               height=SIZE22, width=SIZE22, num_frames=FRAMES, num_inference_steps=3, guidance_scale=4.0,
               generator=torch.Generator("cpu").manual_seed(5), output_type="pt").frames[0]
    assert frames.shape == (FRAMES, SIZE22, SIZE22, 3)
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_wan22_5b_image_to_video_equals_the_expand_timesteps_pipeline(wan, wan22, tmp_folders):
    """Wan22ImageToVideoLatent puts the encoded start image in the first latent frame (the others at the
    format's mean, zero in model space) under a noise mask; the 5B model sees that frame clean at
    timestep 0, as WanImageToVideoPipeline(expand_timesteps=True) runs it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    from genloom.nodes.wan import Wan22ImageToVideoLatent

    model = load_diffusion_model(wan22["folder"] / "wan22_5b.safetensors")
    text, _vae = _loaded(wan)
    vae = _vae22(wan22)
    pos, neg = _conds(text, "a red circle", "")
    start = torch.rand(1, SIZE22, SIZE22, 3, generator=torch.Generator().manual_seed(8))
    (latent,) = Wan22ImageToVideoLatent().run(vae, SIZE22, SIZE22, FRAMES, 1, start_image=start)
    samples, mask = latent["samples"], latent["noise_mask"]
    assert mask.shape == (1, 1, 2, 4, 4) and mask[0, 0, :, 0, 0].tolist() == [0.0, 1.0]
    with torch.no_grad():
        encoded = wan22["vae"].encode(start.movedim(-1, 0)[None] * 2 - 1).latent_dist.mode()
    assert torch.allclose(samples[:, :, :1], encoded, atol=1e-5)
    assert torch.allclose(samples[0, :, 1, 0, 0], torch.tensor(wan_family.WAN22_MEAN))
    (out,) = KSampler().run(model, 13, 3, 3.0, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan22["vae"],
                                   transformer=wan22["transformer"], image_encoder=None, image_processor=None,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0), expand_timesteps=True)
    ref = pipe(image=start.permute(0, 3, 1, 2), prompt_embeds=_embeds(wan, "a red circle"),
               negative_prompt_embeds=_embeds(wan, ""), height=SIZE22, width=SIZE22, num_frames=FRAMES,
               num_inference_steps=3, guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(13),
               output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


def test_first_last_frame_equals_the_i2v_pipeline_with_last_image(wan, tmp_path, tmp_folders):
    """WanFirstLastFrameToVideo: start and end frames given (grey between), the mask marks them, the two
    CLIP-vision outputs are joined; the FLF2V model adds its learned positions (`img_emb.emb_pos`)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel

    from genloom.nodes.wan import WanFirstLastFrameToVideo

    vision, processor = _tiny_clip_vision()
    torch.manual_seed(15)
    flf = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=36,
                                out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256, num_layers=2,
                                rope_max_seq_len=64, image_dim=24, added_kv_proj_dim=256,
                                pos_embed_seq_len=2 * 17).eval()  # two images of 16 patches + class token
    with torch.no_grad():
        flf.condition_embedder.image_embedder.pos_embed.normal_()
    wan_family.save_original(flf, tmp_path / "wan_flf.safetensors", "model.diffusion_model.")
    assert "img_emb.emb_pos" in wan_family.to_original(flf.state_dict())
    model = load_diffusion_model(tmp_path / "wan_flf.safetensors")
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a dog running", "")
    gen = torch.Generator().manual_seed(10)
    first, last = torch.rand(1, SIZE, SIZE, 3, generator=gen), torch.rand(1, SIZE, SIZE, 3, generator=gen)

    def tokens(image):
        with torch.no_grad():
            return _VisionOutput(vision(**processor(images=image.permute(0, 3, 1, 2), return_tensors="pt"),
                                        output_hidden_states=True).hidden_states[-2])

    pos, neg, latent = WanFirstLastFrameToVideo().run(pos, neg, vae, SIZE, SIZE, FRAMES, 1,
                                                      clip_vision_start_image=tokens(first),
                                                      clip_vision_end_image=tokens(last),
                                                      start_image=first, end_image=last)
    mask = pos[0][1]["concat_mask"]
    assert mask.shape == (1, 4, 2, SIZE // 8, SIZE // 8)
    assert mask[0, :, :, 0, 0].tolist() == [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]
    assert pos[0][1]["clip_vision_output"].penultimate_hidden_states.shape == (1, 34, 24)
    (out,) = KSampler().run(model, 17, 3, 2.0, "euler", "normal", pos, neg, latent)
    frames = vae.decode(out["samples"])
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=wan["vae"], transformer=flf,
                                   image_encoder=vision, image_processor=processor,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))
    ref = pipe(image=first.permute(0, 3, 1, 2), last_image=last.permute(0, 3, 1, 2),
               prompt_embeds=_embeds(wan, "a dog running"), negative_prompt_embeds=_embeds(wan, ""),
               height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3, guidance_scale=2.0,
               generator=torch.Generator("cpu").manual_seed(17), output_type="pt").frames[0]
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4


DOWNLOADED = {"t2v": "wan2.1_t2v_1.3B_fp16.safetensors", "high": "wan2.2_i2v_high_noise_14B_fp16.safetensors",
              "low": "wan2.2_i2v_low_noise_14B_fp16.safetensors", "umt5": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
              "vae": "wan_2.1_vae.safetensors"}


@pytest.fixture(scope="module")
def wan_folders(wan, tmp_path_factory):
    """The tiny files under the names and folders the example workflows use (ComfyUI's layout)."""
    import shutil

    from diffusers import WanTransformer3DModel

    root = tmp_path_factory.mktemp("wan_models")
    for folder in ("diffusion_models", "text_encoders", "vae"):
        (root / folder).mkdir()
    src = wan["folder"]
    shutil.copy(src / "wan_high.safetensors", root / "diffusion_models" / DOWNLOADED["t2v"])
    for seed, key in ((7, "high"), (8, "low")):  # Wan 2.2 i2v experts: 36 input channels, no CLIP vision
        torch.manual_seed(seed)
        expert = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                       in_channels=36, out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256,
                                       num_layers=2, rope_max_seq_len=64).eval()
        wan_family.save_original(expert, root / "diffusion_models" / DOWNLOADED[key], "model.diffusion_model.")
    shutil.copy(src / "umt5_tiny.safetensors", root / "text_encoders" / DOWNLOADED["umt5"])
    shutil.copy(src / "wan_vae.safetensors", root / "vae" / DOWNLOADED["vae"])
    return root


def _small(name: str) -> dict:
    """The example at the tiny models' scale: 32 x 32 pixels, 5 frames, 2 steps."""
    import json
    from pathlib import Path

    envelope = json.loads((Path(__file__).resolve().parents[2] / "workflows" / f"{name}.json").read_text())
    for node in envelope["graph"].values():
        inputs = node["inputs"]
        inputs.update({k: v for k, v in (("width", SIZE), ("height", SIZE), ("length", FRAMES)) if k in inputs})
        if "steps" in inputs:
            inputs["steps"] = 2
        if "end_at_step" in inputs and inputs["end_at_step"] < 10000:
            inputs["end_at_step"] = 1
        if "start_at_step" in inputs and inputs["start_at_step"] > 0:
            inputs["start_at_step"] = 1
    return envelope


@pytest.mark.parametrize("name", ["wan_t2v", "wan_i2v"])
def test_example_workflows_validate_and_run(wan_folders, tmp_path, name):
    """As shipped they validate against the downloaded file names; small, they make an MP4 of 5 frames
    through UNETLoader, CLIPLoader(type wan) and VAELoader."""
    import json
    from pathlib import Path

    import av

    import genloom

    repo = Path(__file__).resolve().parents[2]
    engine = genloom.Engine(models_dirs=[wan_folders], input_dir=repo / "workflows" / "input",
                            output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    engine.validate(json.loads((repo / "workflows" / f"{name}.json").read_text()))
    result = engine.run(_small(name))
    (entry,) = [e for ui in result.outputs.values() for e in ui.get("images", [])]
    with av.open(str(tmp_path / "out" / entry["subfolder"] / entry["filename"])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)


def test_vace_control_video_with_reference_equals_the_vace_pipeline(wan, tmp_path, tmp_folders):
    """WanVaceToVideo (control video split by its mask, a reference image ahead, strength) on a VACE
    model (`vace_blocks.*`, `vace_patch_embedding`), then TrimVideoLatent drops the reference frame:
    equal to WanVACEPipeline on the same frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanVACEPipeline, WanVACETransformer3DModel
    from PIL import Image

    from genloom.nodes.wan import TrimVideoLatent, WanVaceToVideo

    torch.manual_seed(19)
    vace = WanVACETransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128,
                                     in_channels=16, out_channels=16, text_dim=32, freq_dim=64, ffn_dim=256,
                                     num_layers=4, rope_max_seq_len=64, vace_layers=[0, 2], vace_in_channels=96).eval()
    with torch.no_grad():  # diffusers starts the hint projections at zero: give them weight
        for block in vace.vace_blocks:
            block.proj_out.weight.normal_(std=0.05)
    original = wan_family.to_original(vace.state_dict())
    assert "vace_blocks.0.before_proj.weight" in original and "vace_blocks.1.after_proj.weight" in original
    wan_family.save_original(vace, tmp_path / "wan_vace.safetensors", "model.diffusion_model.")
    model = load_diffusion_model(tmp_path / "wan_vace.safetensors")
    assert model.unet.config.vace_layers == [0, 2]
    text, vae = _loaded(wan)
    pos, neg = _conds(text, "a green square", "")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    held = np.zeros((FRAMES, SIZE, SIZE), dtype=np.uint8)
    held[:, 8:24, 4:20] = 255  # the region to regenerate
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    video = torch.tensor(pixels / 255.0, dtype=torch.float32)
    pos, neg, latent, trim = WanVaceToVideo().run(
        pos, neg, vae, SIZE, SIZE, FRAMES, 1, 0.7, control_video=video,
        control_masks=torch.tensor(held / 255.0, dtype=torch.float32),
        reference_image=torch.tensor(reference[None] / 255.0, dtype=torch.float32))
    assert trim == 1 and latent["samples"].shape == (1, 16, 3, SIZE // 8, SIZE // 8)
    assert pos[0][1]["vace_frames"][0].shape == (1, 32, 3, SIZE // 8, SIZE // 8)
    assert pos[0][1]["vace_mask"][0].shape == (1, 64, 3, SIZE // 8, SIZE // 8)
    (out,) = KSampler().run(model, 23, 3, 3.0, "euler", "normal", pos, neg, latent)
    (out,) = TrimVideoLatent().run(out, trim)
    frames = vae.decode(out["samples"])
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=wan["vae"], transformer=vace,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))
    ref = pipe(video=[Image.fromarray(p) for p in pixels], mask=[Image.fromarray(m).convert("RGB") for m in held],
               reference_images=[Image.fromarray(reference)], conditioning_scale=0.7,
               prompt_embeds=_embeds(wan, "a green square"), negative_prompt_embeds=_embeds(wan, ""),
               height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=3, guidance_scale=3.0,
               generator=torch.Generator("cpu").manual_seed(23), output_type="pt").frames[0]
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert (frames - ref.permute(0, 2, 3, 1)).abs().max() < 1e-4
    # positive and negative of different strengths share a batch: each row gets its own hint scale
    x = torch.randn(2, 16, 3, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(4))
    emb, t = torch.cat([pos[0][0], neg[0][0]]), torch.tensor([700.0, 700.0])
    context = torch.cat([model.cond_extras({**pos[0][1]}, SIZE, SIZE)["vace_context"]] * 2)  # [2, 1, 96, ...]
    extras = {"vace_context": context, "vace_scale": torch.tensor([0.7, 0.2])}
    with torch.no_grad():
        both = model.predict(vace, x, t, emb, extras)
        rows = [vace(hidden_states=x[i:i + 1], timestep=t[i:i + 1], encoder_hidden_states=emb[i:i + 1],
                     control_hidden_states=context[i:i + 1, 0], control_hidden_states_scale=torch.tensor([s, s]),
                     return_dict=False)[0] for i, s in enumerate((0.7, 0.2))]
    assert torch.allclose(both, torch.cat(rows), atol=1e-5)


def test_scaled_fp8_umt5_file_loads_dequantised(wan, tmp_path, tmp_folders):
    """ComfyUI's umt5_xxl_fp8_e4m3fn_scaled layout: fp8 weights, a `scale_weight` per layer and the
    `scaled_fp8` marker; genloom encodes with weights equal to fp8 * scale."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(wan["folder"] / "umt5_tiny.safetensors"))
    quantised, expected = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and "relative_attention_bias" not in key:
            scale = value.abs().amax() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            quantised[key], quantised[key[:-len("weight")] + "scale_weight"] = q, scale.reshape(1)
            expected[key] = q.float() * scale
        else:
            quantised[key] = value
            if key != "spiece_model":
                expected[key] = value
    save_file(quantised, str(tmp_path / "umt5_fp8_scaled.safetensors"))
    clip = umt5.load_clip([tmp_path / "umt5_fp8_scaled.safetensors"])
    assert clip.kind == "wan" and clip.roles == ("umt5",)
    module = clip.text_encoders[0]
    for key, value in expected.items():
        got = module.state_dict()[key if key != "shared.weight" else "shared.weight"]
        assert torch.allclose(got.float(), value.float(), atol=1e-6), key
    cond, pooled = clip.encode("a red circle")
    assert pooled is None and cond.shape == (1, 512, 32)
