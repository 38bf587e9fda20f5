"""Latent nodes: ComfyUI signatures, shapes, VAE round trips, tiling and inpainting masks."""

import pytest

torch = pytest.importorskip("torch")

from genloom.diffusion.vae_passes import decode_tiled  # noqa: E402
from genloom.nodes import latent as L  # noqa: E402


@pytest.fixture(scope="module")
def vae(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1").vae


def _info(cls):
    return cls.schema().object_info()


def test_signatures_match_comfyui():
    info = _info(L.EmptyLatentImage)
    assert info["input_order"]["required"] == ["width", "height", "batch_size"]
    width = info["input"]["required"]["width"][1]
    assert (width["default"], width["min"], width["max"], width["step"]) == (512, 16, 16384, 8)
    batch = info["input"]["required"]["batch_size"][1]
    assert (batch["default"], batch["min"], batch["max"]) == (1, 1, 4096)
    assert info["output"] == ["LATENT"]
    assert _info(L.VAEDecode)["input_order"]["required"] == ["samples", "vae"]
    assert _info(L.VAEDecode)["output"] == ["IMAGE"]
    assert _info(L.VAEEncode)["input_order"]["required"] == ["pixels", "vae"]
    assert _info(L.VAEDecodeTiled)["input_order"]["required"] == [
        "samples", "vae", "tile_size", "overlap", "temporal_size", "temporal_overlap"]
    inpaint = _info(L.VAEEncodeForInpaint)
    assert inpaint["input_order"]["required"] == ["pixels", "vae", "mask", "grow_mask_by"]
    assert inpaint["input"]["required"]["grow_mask_by"][1]["default"] == 6
    assert _info(L.SetLatentNoiseMask)["input_order"]["required"] == ["samples", "mask"]

    from genloom.nodes.ksampler import KSampler, KSamplerAdvanced

    ks = _info(KSampler)
    assert ks["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                             "positive", "negative", "latent_image", "denoise"]
    seed = ks["input"]["required"]["seed"][1]
    assert seed["control_after_generate"] and seed["max"] == 2**64 - 1
    cfg = ks["input"]["required"]["cfg"][1]
    assert (cfg["default"], cfg["min"], cfg["max"], cfg["step"], cfg["round"]) == (8.0, 0.0, 100.0, 0.1, 0.01)
    adv = _info(KSamplerAdvanced)
    assert adv["input_order"]["required"] == [
        "model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
        "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"]
    assert adv["input"]["required"]["add_noise"][0] == ["enable", "disable"]
    assert adv["input"]["required"]["return_with_leftover_noise"][0] == ["disable", "enable"]
    assert adv["input"]["required"]["end_at_step"][1]["default"] == 10000


def test_empty_latent_is_zeros_at_an_eighth():
    (lat,) = L.EmptyLatentImage().run(64, 48, 3)
    assert lat["samples"].shape == (3, 4, 6, 8) and not lat["samples"].any()


def test_encode_crops_and_decode_round_trips(vae):
    f = vae.scale_factor
    pixels = torch.rand(2, 8 * f + f - 1, 6 * f + 1, 4)  # odd size and an alpha channel
    (lat,) = L.VAEEncode().run(pixels, vae)
    assert lat["samples"].shape == (2, 4, 8, 6)
    (img,) = L.VAEDecode().run(lat, vae)
    assert img.shape == (2, 8 * f, 6 * f, 3) and img.min() >= 0 and img.max() <= 1


def test_tiled_decode_matches_plain_decode(vae):
    # LATENT holds raw VAE latents: a sampled SD latent is about N(0, 1) / 0.18215 there.
    lat = {"samples": torch.randn(1, 4, 20, 12, generator=torch.Generator().manual_seed(0)) / 0.18215}
    (plain,) = L.VAEDecode().run(lat, vae)
    (one_tile,) = L.VAEDecodeTiled().run(lat, vae, 4096, 64, 64, 8)
    assert torch.equal(one_tile, plain)
    f = vae.scale_factor
    (tiled,) = L.VAEDecodeTiled().run(lat, vae, 8 * f, 2 * f, 64, 8)  # 8-cell tiles, 2 overlap
    assert tiled.shape == plain.shape
    # The VAE's attention sees the whole tile, so tiles differ slightly from one full decode; the
    # blended seams must not stand out from that.
    assert (tiled - plain).abs().mean() < 0.03


class _LocalDecoder:
    """A decoder where each pixel depends on its own latent cell only: tiles must blend exactly."""

    scale_factor = 4

    def decode(self, latents):
        up = torch.nn.functional.interpolate(latents[:, :3], scale_factor=4, mode="nearest")
        return torch.sigmoid(up).movedim(1, -1)


def test_tile_weights_sum_to_one_across_seams():
    lat = torch.randn(2, 4, 37, 23, generator=torch.Generator().manual_seed(1))
    dec = _LocalDecoder()
    tiled = decode_tiled(dec, lat, 40, 8)  # 10-cell tiles, 2-cell overlaps, ragged last tiles
    assert torch.allclose(tiled, dec.decode(lat), atol=1e-6)


def test_encode_for_inpaint_greys_out_and_grows_the_mask(vae):
    f = vae.scale_factor
    size = 8 * f
    pixels = torch.rand(1, size, size, 3)
    mask = torch.zeros(1, size, size)
    mask[:, 2 * f:4 * f, 2 * f:4 * f] = 1.0
    (lat,) = L.VAEEncodeForInpaint().run(pixels, vae, mask, 4)
    grey = pixels.clone()
    grey[:, 2 * f:4 * f, 2 * f:4 * f] = 0.5
    assert torch.allclose(lat["samples"], vae.encode(grey), atol=1e-5)
    noise_mask = lat["noise_mask"]
    assert noise_mask.shape == (1, 1, size, size)
    assert noise_mask.sum() > mask.sum()  # grown
    assert noise_mask[0, 0, 2 * f - 1, 2 * f - 1] == 1 and noise_mask[0, 0, 0, 0] == 0


def test_set_latent_noise_mask_keeps_the_rest():
    lat = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [0, 1]}
    (out,) = L.SetLatentNoiseMask().run(lat, torch.ones(16, 16))
    assert out["noise_mask"].shape == (1, 1, 16, 16) and out["batch_index"] == [0, 1]
    assert "noise_mask" not in lat
