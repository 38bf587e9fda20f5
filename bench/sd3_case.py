"""The SD3 case of bench/end_to_end.py: genloom's nodes against diffusers' StableDiffusion3Pipeline on
one set of random weights at SD3 medium's full transformer size (24 joint blocks, width 1536,
2.0 B parameters), bfloat16, 1 step, small resolution.

Text encoders are one-layer CLIP-L (768), CLIP-G (1280) and T5 (4096) of the real widths (the
transformer and the node layer around it are what this measures), the VAE is SD3's 16-channel one.
Peak memory as bench/peak.py measures it (CUDA's peak allocation, else each side's own process).
"""

from __future__ import annotations

import torch

PROMPT = "a red fox sitting in fresh snow"
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)


def parts(dtype):
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from genloom.diffusion.models.text_encoders import clip_tokenizer, t5_tokenizer

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        transformer = SD3Transformer2DModel(**SD3_MEDIUM)
        toks = (clip_tokenizer("clip_l"), clip_tokenizer("clip_g"), t5_tokenizer())
        clips = [CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(toks[0]), hidden_size=w, intermediate_size=4 * w, num_hidden_layers=1,
            num_attention_heads=w // 64, projection_dim=w, bos_token_id=49406, eos_token_id=49407,
            hidden_act=act)) for w, act in ((768, "quick_gelu"), (1280, "gelu"))]
        t5 = T5EncoderModel(T5Config(vocab_size=len(toks[2]), d_model=4096, d_kv=64, d_ff=1024, num_layers=1,
                                     num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                     use_cache=False))
        vae = AutoencoderKL(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                            use_post_quant_conv=False)
    finally:
        torch.set_default_dtype(previous)
    mods = [m.eval().requires_grad_(False).to(dtype) for m in (transformer, *clips, t5, vae)]
    return mods, toks


def sides(device: str, size: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from genloom.diffusion.models.families.sd3 import SD3Handle
    from genloom.diffusion.models.handles import ClipHandle, VaeHandle
    from genloom.diffusion.sampling import latent_formats, model_sampling
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.sd3 import EmptySD3LatentImage

    mods, toks = parts(torch.bfloat16)
    mods = [m.to(device) for m in mods]
    transformer, clip_l, clip_g, t5, vae = mods
    model = SD3Handle(unet=transformer, latent_channels=16, vae_scale_factor=8, name="sd3-random",
                      prediction_type="flow", sampling=model_sampling.flow(shift=3.0), latent_format=latent_formats.SD3)
    clip = ClipHandle(tokenizers=toks, text_encoders=(clip_l, clip_g, t5), kind="sd3",
                      roles=("clip_l", "clip_g", "t5xxl"))
    vae_handle = VaeHandle(vae=vae, name="sd3-vae-random")
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=clip_l, tokenizer=toks[0], text_encoder_2=clip_g,
                                    tokenizer_2=toks[1], text_encoder_3=t5, tokenizer_3=toks[2])
    pipe.set_progress_bar_config(disable=True)

    def ours(seed):
        (cond,) = CLIPTextEncode().run(PROMPT, clip)
        (latent,) = EmptySD3LatentImage().run(size, size, 1)
        (samples,) = KSampler().run(model, seed, 1, 1.0, "euler", "normal", cond, cond, latent, 1.0)
        return VAEDecode().run(samples, vae_handle)[0]

    def ref(seed):
        return pipe(PROMPT, height=size, width=size, num_inference_steps=1, guidance_scale=1.0,
                    max_sequence_length=77, output_type="pt",
                    generator=torch.Generator("cpu").manual_seed(seed)).images

    return ours, ref, sum(p.numel() for p in transformer.parameters()) / 1e9


def sd3_row(device: str, size: int, reps: int, best_of):
    """(row for report(), a line saying what ran)."""
    from peak import described, peaks

    ours, ref, params = sides(device, size)
    ref_t, ours_t = best_of([ref, ours], reps, device)
    memory = described(*peaks("sd3_case", device, (size,), (ours, ref)))
    note = (f"sd3 random weights: SD3 medium transformer ({params:.2f} B params), one-layer encoders of the real "
            f"widths, bfloat16, {size}x{size} px, 1 euler step; {memory}")
    return ("sd3/nodes", ours_t, ref_t), note
