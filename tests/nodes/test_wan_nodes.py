"""The video-latent nodes by arithmetic: frame counts (1 + (length - 1) / 4), trimming, budgets."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from genloom.engine.errors import NodeInputError  # noqa: E402
from genloom.nodes.wan import EmptyHunyuanLatentVideo, TrimVideoLatent, latent_frames  # noqa: E402


@pytest.mark.parametrize("length, frames", [(1, 1), (4, 1), (5, 2), (25, 7), (81, 21)])
def test_empty_video_latent_shape(length, frames):
    assert latent_frames(length) == frames
    (latent,) = EmptyHunyuanLatentVideo().run(64, 48, length, 2)
    assert latent["samples"].shape == (2, 16, frames, 6, 8) and not latent["samples"].any()


def test_empty_video_latent_checks_ranges_and_budget():
    assert EmptyHunyuanLatentVideo.validate(848, 480, 25, 1) is True
    assert EmptyHunyuanLatentVideo.validate(8, 480, 25, 1) == "width: Value 8 smaller than min of 16"
    refused = EmptyHunyuanLatentVideo.validate(1024, 1024, 4097, 1)  # 4097 frames of 1024 x 1024 pixels
    assert refused is not True and "length 4097" in refused and "--max-pixels" in refused


def test_trim_video_latent_drops_leading_frames():
    samples = torch.arange(2 * 16 * 5 * 2 * 2, dtype=torch.float32).reshape(2, 16, 5, 2, 2)
    (out,) = TrimVideoLatent().run({"samples": samples, "batch_index": [0, 1]}, 2)
    assert torch.equal(out["samples"], samples[:, :, 2:]) and out["batch_index"] == [0, 1]
    with pytest.raises(NodeInputError) as err:
        TrimVideoLatent().run({"samples": torch.zeros(1, 4, 8, 8)}, 1)
    assert err.value.input_name == "samples"


def test_video_latents_through_the_latent_nodes():
    """5-D latents [B, C, T, H, W]: upscaling resizes every frame alike (as ComfyUI's common_upscale),
    batch nodes work on the batch axis, arithmetic elementwise."""
    import torch.nn.functional as F

    from genloom.nodes.latent_ops import LatentAdd, LatentBatch, LatentFromBatch, RepeatLatentBatch
    from genloom.nodes.upscale import LatentUpscale, LatentUpscaleBy

    x = torch.randn(2, 16, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    latent = {"samples": x}
    (up,) = LatentUpscaleBy().run(latent, "bilinear", 2.0)
    for t in range(3):  # frame by frame, as F.interpolate does it on one 4-D frame
        want = F.interpolate(x[:, :, t], size=(8, 12), mode="bilinear", align_corners=False)
        assert torch.allclose(up["samples"][:, :, t], want, atol=1e-6)
    (sized,) = LatentUpscale().run(latent, "nearest-exact", 96, 64, "disabled")
    assert sized["samples"].shape == (2, 16, 3, 8, 12)
    assert torch.equal(LatentFromBatch().run(latent, 1, 1)[0]["samples"], x[1:2])
    assert RepeatLatentBatch().run(latent, 2)[0]["samples"].shape == (4, 16, 3, 4, 6)
    assert torch.equal(LatentBatch().run(latent, latent)[0]["samples"], torch.cat([x, x]))
    assert torch.equal(LatentAdd().run(latent, latent)[0]["samples"], x + x)
