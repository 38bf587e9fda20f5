"""Peak memory of one call of a bench case's side, the same way for every case: the accelerator's
peak allocation on CUDA; on the CPU, the peak resident set of a fresh process that builds the
models and makes that one call (the weights, equal on both sides, included).

A case module offers `sides(device, *args) -> (genloom's call, the pipeline's call, params)`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch


def cuda_peak(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn(0)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def peaks(module: str, device: str, args: tuple, calls=None) -> tuple[list[int], str]:
    """([genloom bytes, pipeline bytes], what was measured)."""
    if device.startswith("cuda"):
        return [cuda_peak(fn) for fn in calls], "CUDA peak allocation"
    out = []
    for side in ("genloom", "pipeline"):
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import peak; "
                f"peak.child({module!r}, {side!r}, {json.dumps(list(args))!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out.append(int(done.stdout.split()[-1]))
    return out, "peak RSS, own process"


def child(module: str, side: str, args_json: str) -> None:
    import importlib
    import resource

    from genloom.engine import context
    from genloom.engine.folders import Folders

    token = context.use(context.RunContext(device_choice="cpu", folders=Folders(), options={"previews": False}))
    try:
        ours, ref, _params = importlib.import_module(module).sides("cpu", *json.loads(args_json))
        (ours if side == "genloom" else ref)(0)
    finally:
        context.reset(token)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def described(values: list[int], what: str) -> str:
    return f"peak memory genloom {values[0] / 2**30:.2f} GiB, pipeline {values[1] / 2**30:.2f} GiB ({what})"
