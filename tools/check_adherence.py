"""Does the shipped tiny model draw what it is asked? Generate from seeded prompts and judge the pixels.

Prints three accuracies (shape colour, background colour, shape class) over a fixed set of prompts.
Two backends make the same pictures by different roads: `diffusers` (StableDiffusionPipeline on the
shipped folder) checks the model itself; `genloom` runs workflows/txt2img.json through genloom.Engine
and so checks the loaders, samplers and nodes too. Settings default to the shipped workflow's.

    python tools/check_adherence.py                      # 50 prompts, diffusers backend
    python tools/check_adherence.py --backend genloom --n 12
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "diffusers" / "genloom-tiny"
DEFAULT_WORKFLOW = REPO / "workflows" / "txt2img.json"
PROMPT_SEED = 2024

# What the shipped txt2img workflow uses when it cannot be read (kept in step with it and docs/tiny-model.md).
DEFAULTS = {"steps": 20, "cfg": 3.5, "sampler_name": "euler", "scheduler": "normal", "width": 64, "height": 64,
            "seed": 0, "negative": ""}


# ---- the workflow -------------------------------------------------------------------------------

def _api_nodes(workflow: dict) -> dict:
    """The API-format node map inside a workflow file: bare, or wrapped under "graph" (genloom's envelope)
    or "prompt"."""
    nodes = next((workflow[k] for k in ("graph", "prompt") if isinstance(workflow.get(k), dict)), workflow)
    if not all(isinstance(v, dict) and "class_type" in v for v in nodes.values()):
        raise ValueError("txt2img workflow is not in API format (a map of id -> {class_type, inputs})")
    return nodes


def _find(nodes: dict, class_type: str) -> str:
    ids = [i for i, n in nodes.items() if n["class_type"] == class_type]
    if len(ids) != 1:
        raise ValueError(f"expected one {class_type} node in the txt2img workflow, found {len(ids)}")
    return ids[0]


def workflow_settings(path: Path) -> dict:
    """Sampling settings of the shipped workflow, so both backends judge what users get by default."""
    settings = dict(DEFAULTS)
    if not path.is_file():
        return settings
    nodes = _api_nodes(json.loads(path.read_text()))
    ks = nodes[_find(nodes, "KSampler")]["inputs"]
    latent = nodes[_find(nodes, "EmptyLatentImage")]["inputs"]
    for key in ("steps", "cfg", "sampler_name", "scheduler", "seed"):
        if not isinstance(ks.get(key), list):
            settings[key] = ks[key]
    for key in ("width", "height"):
        if not isinstance(latent.get(key), list):
            settings[key] = latent[key]
    negative = ks.get("negative")
    if isinstance(negative, list) and isinstance(nodes[negative[0]]["inputs"].get("text"), str):
        settings["negative"] = nodes[negative[0]]["inputs"]["text"]
    return settings


# ---- backends -----------------------------------------------------------------------------------

def _diffusers_scheduler(base_config: dict, sampler_name: str, scheduler: str):
    """The diffusers scheduler matching a ComfyUI (sampler_name, scheduler) pair, built from the model's own config."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, UniPCMultistepScheduler)

    classes = {"euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler,
               "ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler, "uni_pc": UniPCMultistepScheduler}
    if sampler_name not in classes:
        raise ValueError(f"sampler_name {sampler_name!r} has no diffusers twin here; use one of {sorted(classes)}")
    if scheduler not in ("normal", "karras"):
        raise ValueError(f"scheduler {scheduler!r} not supported here; use 'normal' or 'karras'")
    extra = {"use_karras_sigmas": True} if scheduler == "karras" else {}
    return classes[sampler_name].from_config(base_config, **extra)


def generate_diffusers(model: Path, prompts: list[str], seeds: list[int], settings: dict, batch: int = 25):
    """uint8 pictures from StableDiffusionPipeline; the initial noise per prompt is torch.randn from its seed on
    the CPU, the way ComfyUI-style samplers draw it, so both backends start from the same latents."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.scheduler = _diffusers_scheduler(dict(pipe.scheduler.config), settings["sampler_name"], settings["scheduler"])
    pipe.set_progress_bar_config(disable=True)
    # width/height follow EmptyLatentImage (latents are 1/8 of them, as in ComfyUI); the picture is the
    # latent times this VAE's own factor, so the same settings mean the same latents in both backends.
    h, w = settings["height"] // 8, settings["width"] // 8
    f = pipe.vae_scale_factor
    images = []
    for i in range(0, len(prompts), batch):
        chunk, chunk_seeds = prompts[i:i + batch], seeds[i:i + batch]
        noise = torch.cat([torch.randn((1, 4, h, w), generator=torch.Generator().manual_seed(s)) for s in chunk_seeds])
        init = float(pipe.scheduler.init_noise_sigma)
        if init > 1.0:  # ComfyUI starts at noise * sqrt(1 + sigma_max^2), diffusers' Euler at sigma_max
            noise = noise * (1 + float(pipe.scheduler.sigmas.max()) ** 2) ** 0.5 / init
        out = pipe(chunk, negative_prompt=[settings["negative"]] * len(chunk), latents=noise,
                   num_inference_steps=settings["steps"], guidance_scale=settings["cfg"],
                   height=h * f, width=w * f, output_type="np").images
        images.extend((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return images


def generate_genloom(workflow_path: Path, prompts: list[str], seeds: list[int], settings: dict):
    """uint8 pictures from genloom.Engine running the shipped workflow with prompt and seed overridden."""
    import genloom

    nodes = _api_nodes(json.loads(workflow_path.read_text()))
    ks_id = _find(nodes, "KSampler")
    save_id = _find(nodes, "SaveImage")
    positive = nodes[ks_id]["inputs"]["positive"]
    images = []
    with tempfile.TemporaryDirectory() as out_dir:
        engine = genloom.Engine(output_dir=out_dir)
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            wf = copy.deepcopy(nodes)
            wf[positive[0]]["inputs"]["text"] = prompt
            wf[ks_id]["inputs"].update(seed=seed, steps=settings["steps"], cfg=settings["cfg"],
                                       sampler_name=settings["sampler_name"], scheduler=settings["scheduler"])
            wf[save_id]["inputs"]["filename_prefix"] = f"adherence_{i:03d}"
            images.append(saved_picture(engine.run(wf), save_id, out_dir))
    return images


def saved_picture(result, save_id: str, out_dir) -> np.ndarray:
    """The first picture a run's SaveImage node wrote, as uint8 RGB."""
    from PIL import Image

    info = result.outputs[save_id]["images"][0]
    return np.asarray(Image.open(Path(out_dir, info.get("subfolder", ""), info["filename"])).convert("RGB"))


# ---- driver -------------------------------------------------------------------------------------

def run(backend: str = "diffusers", n: int = 50, model: Path = DEFAULT_MODEL, workflow: Path = DEFAULT_WORKFLOW,
        threads: int = 2, grid: Path | None = None, **overrides) -> dict:
    """Generate for the first n of the fixed prompts and return accuracies, settings and timing."""
    import torch

    torch.set_num_threads(threads)
    settings = workflow_settings(workflow)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    samples = shapes.prompts(n, PROMPT_SEED)
    prompts = [s.caption for s in samples]
    seeds = [settings["seed"] + i for i in range(n)]
    t = time.perf_counter()
    if backend == "diffusers":
        images = generate_diffusers(model, prompts, seeds, settings)
    elif backend == "genloom":
        images = generate_genloom(workflow, prompts, seeds, settings)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    seconds = time.perf_counter() - t
    if grid is not None:
        _save_grid(images, grid)
    return {"backend": backend, "n": n, "settings": settings, "accuracy": shapes.score(images, samples),
            "seconds": round(seconds, 2), "images": images, "samples": samples}


def _save_grid(images, path: Path, cols: int = 10) -> None:
    from PIL import Image

    rows = [np.concatenate(list(images[i:i + cols]) + [np.zeros_like(images[0])] * (cols - len(images[i:i + cols])), 1)
            for i in range(0, len(images), cols)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("diffusers", "genloom"), default="diffusers")
    ap.add_argument("--n", type=int, default=50, help="how many of the fixed prompts to generate")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="diffusers folder (diffusers backend)")
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--cfg", type=float)
    ap.add_argument("--sampler-name", dest="sampler_name")
    ap.add_argument("--scheduler")
    ap.add_argument("--seed", type=int, help="seed of the first prompt; prompt i uses seed + i")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=Path, help="save the pictures as one PNG grid here")
    args = ap.parse_args(argv)
    result = run(args.backend, args.n, args.model, args.workflow, args.threads, args.grid, steps=args.steps,
                 cfg=args.cfg, sampler_name=args.sampler_name, scheduler=args.scheduler, seed=args.seed)
    acc = result["accuracy"]
    print(f"backend {result['backend']}, {result['n']} prompts, settings {json.dumps(result['settings'])}")
    print(f"shape colour {acc['colour']:.1%}  background {acc['background']:.1%}  shape class {acc['shape']:.1%}  "
          f"({result['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
