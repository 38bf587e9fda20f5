"""Tiny random models published as separate files (SD3-style): text encoders CLIP-L, CLIP-G and T5 at
sizes whose configs can be read from the weights alone (CLIP heads of 64 channels, T5 from its
shapes), a 16-channel 8x VAE, a tiny SD3/SD3.5 MMDiT, their writers in the layouts users download,
and the diffusers pipeline over the same modules.

Sizes: CLIP-L width 64 (1 head), CLIP-G width 128 (2 heads, projection 128), T5 width 192 (the CLIPs'
widths together, as SD3 pads them to T5's), the real CLIP and T5 vocabularies (the shipped
tokenizers are used)."""

from __future__ import annotations

from pathlib import Path

CLIP_L, CLIP_G, T5_WIDTH = 64, 128, 192
CLIP_VOCAB = 49408


def _noisy(model, seed: int, scale: float = 0.2):
    """Random weights everywhere (diffusers zero-initialises some output layers)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def _clip_config(width: int, act: str, layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=width, intermediate_size=width * 2,
                          num_hidden_layers=layers, num_attention_heads=width // 64, max_position_embeddings=77,
                          hidden_act=act, projection_dim=width, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=1)


def clip_l(seed: int = 1):
    """CLIP-L as its files have it: CLIPTextModel, no projection."""
    import torch
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return _noisy(CLIPTextModel(_clip_config(CLIP_L, "quick_gelu")), seed, 0.1)


def clip_l_with_identity_projection(model):
    """The same CLIP-L as diffusers' SD3 pipeline takes it: with an identity text_projection."""
    import torch
    from transformers import CLIPTextModelWithProjection

    out = CLIPTextModelWithProjection(model.config).eval()
    state = {("text_model." + k if not k.startswith("text_model.") else k): v for k, v in model.state_dict().items()}
    state["text_projection.weight"] = torch.eye(model.config.hidden_size)
    out.load_state_dict(state, strict=False)
    return out


def clip_g(seed: int = 2):
    import torch
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return _noisy(CLIPTextModelWithProjection(_clip_config(CLIP_G, "gelu")), seed, 0.1)


def t5(seed: int = 3, width: int = T5_WIDTH):
    import torch
    from transformers import T5Config, T5EncoderModel

    from genloom.diffusion.models.text_encoders import t5_tokenizer

    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(t5_tokenizer()), d_model=width, d_kv=32, d_ff=width * 2, num_layers=2,
                      num_heads=width // 32, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                      is_encoder_decoder=False, use_cache=False)
    return _noisy(T5EncoderModel(config), seed, 0.1)


def vae16(seed: int = 4, shift: float = 0.0609, scale: float = 1.5305):
    """A 16-channel AutoencoderKL with 8x downsampling and no quant convs (SD3's and Flux's shape)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(32,) * 4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1, norm_num_groups=32, sample_size=64, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=scale, shift_factor=shift)
    return _noisy(vae, seed, 0.1)


def sd3_transformer(seed: int = 5, sd35: bool = True):
    """SD3.5-medium style (RMS qk-norm, a dual-attention layer) or SD3-medium style (64-wide heads,
    neither)."""
    import torch
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    head, heads = (32, 2) if sd35 else (64, 1)
    model = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=2,
                                  attention_head_dim=head, num_attention_heads=heads,
                                  joint_attention_dim=T5_WIDTH, caption_projection_dim=head * heads,
                                  pooled_projection_dim=CLIP_L + CLIP_G, out_channels=16, pos_embed_max_size=16,
                                  dual_attention_layers=(0,) if sd35 else (), qk_norm="rms_norm" if sd35 else None)
    model = _noisy(model, seed, 0.1)
    return model


# -- files in the layouts users download ----------------------------------------------------------

def vae_ldm_state(vae) -> dict:
    from genloom.diffusion.models import keymaps

    return keymaps.map_keys(vae.state_dict(), keymaps.vae_map(dict(vae.config)), "", "vae")


def _save(tensors: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def save_vae(vae, path: Path) -> Path:
    return _save(vae_ldm_state(vae), path)


def text_encoder_state(module, role: str) -> dict:
    """What the all-in-one files hold under text_encoders.<role>.transformer.: HF keys, CLIP with
    its `text_model.` level."""
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    state.pop("encoder.embed_tokens.weight", None)
    if role != "t5xxl":
        state = {("text_model." + k if not k.startswith(("text_model.", "text_projection")) else k): v
                 for k, v in state.items()}
    return state


def build_sd3_parts(seed: int = 0, sd35: bool = True) -> dict:
    return {"transformer": sd3_transformer(seed + 5, sd35), "clip_l": clip_l(seed + 1), "clip_g": clip_g(seed + 2),
            "t5xxl": t5(seed + 3), "vae": vae16(seed + 4)}


def write_sd3_files(root: Path, parts: dict, name: str = "tiny-sd3") -> dict:
    """ComfyUI's folders: diffusion_models/, text_encoders/, vae/ and an all-in-one checkpoints/ file."""
    from genloom.diffusion.models.families.sd3 import save_original, to_original
    from genloom.diffusion.models.text_encoders import save_text_encoder

    unet = root / "diffusion_models" / f"{name}.safetensors"
    unet.parent.mkdir(parents=True, exist_ok=True)
    save_original(parts["transformer"], unet)
    files = {"unet": unet, "vae": save_vae(parts["vae"], root / "vae" / f"{name}-vae.safetensors")}
    original = to_original(parts["transformer"].state_dict())
    for role in ("clip_l", "clip_g", "t5xxl"):
        files[role] = save_text_encoder(parts[role], root / "text_encoders" / f"{name}-{role}.safetensors",
                                        with_config=False)
    allin = {f"model.diffusion_model.{k}": v for k, v in original.items()}
    for role in ("clip_l", "clip_g", "t5xxl"):
        allin.update({f"text_encoders.{role}.transformer.{k}": v
                      for k, v in text_encoder_state(parts[role], role).items()})
    allin.update({f"first_stage_model.{k}": v for k, v in vae_ldm_state(parts["vae"]).items()})
    files["checkpoint"] = _save(allin, root / "checkpoints" / f"{name}-aio.safetensors")
    return files


def sd3_pipeline(parts: dict):
    """diffusers' StableDiffusion3Pipeline over the same modules (CLIP-L with identity projection)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from genloom.diffusion.models.text_encoders import clip_tokenizer, t5_tokenizer

    pipe = StableDiffusion3Pipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=clip_l_with_identity_projection(parts["clip_l"]), tokenizer=clip_tokenizer("clip_l"),
        text_encoder_2=parts["clip_g"], tokenizer_2=clip_tokenizer("clip_g"),
        text_encoder_3=parts["t5xxl"], tokenizer_3=t5_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- a pytest fixture (import it into a test module to use it) ------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture(scope="session")
    def sd3_models(tmp_path_factory):
        """(models root in ComfyUI's layout, the parts, their files) for an SD3.5-style tiny model."""
        import torch

        torch.set_num_threads(1)
        root = tmp_path_factory.mktemp("sd3_models")
        parts = build_sd3_parts()
        return root, parts, write_sd3_files(root, parts)
