"""Latent upscaling, model upscaling through spandrel with real weight files, tiling, and the shipped model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom.diffusion.resample import keep_aspect, slerp
from genloom.diffusion.tiling import run_tiled, tile_starts
from genloom.diffusion.upscale_models import upscale_padded
from genloom.engine import context
from genloom.engine.folders import Folders, PACKAGE_ROOT
from genloom.nodes.upscale import ImageUpscaleWithModel, LatentUpscale, LatentUpscaleBy, UpscaleModelLoader

torch.set_num_threads(2)
TOOLS = PACKAGE_ROOT / "tools"
SHIPPED = PACKAGE_ROOT / "models" / "upscale_models" / "genloom-2x.safetensors"
PICKLE_MARK = Path(os.environ.get("TMPDIR", "/tmp")) / "genloom-pickle-ran"


def _trainer():
    spec = importlib.util.spec_from_file_location("train_tiny_upscaler", TOOLS / "train_tiny_upscaler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    f = Folders(models_dirs=[tmp_path / "models"], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                temp_dir=tmp_path / "tmp")
    events = []
    ctx = context.RunContext(device_choice="cpu", folders=f, emit=lambda e, d: events.append((e, d)))
    token = context.use(ctx)
    yield folder, events
    context.reset(token)


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    net = _trainer().build_net(num_feat=8, num_blocks=1)
    return net, {k: v.clone() for k, v in net.state_dict().items()}


def test_loader_reads_basicsr_keys_from_safetensors_and_pth(models, tiny_state):
    from safetensors.torch import save_file

    folder, _ = models
    net, state = tiny_state
    assert "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state and "conv_up1.weight" in state
    save_file(state, str(folder / "tiny.safetensors"))
    torch.save({"params_ema": state}, folder / "tiny.pth")
    assert UpscaleModelLoader.schema().by_name["model_name"].combo_options() == ["tiny.pth", "tiny.safetensors"]
    x = torch.rand(1, 3, 12, 16)
    for name in ("tiny.safetensors", "tiny.pth"):
        (model,) = UpscaleModelLoader().run(name)
        assert model.architecture.id == "ESRGAN" and model.scale == 2
        with torch.no_grad():
            assert torch.allclose(model(x), net(x).clamp(0, 1), atol=1e-5)


class _RunsCode:
    def __reduce__(self):
        return (PICKLE_MARK.touch, ())


def test_loader_refuses_pickled_objects(models, tiny_state):
    folder, _ = models
    PICKLE_MARK.unlink(missing_ok=True)
    torch.save({"params_ema": tiny_state[1], "evil": _RunsCode()}, folder / "evil.pth")
    with pytest.raises(ValueError, match="UpscaleModelLoader: input 'model_name': evil.pth is not a plain weights file.*refuses"):
        UpscaleModelLoader().run("evil.pth")
    assert not PICKLE_MARK.exists()


def test_loader_errors_name_the_input(models):
    folder, _ = models
    (folder / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="UpscaleModelLoader: input 'model_name'"):
        UpscaleModelLoader().run("junk.safetensors")
    with pytest.raises(ValueError, match="UpscaleModelLoader: input 'model_name'"):
        UpscaleModelLoader().run("../../etc/passwd")


def test_tiled_equals_untiled_and_progress_per_tile(models, tiny_state):
    from safetensors.torch import save_file

    folder, events = models
    save_file(tiny_state[1], str(folder / "tiny.safetensors"))
    (model,) = UpscaleModelLoader().run("tiny.safetensors")
    image = torch.rand(2, 28, 36, 3)
    whole = upscale_padded(model, image.movedim(-1, 1), "cpu", tile=512)  # one tile
    context.current().options["upscale_tile"] = 32
    (tiled,) = ImageUpscaleWithModel().run(model, image)
    assert tiled.shape == (2, 56, 72, 3) and whole.shape == (2, 3, 56, 72)
    diff = (tiled - whole.movedim(1, -1).clamp(0, 1)).abs()
    assert diff.mean() < 2e-3 and diff.max() < 0.05
    steps = [d for e, d in events if e == "progress"]
    tiles = len(tile_starts(28 + 16, 32, 8)) * len(tile_starts(36 + 16, 32, 8))  # 8 px mirrored margins
    assert tiles == 4
    assert len(steps) == 2 * tiles and steps[-1]["value"] == steps[-1]["max"] == 2 * tiles


def test_out_of_memory_halves_the_tile():
    calls = []

    def fussy(x):  # a "model" that runs out of memory on tiles larger than 16 px
        calls.append(x.shape[-1])
        if x.shape[-1] > 16:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    image = torch.rand(1, 3, 40, 40)
    out = run_tiled(fussy, image, 2, tile=64, overlap=8, min_tile=8)
    assert calls[:2] == [40, 32] and set(calls[2:]) == {16}  # 64 -> 32 -> 16
    assert torch.allclose(out, torch.nn.functional.interpolate(image, scale_factor=2), atol=1e-6)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_tiled(fussy, image, 2, tile=64, overlap=8, min_tile=32)
    with pytest.raises(ValueError):  # other errors are not retried
        run_tiled(lambda x: (_ for _ in ()).throw(ValueError("bad")), image, 2, tile=64)


def test_latent_upscale_sizes_and_aspect():
    latent = {"samples": torch.randn(2, 4, 8, 12), "batch_index": [0, 1]}
    (out,) = LatentUpscale().run(latent, "bilinear", 192, 128, "disabled")
    assert out["samples"].shape == (2, 4, 16, 24) and out["batch_index"] == [0, 1]
    (out,) = LatentUpscale().run(latent, "nearest-exact", 0, 128, "disabled")
    assert out["samples"].shape == (2, 4, 16, 24)
    (out,) = LatentUpscale().run(latent, "bicubic", 128, 128, "center")
    assert out["samples"].shape == (2, 4, 16, 16)
    assert LatentUpscale().run(latent, "area", 0, 0, "disabled")[0] is latent
    (out,) = LatentUpscaleBy().run(latent, "bislerp", 1.5)
    assert out["samples"].shape == (2, 4, 12, 18)


def test_one_keep_aspect_rule_for_pictures_and_latents():
    """ImageScale and LatentUpscale follow one helper; the latent nodes only ask for 64 px sides."""
    assert keep_aspect(0, 16, 12, 8) == (24, 16) and keep_aspect(30, 0, 12, 8) == (30, 20)
    assert keep_aspect(0, 16, 12, 8, minimum=64) == (96, 64) and keep_aspect(0, 0, 12, 8) == (12, 8)
    (out,) = LatentUpscale().run({"samples": torch.zeros(1, 4, 8, 12)}, "nearest-exact", 0, 16, "disabled")
    assert out["samples"].shape[-2:] == (8, 12)  # 96 x 64 px
    (out,) = LatentUpscale().run({"samples": torch.zeros(1, 4, 8, 12)}, "nearest-exact", 32, 32, "disabled")
    assert out["samples"].shape[-2:] == (8, 8)  # both given: each raised to 64 px


def test_slerp_keeps_length_where_lerp_shrinks():
    a = torch.tensor([[1.0, 0.0]]).reshape(1, 2, 1, 1)
    b = torch.tensor([[0.0, 2.0]]).reshape(1, 2, 1, 1)
    mid = slerp(a, b, torch.tensor(0.5)).flatten()
    assert mid.norm() == pytest.approx(1.5)  # lengths blend linearly
    assert mid[0] / mid.norm() == pytest.approx(2 ** -0.5)  # direction halfway round the circle
    unit = torch.nn.functional.normalize(torch.randn(1, 4, 6, 6), dim=1)
    (out,) = LatentUpscaleBy().run({"samples": unit}, "bislerp", 2.0)
    norms = out["samples"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    (lin,) = LatentUpscaleBy().run({"samples": unit}, "bilinear", 2.0)
    assert lin["samples"].norm(dim=1).mean() < 0.95  # what bislerp avoids
    assert torch.allclose(out["samples"][..., ::2, ::2][..., :1, :1], unit[..., :1, :1])


@pytest.mark.skipif(not SHIPPED.is_file(), reason="models/upscale_models/genloom-2x.safetensors not built")
def test_shipped_upscaler_beats_bicubic(tmp_path):
    from PIL import Image

    trainer = _trainer()
    f = Folders(input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path)
    token = context.use(context.RunContext(device_choice="cpu", folders=f))
    try:
        assert "genloom-2x.safetensors" in UpscaleModelLoader.schema().by_name["model_name"].combo_options()
        (model,) = UpscaleModelLoader().run("genloom-2x.safetensors")
        assert model.scale == 2
        hr = trainer.pictures(4, seed=777_777, size=64)
        lr = np.stack([trainer.downscale(p, 2) for p in hr])
        (up,) = ImageUpscaleWithModel().run(model, torch.from_numpy(lr).float() / 255)
    finally:
        context.reset(token)
    ours = np.mean([trainer.psnr(h, np.round(u.numpy() * 255)) for h, u in zip(hr, up)])
    bicubic = np.mean([trainer.psnr(h, np.asarray(Image.fromarray(lo).resize((64, 64), Image.BICUBIC)))
                       for h, lo in zip(hr, lr)])
    assert ours > bicubic + 0.3, (ours, bicubic)
