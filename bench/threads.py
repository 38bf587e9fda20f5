"""The torch thread policy's effect: a tiny 20-step denoising-like loop (small convolutions, the
shape of a tiny test prompt) timed with 1 thread, genloom's default and torch's own default (every
core), optionally while other processes keep the CPUs busy.

    python bench/threads.py [--busy 2] [--repeats 3]

Each count runs in a fresh process, since torch fixes some of its threading when it loads.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys

WORK = r"""
import sys, time
from genloom.runtime import set_threads
arg = sys.argv[1]
chosen = set_threads(None if arg == "default" else int(arg)) if arg != "torch" else None
import torch
x = torch.randn(1, 4, 32, 32)
layers = [torch.nn.Conv2d(4, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1),
          torch.nn.Conv2d(32, 4, 3, padding=1)]
with torch.no_grad():
    for layer in layers:
        x = layer(x)  # warm-up
    start = time.perf_counter()
    for _ in range(20):
        h = x
        for layer in layers:
            h = torch.nn.functional.silu(layer(h))
        x = x - 0.05 * h
    print(time.perf_counter() - start, torch.get_num_threads())
"""


def _spin(stop):
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def timed(arg: str) -> tuple[float, int]:
    env = dict(os.environ)
    if arg == "torch":
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GENLOOM_THREADS"):
            env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", WORK, arg], capture_output=True, text=True, env=env, check=True)
    seconds, threads = out.stdout.split()
    return float(seconds), int(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=0, help="processes that keep CPUs busy meanwhile")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    try:
        for arg, label in (("1", "1 thread"), ("default", "genloom's default"), ("torch", "torch's default")):
            runs = [timed(arg) for _ in range(args.repeats)]
            times = [r[0] for r in runs]
            print(f"{label:>18} ({runs[0][1]} threads): median {statistics.median(times) * 1000:.1f} ms, "
                  f"max {max(times) * 1000:.1f} ms over {args.repeats} runs, {os.cpu_count()} cores, "
                  f"{args.busy} busy processes")
    finally:
        stop.set()
        for s in spinners:
            s.join(5)


if __name__ == "__main__":
    main()
