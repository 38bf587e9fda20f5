"""The torch thread policy: a documented default, `--threads` for `genloom run` and `genloom serve`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from genloom.runtime import default_threads, thread_count


def test_the_default_is_half_the_cores_between_1_and_8():
    assert [default_threads(n) for n in (1, 2, 3, 4, 16, 64)] == [1, 1, 1, 2, 8, 8]


def _threads_in_fresh_process(code: str, **env) -> int:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GENLOOM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, env={**clean, **env}, check=True)
    return int(out.stdout.split()[-1])


def test_set_threads_reaches_torch_loaded_before_or_after():
    # (OpenMP caps an environment count at the cores; 1 thread differs from torch's default on any box)
    assert _threads_in_fresh_process("from genloom.runtime import set_threads; set_threads(1)") == 1
    assert _threads_in_fresh_process("import torch\nfrom genloom.runtime import set_threads; set_threads(1)") == 1


def test_without_an_option_the_environment_then_the_default_decide(monkeypatch):
    from genloom.runtime import set_threads

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GENLOOM_THREADS"):
        monkeypatch.setenv(name, "")  # restored after the test
    assert set_threads() == default_threads() and os.environ["OMP_NUM_THREADS"] == str(default_threads())
    monkeypatch.setenv("GENLOOM_THREADS", "1")
    assert set_threads() == 1 and os.environ["MKL_NUM_THREADS"] == "1"


def test_threads_options_of_run_and_serve():
    from genloom.cli import build_parser
    from genloom.server.app import parse_args

    assert parse_args(["--threads", "3"]).threads == 3 and parse_args([]).threads is None
    assert build_parser().parse_args(["run", "w.json", "--threads", "2"]).threads == 2
    for bad in ("0", "-1", "x"):
        with pytest.raises(ValueError):
            thread_count(bad)
