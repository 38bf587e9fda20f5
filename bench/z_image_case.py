"""The Z-Image case of bench/end_to_end.py: genloom's nodes against diffusers' ZImagePipeline on one set of
random weights at Z-Image Turbo's real width (3840, 30 heads of 128, caption width 2560), bfloat16, 1 step
without CFG (Turbo's setting: cfg 1 here, guidance_scale 0 in the pipeline).

Depth: the full transformer (2 noise + 2 context refiner blocks and 30 main blocks, 6.15 B parameters,
11.5 GiB in bfloat16) on an accelerator; on the CPU by default 1 + 1 refiner and 2 main blocks at full
width (what this measures is the node layer's overhead around the network; a full-depth step takes
minutes per side on one CPU thread). The text encoder is a narrow Qwen3 of Qwen3-4B's width (the
pipeline reads its second-to-last layer); the VAE is the Flux `ae` configuration.
"""

from __future__ import annotations

import torch

PROMPT = "a red fox sitting in fresh snow"
FULL_DEPTH = (2, 30)  # (refiner blocks of each kind, main blocks)
# The generation prompt as a Jinja expression: Jinja drops a template's trailing newline, and the pipeline would
# then encode one token fewer than genloom's (and ComfyUI's) `...<|im_start|>assistant\n`.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{{ '<|im_start|>assistant\\n' }}")


def parts(depth: tuple[int, int], dtype):
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    from genloom.diffusion.models.llm_encoders import SHIPPED_TOKENIZER

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bfloat16: no float32 copy of the weights in the peak RSS
    try:
        transformer = ZImageTransformer2DModel(n_refiner_layers=depth[0], n_layers=depth[1])  # defaults: Z-Image's
    finally:
        torch.set_default_dtype(previous)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(SHIPPED_TOKENIZER))
    tokenizer.chat_template = TEMPLATE
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=2560, intermediate_size=1024,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=128, tie_word_embeddings=True))
    vae = AutoencoderKL(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
    mods = [m.eval().requires_grad_(False).to(dtype) for m in (transformer, qwen3, vae)]
    return mods, tokenizer


def full_params() -> float:
    """Billions of parameters of the full Z-Image transformer (built on the meta device)."""
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        return sum(p.numel() for p in ZImageTransformer2DModel().parameters()) / 1e9


def sides(device: str, size: int, depth):
    """(genloom's call, the pipeline's call, transformer parameters in billions)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from genloom.diffusion.models.families import z_image
    from genloom.diffusion.models.handles import ClipHandle, VaeHandle
    from genloom.diffusion.sampling import latent_formats, model_sampling
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.custom_sampling import BasicGuider, BasicScheduler, KSamplerSelect, RandomNoise
    from genloom.nodes.custom_sampling import SamplerCustomAdvanced
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.sd3 import EmptySD3LatentImage

    mods, tokenizer = parts(tuple(depth), torch.bfloat16)
    transformer, qwen3, vae = [m.to(device) for m in mods]
    sampling = model_sampling.flow(shift=z_image.SHIFT, multiplier=1.0)
    model = z_image.ZImageHandle(unet=transformer, latent_channels=16, vae_scale_factor=8, name="z-image-random",
                                 prediction_type="flow", sampling=sampling, latent_format=latent_formats.FLUX)
    clip = ClipHandle(tokenizers=(tokenizer,), text_encoders=(qwen3,), kind="z_image", roles=("qwen3_4b",))
    vae_handle = VaeHandle(vae=vae, name="flux-ae-random")
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=z_image.SHIFT), vae=vae,
                          text_encoder=qwen3.model, tokenizer=tokenizer, transformer=transformer)  # Qwen3Model: no head
    pipe.set_progress_bar_config(disable=True)

    def ours(seed):
        (cond,) = CLIPTextEncode().run(PROMPT, clip)
        (latent,) = EmptySD3LatentImage().run(size, size, 1)
        out, _ = SamplerCustomAdvanced().run(RandomNoise().run(seed)[0], BasicGuider().run(model, cond)[0],
                                             KSamplerSelect().run("euler")[0],
                                             BasicScheduler().run(model, "simple", 1, 1.0)[0], latent)
        return VAEDecode().run(out, vae_handle)[0]

    def ref(seed):
        return pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=1, guidance_scale=0.0,
                    output_type="pt", generator=torch.Generator("cpu").manual_seed(seed)).images

    return ours, ref, sum(p.numel() for p in transformer.parameters()) / 1e9


def z_image_row(device: str, size: int, depth: tuple[int, int] | None, reps: int, best_of):
    """(row for report(), a line saying what ran)."""
    from flux2_case import measured

    if depth is None:
        depth = FULL_DEPTH if device.startswith("cuda") else (1, 2)
    ours_t, ref_t, params, memory = measured("z_image_case", device, size, depth, reps, best_of)
    cut = "" if tuple(depth) == FULL_DEPTH else f", cut from the full {full_params():.2f} B (2 + 2 refiner + 30) to fit"
    note = (f"z-image random weights: Turbo width 3840, {depth[0]} + {depth[0]} refiner + {depth[1]} main blocks "
            f"({params:.2f} B params{cut}), bfloat16, {size}x{size} px, 1 euler step at cfg 1; {memory}")
    return ("zimage/nodes", ours_t, ref_t), note
