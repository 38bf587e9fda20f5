"""Style and colour transfer: real weight files through the real loaders, optimisation that works,
and colour statistics that land where they should."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from genloom.diffusion.styling.color import lab_to_srgb, srgb_to_lab
from genloom.diffusion.styling.transformer_net import build_transformer_net, stylise
from genloom.engine import context
from genloom.engine.folders import Folders
from genloom.nodes.style_transfer import FastStyleModelLoader, FastStyleTransfer, NeuralStyleTransfer
from genloom.nodes.style_transfer import GenloomColorTransfer as ColorTransfer

torch.set_num_threads(2)
PICKLE_MARK = Path(os.environ.get("TMPDIR", "/tmp")) / "genloom-style-pickle-ran"


@pytest.fixture
def run(tmp_path):
    models = tmp_path / "models"
    (models / "style_models").mkdir(parents=True)
    f = Folders(models_dirs=[models], input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path)
    events = []
    token = context.use(context.RunContext(device_choice="cpu", folders=f,
                                           emit=lambda e, d: events.append((e, d))))
    yield models, events
    context.reset(token)


def _smooth(seed, h, w, cells=4):
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, cells, cells, generator=g)
    return torch.nn.functional.interpolate(small, size=(h, w), mode="bicubic").clamp(0, 1).movedim(1, -1)


class _RunsCode:
    def __reduce__(self):
        return (PICKLE_MARK.touch, ())


def test_fast_style_loads_examples_layout_and_drops_stale_norm_stats(run):
    models, _ = run
    torch.manual_seed(0)
    net = build_transformer_net().eval()
    state = net.state_dict()
    assert {"conv1.conv2d.weight", "in1.weight", "res1.conv1.conv2d.weight", "deconv1.conv2d.weight",
            "deconv3.conv2d.bias"} <= set(state)
    old_style = dict(state)
    old_style["in1.running_mean"] = torch.zeros(32)  # what files saved by old PyTorch carry
    old_style["res3.in2.running_var"] = torch.ones(128)
    torch.save(old_style, models / "style_models" / "tiny.model")
    torch.save(state, models / "style_models" / "tiny.pth")
    image = _smooth(1, 18, 22)  # not a multiple of 4: padded and cropped back
    expected = stylise(net, image, "cpu")
    assert expected.shape == (1, 18, 22, 3)
    for name in ("tiny.model", "tiny.pth"):
        (loaded,) = FastStyleModelLoader().run(name)
        (out,) = FastStyleTransfer().run(loaded, image, 1.0)
        assert torch.allclose(out, expected, atol=1e-5)
    (half,) = FastStyleTransfer().run(loaded, image, 0.5)
    assert torch.allclose(half, (image + expected) / 2, atol=1e-5)
    assert torch.equal(FastStyleTransfer().run(loaded, image, 0.0)[0], image)


def test_fast_style_refuses_pickles_and_wrong_layouts(run):
    models, _ = run
    PICKLE_MARK.unlink(missing_ok=True)
    torch.save({"conv1.conv2d.weight": torch.zeros(1), "x": _RunsCode()}, models / "style_models" / "evil.pth")
    with pytest.raises(ValueError, match="FastStyleModelLoader: input 'style_name': evil.pth is not a plain weights"):
        FastStyleModelLoader().run("evil.pth")
    assert not PICKLE_MARK.exists()
    torch.save({"conv_first.weight": torch.zeros(4, 3, 3, 3)}, models / "style_models" / "other.pth")
    with pytest.raises(ValueError, match="FastStyleModelLoader: input 'style_name': not a fast-neural-style"):
        FastStyleModelLoader().run("other.pth")


def test_neural_style_lowers_style_loss_with_random_features(run):
    from genloom.diffusion.styling.features import random_features
    from genloom.diffusion.styling.neural import transfer

    content = _smooth(2, 24, 24).movedim(-1, 1)
    stripes = torch.zeros(1, 3, 24, 24)
    stripes[:, 0, :, ::4] = 1
    stripes[:, 2, ::3] = 0.8
    losses = []
    out = transfer(random_features(0), content, stripes, 20, 1.0, 10.0, 0.05, 0, "cpu",
                   on_step=lambda i, loss: losses.append(loss))
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0]
    assert out.shape == content.shape and 0 <= out.min() and out.max() <= 1
    # the node: progress per iteration, and it says which features it used
    _, events = run
    result = NeuralStyleTransfer().run(content.movedim(1, -1).repeat(2, 1, 1, 1), stripes.movedim(1, -1),
                                       3, 1.0, 10.0, 0.03, 0)
    assert result.outputs[0].shape == (2, 24, 24, 3)
    assert result.ui["text"] == ["features: random conv net (seed 0)"]
    steps = [d["value"] for e, d in events if e == "progress"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_neural_style_uses_vgg19_when_supplied(run):
    import torchvision
    from safetensors.torch import save_file

    models, _ = run
    (models / "vgg").mkdir()
    torch.manual_seed(0)
    # the keys and shapes of torchvision's own VGG-19 (built on the meta device: no weights to make)
    with torch.device("meta"):
        layout = torchvision.models.vgg19(weights=None).state_dict()
    state = {k: torch.randn(v.shape) * 0.01 for k, v in layout.items() if k.startswith("features.")}
    save_file(state, str(models / "vgg" / "vgg19.safetensors"))
    image = _smooth(3, 16, 16)
    result = NeuralStyleTransfer().run(image, 1 - image, 1, 1.0, 10.0, 0.02, 0)
    assert result.ui["text"] == ["features: VGG-19 (vgg19.safetensors)"]
    assert result.outputs[0].shape == (1, 16, 16, 3)


def test_lab_conversion_known_values_and_round_trip():
    lab = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=0.01)
    assert torch.allclose(lab[1], torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=0.05)
    assert torch.allclose(lab[2], torch.zeros(3, dtype=torch.float64), atol=1e-6)
    rgb = torch.rand(500, 3, dtype=torch.float64)
    assert torch.allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-6)


def test_reinhard_matches_reference_lab_statistics():
    image = 0.25 + 0.5 * _smooth(4, 24, 32)
    reference = 0.3 + 0.4 * _smooth(5, 20, 20, cells=3)
    reference[..., 0] = reference[..., 0] * 0.6 + 0.35  # warmer
    (out,) = ColorTransfer().run(image, reference, "reinhard_lab", 1.0)
    got = srgb_to_lab(out[0].double()).reshape(-1, 3)
    want = srgb_to_lab(reference[0].double()).reshape(-1, 3)
    assert torch.allclose(got.mean(0), want.mean(0), atol=1.0)
    assert torch.allclose(got.std(0), want.std(0), rtol=0.08, atol=0.5)
    (none,) = ColorTransfer().run(image, reference, "reinhard_lab", 0.0)
    assert torch.allclose(none, image)


def test_histogram_matching_matches_quantiles():
    image = _smooth(6, 20, 30) ** 2
    reference = _smooth(7, 16, 16) ** 0.5
    (out,) = ColorTransfer().run(image, reference, "histogram", 1.0)
    qs = torch.linspace(0.05, 0.95, 10)
    for c in range(3):
        got = torch.quantile(out[0, ..., c].flatten(), qs)
        want = torch.quantile(reference[0, ..., c].flatten(), qs)
        assert torch.allclose(got, want, atol=0.02)
        # order is kept: brighter in stays brighter out
        src = image[0, ..., c].flatten()
        res = out[0, ..., c].flatten()
        order = src.argsort()
        assert torch.all(res[order][1:] >= res[order][:-1] - 1e-6)
