"""Shared fixtures: tiny generation models (built once per session) and a run context on tmp folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A models dir in ComfyUI's layout: diffusers/tiny-{sd1,sd2,sdxl}/ and checkpoints/tiny-*.safetensors."""
    import torch

    import tiny

    torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention on a busy box
    root = tmp_path_factory.mktemp("models")
    tiny.build_models_dir(root)
    return root


@pytest.fixture
def tmp_folders(tmp_path, tiny_models):
    """A current run context (CPU) whose folders are the tiny models plus empty tmp data folders.

    Each test gets its own loras/ and vae/ folder (listed first) so files it writes stay its own."""
    from genloom.engine import context
    from genloom.engine.folders import Folders

    own = tmp_path / "models"
    for sub in ("loras", "vae", "checkpoints"):
        (own / sub).mkdir(parents=True)
    folders = Folders(models_dirs=[own, tiny_models], input_dir=tmp_path / "input",
                      output_dir=tmp_path / "output", temp_dir=tmp_path / "temp")
    ctx = context.RunContext(device_choice="cpu", folders=folders)
    token = context.use(ctx)
    try:
        yield ctx
    finally:
        context.reset(token)
