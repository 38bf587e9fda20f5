"""The Flux.2 case of bench/end_to_end.py: genloom's nodes against diffusers' Flux2KleinPipeline on one set
of random weights at Flux.2 Klein 4B's real width (3072, 24 heads of 128, MLP 3x, text width 3 x 2560),
bfloat16, 1 step at cfg 1 (the distilled Klein's setting).

Depth: the full Klein 4B transformer (5 double + 20 single blocks, 3.9 B parameters, 7.2 GiB in bfloat16) on
an accelerator; on the CPU by default 1 + 2 blocks at full width (the node layer's overhead around the
network is what this measures). Flux.2 dev's transformer (32.2 B parameters, 60 GiB in bfloat16) does not fit
the machines this bench runs on. The text encoder is a narrow Qwen3 of Qwen3-4B's width, deep enough for
the layers Klein reads (9, 18, 27); the VAE is Flux.2's configuration.
"""

from __future__ import annotations

import torch

PROMPT = "a red fox sitting in fresh snow"
FULL_DEPTH = (5, 20)


def parts(depth: tuple[int, int], dtype):
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    from genloom.diffusion.models.llm_encoders import SHIPPED_TOKENIZER

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bfloat16: no float32 copy of 4 B weights in the peak RSS
    try:
        transformer = Flux2Transformer2DModel(num_layers=depth[0], num_single_layers=depth[1], num_attention_heads=24,
                                              joint_attention_dim=3 * 2560, guidance_embeds=False)
    finally:
        torch.set_default_dtype(previous)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(SHIPPED_TOKENIZER))
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=2560, intermediate_size=1024,
                                         num_hidden_layers=28, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=128, tie_word_embeddings=True))
    vae = AutoencoderKLFlux2()
    mods = [m.eval().requires_grad_(False).to(dtype) for m in (transformer, qwen3, vae)]
    return mods, tokenizer


def sides(device: str, size: int, depth):
    """(genloom's call, the pipeline's call, transformer parameters in billions)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from genloom.diffusion.models import flux2_text
    from genloom.diffusion.models.families.flux2 import Flux2Handle
    from genloom.diffusion.models.flux2_vae import Flux2VaeHandle
    from genloom.diffusion.models.handles import ClipHandle
    from genloom.diffusion.sampling import latent_formats, model_sampling
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.custom_sampling import BasicGuider, KSamplerSelect, RandomNoise, SamplerCustomAdvanced
    from genloom.nodes.flux import EmptyFlux2LatentImage, Flux2Scheduler
    from genloom.nodes.latent import VAEDecode

    mods, tokenizer = parts(tuple(depth), torch.bfloat16)
    transformer, qwen3, vae = [m.to(device) for m in mods]
    model = Flux2Handle(unet=transformer, latent_channels=128, vae_scale_factor=16, name="klein-random",
                        sampling=model_sampling.flux(2.02), latent_format=latent_formats.LatentFormat(channels=128))
    clip = ClipHandle(tokenizers=(tokenizer,), text_encoders=(qwen3,), kind="flux2", roles=("qwen3_4b",),
                      family_encode=flux2_text.encode)
    vae_handle = Flux2VaeHandle(vae=vae, name="flux2-vae-random")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}<|im_start|>assistant\n<think>\n\n</think>\n\n")
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True,
                                                                        time_shift_type="exponential"),
                              vae=vae, text_encoder=qwen3, tokenizer=tokenizer, transformer=transformer,
                              is_distilled=True)
    pipe.set_progress_bar_config(disable=True)

    def ours(seed):
        (cond,) = CLIPTextEncode().run(PROMPT, clip)
        (latent,) = EmptyFlux2LatentImage().run(size, size, 1)
        out, _ = SamplerCustomAdvanced().run(RandomNoise().run(seed)[0], BasicGuider().run(model, cond)[0],
                                             KSamplerSelect().run("euler")[0], Flux2Scheduler().run(1, size, size)[0],
                                             latent)
        return VAEDecode().run(out, vae_handle)[0]

    def ref(seed):
        return pipe(prompt=PROMPT, height=size, width=size, num_inference_steps=1, guidance_scale=1.0, output_type="pt",
                    generator=torch.Generator("cpu").manual_seed(seed)).images

    return ours, ref, sum(p.numel() for p in transformer.parameters()) / 1e9


def flux2_row(device: str, size: int, depth: tuple[int, int] | None, reps: int, best_of):
    """(row for report(), a line saying what ran)."""
    if depth is None:
        depth = FULL_DEPTH if device.startswith("cuda") else (1, 2)
    ours_t, ref_t, params, memory = measured("flux2_case", device, size, depth, reps, best_of)
    note = (f"flux2 random weights: Klein 4B width 3072, {depth[0]} double + {depth[1]} single blocks "
            f"({params:.2f} B params{'' if tuple(depth) == FULL_DEPTH else ', cut from 5 + 20 to fit'}), bfloat16, "
            f"{size}x{size} px, 1 euler step at cfg 1; {memory}")
    return ("flux2/nodes", ours_t, ref_t), note


def measured(module: str, device: str, size: int, depth, reps: int, best_of):
    """(genloom times, pipeline times, params, memory line) of a case module's sides. On the CPU the
    peaks come first, so the timing process's weights are not resident while the measuring processes
    build theirs (full depth then fits in half the memory)."""
    import importlib

    from peak import described, peaks

    memory = None if device.startswith("cuda") else described(*peaks(module, device, (size, list(depth))))
    ours, ref, params = importlib.import_module(module).sides(device, size, depth)
    ref_t, ours_t = best_of([ref, ours], reps, device)
    memory = memory or described(*peaks(module, device, (size, list(depth)), (ours, ref)))
    return ours_t, ref_t, params, memory
