"""The Flux.1 case of bench/end_to_end.py: genloom's nodes against diffusers' FluxPipeline on one set
of random weights at Flux's real width (3072, 24 heads of 128, MLP 4x), bfloat16, 1 step.

Depth: the full transformer (19 double + 38 single blocks, 11.9 B parameters, 24 GB in bfloat16) on
an accelerator with room for it; on a smaller machine (this 23 GiB, 2-core CPU box) the largest
useful cut at full width, by default 1 + 2 blocks: the per-step overhead of the node layer and the
packing around the network is what this measures, and it does not depend on depth. Text encoders
are one-layer CLIP-L (768) and T5 (4096) of the real widths, the VAE is Flux's `ae` configuration.
"""

from __future__ import annotations

import torch

PROMPT = "a red fox sitting in fresh snow"
FULL_DEPTH = (19, 38)


def parts(depth: tuple[int, int], dtype):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from genloom.diffusion.models.text_encoders import clip_tokenizer, t5_tokenizer

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(num_layers=depth[0], num_single_layers=depth[1], guidance_embeds=True)
    tok, t5tok = clip_tokenizer("clip_l"), t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=1, num_attention_heads=12, bos_token_id=49406,
                                        eos_token_id=49407))
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5tok), d_model=4096, d_kv=64, d_ff=1024, num_layers=1,
                                 num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                 use_cache=False))
    vae = AutoencoderKL(latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)
    mods = [m.eval().requires_grad_(False).to(dtype) for m in (transformer, clip, t5, vae)]
    return mods, tok, t5tok


def handles(mods, tok, t5tok):
    from genloom.diffusion.models.flux_model import FluxHandle
    from genloom.diffusion.models.handles import ClipHandle, VaeHandle

    transformer, clip, t5, vae = mods
    return (FluxHandle.of(transformer, name="flux-random"),
            ClipHandle(tokenizers=(tok, t5tok), text_encoders=(clip, t5), kind="flux", roles=("clip_l", "t5xxl")),
            VaeHandle(vae=vae, name="flux-ae-random"))


def run_pipeline(pipe, size: int):
    def call(seed):
        return pipe(PROMPT, height=size, width=size, num_inference_steps=1, guidance_scale=3.5,
                    max_sequence_length=256, generator=torch.Generator("cpu").manual_seed(seed)).images
    return call


def run_nodes(model, clip, vae, size: int):
    import numpy as np
    from PIL import Image

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.flux import FluxGuidance
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.sd3 import EmptySD3LatentImage

    def call(seed):
        (pos,) = FluxGuidance().run(CLIPTextEncode().run(PROMPT, clip)[0], 3.5)
        (latent,) = EmptySD3LatentImage().run(size, size, 1)
        (samples,) = KSampler().run(model, seed, 1, 1.0, "euler", "simple", pos, pos, latent, 1.0)
        (images,) = VAEDecode().run(samples, vae)
        arrays = (images.numpy() * 255.0).round().astype(np.uint8)  # as the pipeline's PIL output
        return [Image.fromarray(a) for a in arrays]
    return call


def sides(device: str, size: int, depth):
    """(genloom's call, the pipeline's call, transformer parameters in billions)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    mods, tok, t5tok = parts(tuple(depth), torch.bfloat16)
    model, clip, vae = handles(mods, tok, t5tok)
    on_device = [m.to(device) for m in mods] if device != "cpu" else mods
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=on_device[3], text_encoder=on_device[1], tokenizer=tok,
                        text_encoder_2=on_device[2], tokenizer_2=t5tok, transformer=on_device[0])
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in mods[0].parameters()) / 1e9
    return run_nodes(model, clip, vae, size), run_pipeline(pipe, size), params


def flux_row(device: str, size: int, depth: tuple[int, int] | None, reps: int, best_of):
    """(row for report(), a line saying what ran)."""
    from peak import described, peaks

    if depth is None:
        depth = FULL_DEPTH if device.startswith("cuda") else (1, 2)
    ours_fn, ref_fn, params = sides(device, size, depth)
    ref, ours = best_of([ref_fn, ours_fn], reps, device)
    memory = described(*peaks("flux_case", device, (size, list(depth)), (ours_fn, ref_fn)))
    note = (f"flux random weights: width 3072, {depth[0]} double + {depth[1]} single blocks "
            f"({params:.2f} B params{'' if tuple(depth) == FULL_DEPTH else ', cut from 19 + 38 to fit'}), bfloat16, "
            f"{size}x{size} px, 1 euler step; {memory}")
    return ("flux/nodes", ours, ref), note
