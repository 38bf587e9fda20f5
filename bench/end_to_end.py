"""Text-to-image through genloom against the plain diffusers pipeline, on the same model in one run.

    .venv/bin/python bench/end_to_end.py [--reps 5] [--steps 20] [--skip-full] [--device auto] [--threads 1]

Cases (printed as one table, genloom / pipeline = ratio, target <= 1.05):
  tiny/engine  genloom.Engine running an API-format workflow (a new seed each run, so the sampler
               and decoder really run; the loader and text encoders are served from the cache, as
               in real use) against `pipe(prompt, ...)` on the same diffusers folder.
  tiny/nodes   CLIPTextEncode x2 + EmptyLatentImage + KSampler + VAEDecode called directly, no
               cache, sharing the pipeline's modules: the cost of the node layer itself.
  sd15/nodes   the same with the full-size SD1.5 UNet/VAE/CLIP architecture (random weights from
               the shipped config), small resolution, 2 steps: per-step overhead on a real-size net.
  flux/nodes   Flux.1 dev at its real width through CLIPTextEncode + FluxGuidance + KSampler +
               VAEDecode against FluxPipeline, bfloat16, 1 step (bench/flux_case.py says the depth).
  sd3/nodes    SD3 medium's transformer at full size (random weights, bfloat16) through CLIPTextEncode +
               KSampler + VAEDecode against StableDiffusion3Pipeline, 1 step (bench/sd3_case.py).
  wan/nodes    Wan 2.1 1.3B at full size (random weights, bfloat16): EmptyHunyuanLatentVideo + KSampler +
               VAEDecode against WanPipeline, 5 frames, 1 step, with peak memory (bench/wan_case.py).
  flux2/nodes  Flux.2 Klein 4B's transformer against Flux2KleinPipeline, 1 step (bench/flux2_case.py says the depth).
  zimage/nodes Z-Image Turbo's transformer at its real width against ZImagePipeline, 1 step at cfg 1
               (bench/z_image_case.py says the depth).
Qwen-Image's transformer does not fit this machine's memory: a line gives its size instead of a row.
The tiny model is models/diffusers/genloom-tiny when it exists, else one built from small configs.
Times are the best of --reps runs, wall clock and process CPU time (CPU time is steadier on a
shared machine). The device is CUDA when torch sees one (float16 UNet on both sides), else the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from genloom.diffusion.models.loading import CONFIGS, assemble, load_diffusers_folder, make_tokenizer
from genloom.engine import context
from genloom.engine.folders import PACKAGE_ROOT, Folders

PROMPT = "a red circle on a blue background"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fns: list, reps: int, device: str) -> list[tuple[float, float]]:
    """(best wall seconds, best process CPU seconds) of each function over `reps` rounds.

    The functions take turns within each round, in an order that alternates from round to round, so
    load from other processes, and whatever the one before leaves behind, hit them alike."""
    for fn in fns:
        fn(0)  # warm-up: first-call allocations and kernel selection
    sync(device)
    walls = [[] for _ in fns]
    cpus = [[] for _ in fns]
    for i in range(reps):
        order = list(enumerate(fns))
        for k, fn in (order if i % 2 == 0 else order[::-1]):
            w, c = time.perf_counter(), time.process_time()
            fn(i + 1)
            sync(device)
            walls[k].append(time.perf_counter() - w)
            cpus[k].append(time.process_time() - c)
    return [(min(w), min(c)) for w, c in zip(walls, cpus)]


def tiny_folder(tmp: Path) -> Path:
    """The shipped tiny model, or a small random SD1-layout model saved as a diffusers folder."""
    shipped = PACKAGE_ROOT / "models" / "diffusers" / "genloom-tiny"
    if (shipped / "model_index.json").is_file():
        return shipped
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = make_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                norm_num_groups=8, cross_attention_dim=64, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=1)
    sched = EulerDiscreteScheduler.from_config(json.loads((CONFIGS / "sd1" / "scheduler" /
                                                           "scheduler_config.json").read_text()))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp / "diffusers" / "bench-tiny"
    pipe.save_pretrained(str(folder))
    return folder


def sd15_bundle():
    """Full-size SD1.5 components with random weights, from the shipped configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    def cfg(part):
        return json.loads((CONFIGS / "sd1" / part / "config.json").read_text())

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg("unet")).eval().requires_grad_(False)
    vae = AutoencoderKL.from_config(cfg("vae")).eval().requires_grad_(False)
    text = CLIPTextModel(CLIPTextConfig(**cfg("text_encoder"))).eval().requires_grad_(False)
    sched = json.loads((CONFIGS / "sd1" / "scheduler" / "scheduler_config.json").read_text())
    return assemble(unet, vae, [text], [make_tokenizer()], sched, "sd15-random")


def pipeline_for(bundle, device: str):
    """A StableDiffusionPipeline on the bundle's modules (its own float16 copies on CUDA)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    parts = dict(unet=bundle.model.unet, vae=bundle.vae.vae, text_encoder=bundle.clip.text_encoders[0])
    if device != "cpu":
        parts = {k: copy.deepcopy(v).to(device, torch.float16) for k, v in parts.items()}
    sched = EulerDiscreteScheduler.from_config(bundle.model.scheduler_config, timestep_spacing="linspace")
    pipe = StableDiffusionPipeline(tokenizer=bundle.clip.tokenizers[0], scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, size: int, steps: int, cfg: float):
    def call(seed):
        return pipe(PROMPT, negative_prompt="", height=size, width=size, num_inference_steps=steps,
                    guidance_scale=cfg, generator=torch.Generator("cpu").manual_seed(seed)).images
    return call


def run_nodes(bundle, latent_size: int, steps: int, cfg: float):
    import numpy as np
    from PIL import Image

    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode
    from genloom.nodes.ksampler import KSampler

    def call(seed):
        (pos,) = CLIPTextEncode().run(PROMPT, bundle.clip)
        (neg,) = CLIPTextEncode().run("", bundle.clip)
        (latent,) = EmptyLatentImage().run(latent_size * 8, latent_size * 8, 1)
        (samples,) = KSampler().run(bundle.model, seed, steps, cfg, "euler", "normal", pos, neg, latent, 1.0)
        (images,) = VAEDecode().run(samples, bundle.vae)
        arrays = (images.numpy() * 255.0).round().astype(np.uint8)  # as the pipeline's PIL output
        return [Image.fromarray(a) for a in arrays]
    return call


def run_engine(models_dir: Path, name: str, latent_size: int, steps: int, cfg: float, device: str, out: Path):
    from genloom import Engine

    engine = Engine(models_dirs=[models_dir], device=device, output_dir=out, temp_dir=out)
    wf = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_name": name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": latent_size * 8, "height": latent_size * 8, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 0, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }

    def call(seed):
        wf["5"]["inputs"]["seed"] = seed
        return engine.run(wf)
    return call


def depth_arg(text: str, full: tuple[int, int]) -> tuple[int, int] | None:
    """--*-depth: auto (None: the case chooses by device), full, or two numbers."""
    if text == "auto":
        return None
    return full if text == "full" else tuple(int(v) for v in text.split(","))


def qwen_image_line() -> str:
    """Qwen-Image's size, from its full configuration (diffusers' defaults) on the meta device."""
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        params = sum(p.numel() for p in QwenImageTransformer2DModel().parameters())
    return (f"qwen-image: no row; its transformer ({params / 1e9:.2f} B params, {params * 2 / 2**30:.1f} GiB in "
            f"bfloat16) does not fit this machine's memory")


def report(rows):
    print(f"{'case':<12} {'genloom wall':>13} {'pipeline wall':>14} {'ratio':>6}   "
          f"{'genloom cpu':>12} {'pipeline cpu':>13} {'ratio':>6}")
    for name, ours, ref in rows:
        print(f"{name:<12} {ours[0]:>12.3f}s {ref[0]:>13.3f}s {ours[0] / ref[0]:>6.3f}   "
              f"{ours[1]:>11.3f}s {ref[1]:>12.3f}s {ours[1] / ref[1]:>6.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps for the tiny model")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-size SD1.5 case")
    parser.add_argument("--full-size", type=int, default=128, help="pixels for the SD1.5 case")
    parser.add_argument("--skip-flux", action="store_true", help="skip the Flux case")
    parser.add_argument("--flux-size", type=int, default=256, help="pixels for the Flux case")
    parser.add_argument("--flux-depth", default="auto",
                        help="double,single blocks for the Flux case (auto: 19,38 on CUDA, 1,2 on the CPU)")
    parser.add_argument("--skip-sd3", action="store_true", help="skip the SD3 case")
    parser.add_argument("--skip-wan", action="store_true", help="skip the Wan case")
    parser.add_argument("--skip-flux2", action="store_true", help="skip the Flux.2 Klein case")
    parser.add_argument("--flux2-depth", default="auto",
                        help="double,single blocks for the Flux.2 case, or full (auto: full on CUDA, 1,2 on the CPU)")
    parser.add_argument("--skip-z-image", action="store_true", help="skip the Z-Image case")
    parser.add_argument("--z-image-depth", default="auto",
                        help="refiner,main blocks for the Z-Image case, or full (auto: full on CUDA, 1,2 on the CPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 gives steady figures on a shared machine)")
    args = parser.parse_args(argv)
    device = context.resolve_device(args.device)
    if device == "cpu":
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {args.reps} reps (best of), "
          f"{torch.get_num_threads()} CPU threads")

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = tiny_folder(tmp)
        models_dir = folder.parent.parent
        bundle = load_diffusers_folder(folder)
        pipe = pipeline_for(bundle, device)
        latent = 8  # 8x8 latents: 64 px with an 8x VAE
        size = latent * pipe.vae_scale_factor
        print(f"tiny model {folder.name}: {size}x{size} px, {args.steps} euler steps, cfg {args.cfg}")
        ctx = context.RunContext(device_choice=device, folders=Folders(models_dirs=[models_dir]))
        token = context.use(ctx)
        try:
            ref, engine, nodes = best_of(
                [run_pipeline(pipe, size, args.steps, args.cfg),
                 run_engine(models_dir, folder.name, latent, args.steps, args.cfg, device, tmp / "out"),
                 run_nodes(bundle, latent, args.steps, args.cfg)], args.reps, device)
            rows += [("tiny/engine", engine, ref), ("tiny/nodes", nodes, ref)]
            del pipe
            if not args.skip_full:
                full = sd15_bundle()
                pipe = pipeline_for(full, device)
                fl = args.full_size // 8
                print(f"sd15 random weights: {fl * 8}x{fl * 8} px, 2 euler steps")
                ref, nodes = best_of([run_pipeline(pipe, fl * 8, 2, args.cfg),
                                      run_nodes(full, fl, 2, args.cfg)], max(1, args.reps // 2), device)
                rows.append(("sd15/nodes", nodes, ref))
            if not args.skip_flux:
                from flux_case import flux_row

                depth = None if args.flux_depth == "auto" else tuple(int(v) for v in args.flux_depth.split(","))
                row, note = flux_row(device, args.flux_size, depth, max(1, args.reps // 2), best_of)
                print(note)
                rows.append(row)
            if not args.skip_sd3:
                from sd3_case import sd3_row

                row, note = sd3_row(device, 256, max(1, args.reps // 2), best_of)
                print(note)
                rows.append(row)
            if not args.skip_flux2:
                from flux2_case import FULL_DEPTH, flux2_row

                row, note = flux2_row(device, 128, depth_arg(args.flux2_depth, FULL_DEPTH),
                                      max(1, args.reps // 2), best_of)
                print(note)
                rows.append(row)
            if not args.skip_z_image:
                from z_image_case import FULL_DEPTH as Z_FULL
                from z_image_case import z_image_row

                row, note = z_image_row(device, 128, depth_arg(args.z_image_depth, Z_FULL),
                                        max(1, args.reps // 2), best_of)
                print(note)
                rows.append(row)
            print(qwen_image_line())
            if not args.skip_wan:
                from wan_case import wan_row

                row, note = wan_row(device, 64, 5, max(1, args.reps // 2), best_of)
                print(note)
                rows.append(row)
        finally:
            context.reset(token)
    report(rows)


if __name__ == "__main__":
    main()
