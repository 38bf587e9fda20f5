"""Tiny random Flux.1 parts for tests: transformer (dev / schnell), CLIP-L, T5, a 16-channel VAE with
8x downsampling, the tokenizers, and the diffusers pipelines over the same modules."""

from __future__ import annotations

from pathlib import Path

WIDTH, HEADS, TEXT_DIM, POOLED_DIM = 32, 2, 32, 32


def transformer(guidance: bool = True, seed: int = 0, width: int = WIDTH, heads: int = HEADS,
                depth: int = 1, single: int = 2):
    import torch
    from diffusers import FluxTransformer2DModel

    from genloom.diffusion.models.families.flux import rope_axes

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=depth, num_single_layers=single,
                                   attention_head_dim=width // heads, num_attention_heads=heads,
                                   joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
                                   guidance_embeds=guidance, axes_dims_rope=rope_axes(width // heads))
    with torch.no_grad():  # diffusers zero-inits nothing here, but make every layer matter
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def text_encoders(seed: int = 1):
    """(clip tokenizer, CLIPTextModel, t5 tokenizer, T5EncoderModel): genloom's shipped tokenizers
    (the full CLIP-L and T5 vocabularies) over tiny encoders."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from genloom.diffusion.models.text_encoders import clip_tokenizer, t5_tokenizer

    torch.manual_seed(seed)
    tok, t5tok = clip_tokenizer("clip_l"), t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=POOLED_DIM, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=POOLED_DIM, bos_token_id=49406,
                                        eos_token_id=49407, pad_token_id=1)).eval()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5tok), d_model=TEXT_DIM, d_kv=8, d_ff=48, num_layers=2,
                                 num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                 is_encoder_decoder=False, use_cache=False)).eval()
    return tok, clip, t5tok, t5


def vae(seed: int = 2):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32,) * 4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1, norm_num_groups=32, sample_size=64, scaling_factor=0.3611,
                         shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False).eval()


def scheduler(dev: bool = True, base_shift: float = 0.5, max_shift: float = 1.15):
    """Flux dev's (dynamic shifting) or schnell's (shift 1, no dynamic shifting) scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not dev:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                           base_shift=base_shift, max_shift=max_shift, base_image_seq_len=256,
                                           max_image_seq_len=4096)


def pipeline(model, parts, vae_module, kontext: bool = False, **sched):
    import diffusers

    tok, clip, t5tok, t5 = parts
    cls = diffusers.FluxKontextPipeline if kontext else diffusers.FluxPipeline
    pipe = cls(scheduler=scheduler(bool(model.config.guidance_embeds), **sched), vae=vae_module,
               text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5tok, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


FILE_NAMES = {"dev": "flux1-dev-tiny.safetensors", "schnell": "flux1-schnell-tiny.safetensors",
              "clip_l": "clip_l-tiny.safetensors", "t5xxl": "t5xxl-tiny.safetensors", "vae": "flux-ae-tiny.safetensors"}


def build_models(root: Path, names: dict = FILE_NAMES) -> dict:
    """Tiny dev and schnell transformers, CLIP-L, T5 and VAE, written as the files users download in
    ComfyUI's folders: diffusion_models/ (BFL layout), text_encoders/ (Hugging Face keys), vae/ (the
    `ae` layout). Returns the modules (for the diffusers pipelines), the folder and the file names."""
    import torch
    from safetensors.torch import save_file

    from genloom.diffusion.models import keymaps
    from genloom.diffusion.models.families.flux import save_original
    from genloom.diffusion.models.text_encoders import save_text_encoder

    torch.set_num_threads(1)
    parts = text_encoders()
    dev, schnell, vae_module = transformer(True), transformer(False, seed=3), vae()
    for sub in ("diffusion_models", "text_encoders", "vae", "loras"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    save_original(dev, root / "diffusion_models" / names["dev"])
    save_original(schnell, root / "diffusion_models" / names["schnell"])
    save_text_encoder(parts[1], root / "text_encoders" / names["clip_l"])
    save_text_encoder(parts[3], root / "text_encoders" / names["t5xxl"])
    ae = keymaps.map_keys(vae_module.state_dict(), keymaps.vae_map(dict(vae_module.config)), "", "vae")
    save_file({k: v.contiguous() for k, v in ae.items()}, str(root / "vae" / names["vae"]))
    return {"root": root, "parts": parts, "dev": dev, "schnell": schnell, "vae": vae_module, "names": dict(names)}
