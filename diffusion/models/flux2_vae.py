"""The Flux.2 VAE (`flux2-vae.safetensors`): Black Forest Labs' layout -> diffusers' AutoencoderKLFlux2, and
the VAE handle that makes its latents what the Flux.2 transformer reads.

Layout: the LDM autoencoder names (`encoder.down.N.block.M`, `decoder.up.N...`, `mid.attn_1` ...) with
the quant convolutions inside the halves (`encoder.quant_conv`, `decoder.post_quant_conv`; top-level
`quant_conv` / `post_quant_conv` are read too) and `bn.running_mean` / `bn.running_var`: the statistics of
a non-affine batch norm over the 2x2-patchified latent. diffusers' single-file loader does not read this
file; the LDM renaming is keymaps.vae_map's, the config comes from the shapes.

As in ComfyUI (its VAE with batch_norm_latent, latent format Flux2 = identity) the normalisation lives in
the VAE: encode -> the posterior mean [B, 32, H/8, W/8] -> 2x2 patches into channels [B, 128, H/16, W/16]
-> (x - running_mean) / sqrt(running_var + eps); decode undoes it in reverse. diffusers' Flux2Pipeline does
the same steps around its VAE calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import keymaps
from .handles import VaeHandle
from .loading import build_module
from .weights import exact_keys

_HALVES = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}
_BN = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def detect(state: dict) -> bool:
    return "bn.running_mean" in state and "decoder.conv_in.weight" in state


def patchify(z):
    """[B, C, H, W] -> [B, 4C, H/2, W/2], each channel's 2x2 cell in (row, column) order."""
    b, c, h, w = z.shape
    return z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(x):
    b, c4, h, w = x.shape
    return x.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


def config_from_shapes(state: dict) -> dict:
    """AutoencoderKLFlux2's config from LDM-named shapes (quant convs already at the top level)."""
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    widths = [int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    decoder = [int(state[f"decoder.up.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    return {"in_channels": int(state["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
            "latent_channels": int(state["encoder.conv_out.weight"].shape[0]) // 2,
            "block_out_channels": widths, "decoder_block_out_channels": decoder if decoder != widths else None,
            "layers_per_block": len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")}),
            "down_block_types": ["DownEncoderBlock2D"] * len(levels),
            "up_block_types": ["UpDecoderBlock2D"] * len(levels),
            "use_quant_conv": "quant_conv.weight" in state, "use_post_quant_conv": "post_quant_conv.weight" in state,
            "batch_norm_eps": 1e-4, "patch_size": (2, 2)}


def to_diffusers(state: dict) -> tuple[dict, dict]:
    """(config, AutoencoderKLFlux2 tensors) from BFL's layout."""
    import torch

    state = {next((b + k[len(a):] for a, b in _HALVES.items() if k.startswith(a)), k): v for k, v in state.items()}
    config = config_from_shapes(state)
    converted = keymaps.unmap_keys(state, keymaps.vae_map(config), "", "vae")
    converted.update({k: state[k] for k in _BN if k in state})
    converted.setdefault("bn.num_batches_tracked", torch.zeros((), dtype=torch.long))
    return config, converted


def to_original(vae) -> dict:
    """An AutoencoderKLFlux2 -> BFL's layout (the inverse of `to_diffusers`)."""
    state = vae.state_dict()
    plain = {k: v for k, v in state.items() if not k.startswith("bn.")}
    out = keymaps.map_keys(plain, keymaps.vae_map(dict(vae.config)), "", "vae")
    out = {next((a + k[len(b):] for a, b in _HALVES.items() if k.startswith(b)), k): v for k, v in out.items()}
    return {**out, **{k: state[k] for k in _BN[:2]}}


def build(state: dict, name: str) -> "Flux2VaeHandle":
    from diffusers import AutoencoderKLFlux2

    config, converted = to_diffusers(state)
    module = build_module(AutoencoderKLFlux2, config, converted, f"Flux.2 VAE {name}")
    exact_keys(converted, module.state_dict().keys(), f"Flux.2 VAE {name}")
    return Flux2VaeHandle(vae=module.eval(), name=name)


@dataclass(frozen=True, eq=False)
class Flux2VaeHandle(VaeHandle):
    """LATENT is the normalised, patchified [B, 128, H/16, W/16] (EmptyFlux2LatentImage's shape)."""

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels) * 4

    @property
    def scale_factor(self) -> int:
        return 2 ** len(self.vae.config.block_out_channels)

    @staticmethod
    def _stats(vae, like):
        """The batch norm's (mean, std) shaped for `like` [B, 128, h, w]."""
        import torch

        mean = vae.bn.running_mean.reshape(1, -1, 1, 1).to(like.device, like.dtype)
        var = vae.bn.running_var.reshape(1, -1, 1, 1) + vae.config.batch_norm_eps
        return mean, torch.sqrt(var).to(like.device, like.dtype)

    def encode(self, images):
        import torch

        with torch.no_grad(), self.use() as vae:
            param = next(vae.parameters())
            x = images.movedim(-1, 1).to(param.device, param.dtype) * 2.0 - 1.0
            z = patchify(vae.encode(x).latent_dist.mean)
            mean, std = self._stats(vae, z)
            return ((z - mean) / std).float().cpu()

    def decode(self, latents):
        import torch

        with torch.no_grad(), self.use() as vae:
            param = next(vae.parameters())
            z = latents.to(param.device, param.dtype)
            mean, std = self._stats(vae, z)
            images = vae.decode(unpatchify(z * std + mean)).sample
            return ((images.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1).cpu()


def save_original(vae, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in to_original(vae).items()}, str(path))
