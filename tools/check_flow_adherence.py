"""Does genloom-flow draw what it is asked? GenEval-style: held-out prompts, judged from pixels.

Generates one picture per held-out prompt (tools/scenes.py: prompts never drawn for training) by
running workflows/flux_txt2img.json through genloom.Engine with the prompt and seed overridden, and
prints the share right per category: single object, colours, background, size, two objects, counting,
position. Prompt i uses noise seed `seed + i`.

    python tools/check_flow_adherence.py                  # 30 prompts of each kind
    python tools/check_flow_adherence.py --n 10 --grid /tmp/flow.png
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenes  # noqa: E402
from check_adherence import _api_nodes, _find, _save_grid, saved_picture  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORKFLOW = REPO / "workflows" / "flux_txt2img.json"
PROMPT_SEED = 2025


def generate(workflow_path: Path, prompts: list[str], seeds: list[int], guidance: float | None = None,
             steps: int | None = None, models_dirs: list | None = None):
    """uint8 pictures from genloom.Engine running the workflow with prompt and noise seed overridden."""
    import genloom

    nodes = _api_nodes(json.loads(workflow_path.read_text()))
    text_id, noise_id = _find(nodes, "CLIPTextEncode"), _find(nodes, "RandomNoise")
    guidance_id, sched_id = _find(nodes, "FluxGuidance"), _find(nodes, "BasicScheduler")
    save_id = _find(nodes, "SaveImage")
    images = []
    with tempfile.TemporaryDirectory() as out_dir:
        kwargs = {"models_dirs": models_dirs} if models_dirs else {}
        engine = genloom.Engine(output_dir=out_dir, device="cpu", **kwargs)
        for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
            wf = copy.deepcopy(nodes)
            wf[text_id]["inputs"]["text"] = prompt
            wf[noise_id]["inputs"]["noise_seed"] = seed
            if guidance is not None:
                wf[guidance_id]["inputs"]["guidance"] = guidance
            if steps is not None:
                wf[sched_id]["inputs"]["steps"] = steps
            wf[save_id]["inputs"]["filename_prefix"] = f"flow_{i:03d}"
            images.append(saved_picture(engine.run(wf), save_id, out_dir))
    return images


def run(n: int = 30, workflow: Path = DEFAULT_WORKFLOW, seed: int = 0, threads: int = 2, grid: Path | None = None,
        guidance: float | None = None, steps: int | None = None, models_dirs: list | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    prompts = scenes.held_out_prompts(n, PROMPT_SEED)
    t = time.perf_counter()
    images = generate(workflow, [s.caption for s in prompts], [seed + i for i in range(len(prompts))],
                      guidance, steps, models_dirs)
    seconds = time.perf_counter() - t
    if grid is not None:
        _save_grid(images, grid)
    return {"n": len(prompts), "accuracy": scenes.score(images, prompts), "seconds": round(seconds, 1),
            "images": images, "prompts": prompts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30, help="held-out prompts of each kind (single, count, pair)")
    ap.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the first prompt; prompt i uses seed + i")
    ap.add_argument("--guidance", type=float, help="FluxGuidance value (default: the workflow's)")
    ap.add_argument("--steps", type=int, help="BasicScheduler steps (default: the workflow's)")
    ap.add_argument("--models-dir", type=Path, action="append", help="models folder(s) instead of genloom's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=Path, help="save the pictures as one PNG grid here")
    args = ap.parse_args(argv)
    result = run(args.n, args.workflow, args.seed, args.threads, args.grid, args.guidance, args.steps,
                 args.models_dir)
    print(f"{result['n']} held-out prompts through {args.workflow.name} ({result['seconds']} s)")
    for cat, acc in result["accuracy"].items():
        print(f"  {cat:14s} {acc:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
