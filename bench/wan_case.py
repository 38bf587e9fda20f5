"""The Wan case of bench/end_to_end.py: genloom's nodes against diffusers' WanPipeline on one set of
random weights at Wan 2.1 1.3B's full architecture (width 1536, 12 heads of 128, 30 blocks, MLP
8960, text width 4096), its real VAE configuration, bfloat16, 1 step, a few frames.

    .venv/bin/python bench/wan_case.py [--size 64] [--frames 5] [--reps 2] [--device auto]

Both sides get the same text embeddings (a 512-token UMT5 output of the real width: the text encoder
is not what this measures) and the same noise; genloom runs KSampler + VAEDecode (the node layer, the
denoiser and the latent format), the pipeline its own loop and decode. Peak memory is the accelerator's
peak allocation on CUDA; on the CPU each side runs once more in a fresh process of its own and its peak
resident set is reported (bench/peak.py).
"""

from __future__ import annotations

import argparse

import torch

WAN_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
               out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30)


def parts(dtype):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bfloat16: the peak memory is not a float32 copy's
    try:
        transformer = WanTransformer3DModel(**WAN_13B).eval().requires_grad_(False).to(dtype)
        vae = AutoencoderKLWan().eval().requires_grad_(False).to(dtype)
    finally:
        torch.set_default_dtype(previous)
    return transformer, vae


def sides(device: str, size: int, frames: int):
    """(genloom's call, the pipeline's call, parameters in billions) on one set of random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from genloom.diffusion.models.families.wan import WanHandle, wan21_format
    from genloom.diffusion.models.wan_vae import VideoVaeHandle
    from genloom.diffusion.sampling import model_sampling
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.wan import EmptyHunyuanLatentVideo

    dtype = torch.bfloat16
    transformer, vae = parts(dtype)
    transformer, vae = transformer.to(device), vae.to(device)
    model = WanHandle(unet=transformer, latent_channels=16, vae_scale_factor=8, name="wan-1.3b-random",
                      prediction_type="flow", sampling=model_sampling.flow(shift=8.0), latent_format=wan21_format())
    video_vae = VideoVaeHandle(vae=vae, name="wan-vae-random")
    embeds = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(1))
    pos = [[embeds, {}]]
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0))
    pipe.set_progress_bar_config(disable=True)

    def ours(seed):
        (latent,) = EmptyHunyuanLatentVideo().run(size, size, frames, 1)
        (samples,) = KSampler().run(model, seed, 1, 1.0, "euler", "normal", pos, pos, latent, 1.0)
        return VAEDecode().run(samples, video_vae)[0]

    def ref(seed):
        return pipe(prompt_embeds=embeds.to(device, dtype), height=size, width=size, num_frames=frames,
                    num_inference_steps=1, guidance_scale=1.0, output_type="pt",
                    generator=torch.Generator("cpu").manual_seed(seed)).frames

    return ours, ref, sum(p.numel() for p in transformer.parameters()) / 1e9


def wan_row(device: str, size: int, frames: int, reps: int, best_of):
    """(row for report(), a line saying what ran)."""
    from peak import described, peaks

    ours, ref, params = sides(device, size, frames)
    ref_t, ours_t = best_of([ref, ours], reps, device)
    memory = described(*peaks("wan_case", device, (size, frames), (ours, ref)))
    note = (f"wan random weights: Wan 2.1 1.3B architecture ({params:.2f} B params), bfloat16, {size}x{size} px, "
            f"{frames} frames, 1 euler step; {memory}")
    return ("wan/nodes", ours_t, ref_t), note


def main(argv=None):
    import end_to_end

    from genloom.engine import context
    from genloom.engine.folders import Folders

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    token = context.use(context.RunContext(device_choice=device, folders=Folders(), options={"previews": False}))
    try:
        row, note = wan_row(device, args.size, args.frames, args.reps, end_to_end.best_of)
    finally:
        context.reset(token)
    print(note)
    end_to_end.report([row])


if __name__ == "__main__":
    main()
