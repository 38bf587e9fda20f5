"""`genloom validate` refuses checkpoints the loader cannot use (UNets of other input widths than
regular and inpainting ones, files that are no Stable Diffusion checkpoint), judged from the
safetensors header without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from genloom import Engine

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"


def write(folder, name, tensors):
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(folder / name))


@pytest.fixture()
def models(tmp_path):
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    write(ckpts, "inpaint.safetensors", {UNET_IN: (8, 9, 3, 3),
                                         "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)})
    write(ckpts, "pix2pix.safetensors", {UNET_IN: (8, 8, 3, 3),
                                         "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)})
    write(ckpts, "refiner.safetensors", {UNET_IN: (8, 4, 3, 3),
                                         "conditioner.embedders.0.model.token_embedding.weight": (4, 4)})
    write(ckpts, "not-sd.safetensors", {"encoder.weight": (2, 2)})
    write(ckpts, "plain-sd1.safetensors", {UNET_IN: (8, 4, 3, 3),
                                           "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)})
    (ckpts / "broken.safetensors").write_bytes(b"\xff" * 16)
    return tmp_path / "models"


def graph(name):
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}}


@pytest.mark.parametrize("name, words", [("pix2pix.safetensors", "8-channel UNet input"),
                                         ("not-sd.safetensors", "not a Stable Diffusion checkpoint"),
                                         ("broken.safetensors", "not a readable .safetensors file")])
def test_validation_names_the_checkpoint_the_loader_cannot_use(models, name, words):
    engine = Engine(models_dirs=[models])
    v = engine.validate(graph(name))
    errors = v.node_errors["4"]["errors"]
    assert [e["type"] for e in errors] == ["custom_validation_failed"]
    assert errors[0]["extra_info"]["input_name"] == "ckpt_name" and words in errors[0]["details"]


def test_loadable_checkpoints_pass(models):
    engine = Engine(models_dirs=[models])
    assert engine.validate(graph("plain-sd1.safetensors")).node_errors == {}
    assert engine.validate(graph("inpaint.safetensors")).node_errors == {}  # 9-channel inpainting UNet
    assert engine.validate(graph("refiner.safetensors")).node_errors == {}  # SDXL refiner (CLIP-G only)
    assert engine.validate(graph("genloom-tiny.safetensors")).node_errors == {}  # the shipped one


def test_the_cli_reports_it_without_importing_torch(models, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph("pix2pix.safetensors")))
    code = textwrap.dedent(f"""
        import sys
        from genloom.cli import main
        rc = main(["validate", {str(wf)!r}, "--models-dir", {str(models)!r}])
        assert "torch" not in sys.modules, "validate imported torch"
        sys.exit(rc)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "8-channel UNet input" in proc.stderr and "ckpt_name" in proc.stderr
