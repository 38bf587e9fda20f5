"""The MODEL handle of SD2.1 unCLIP checkpoints: a UNet that also takes a CLIP image embedding.

The original checkpoints (sd21-unclip-h/-l) hold the UNet's ADM input under
`model.diffusion_model.label_emb.0.{0,2}.*` (diffusers: a `class_embedding` of type "projection"
taking `class_labels`), the image encoder under `embedder.model.visual.*` and the noise
augmentor's schedule buffers under `noise_augmentor.*` (betas, alphas_cumprod, ...). The ADM
input is [image embedding noised to a level, embedding of that level], built at sampling time from
the conditioning's `unclip_conditioning` list (unCLIPConditioning) as ComfyUI builds it
(models/noise_augment.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SamplingError
from .handles import ModelHandle
from .noise_augment import adm_input


@dataclass(frozen=True, eq=False)
class UnclipHandle(ModelHandle):
    """An SD2 UNet with a "projection" class embedding: `class_labels` is its ADM input."""

    @property
    def adm_width(self) -> int:
        return int(self.unet.config.projection_class_embeddings_input_dim)

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        if extra.get("control") is not None:
            raise SamplingError("ControlNets on unCLIP models are not supported yet")
        out = super().cond_extras(extra, height, width)
        out["class_labels"] = adm_input(extra.get("unclip_conditioning"), self.adm_width,
                                        int(extra.get("seed", 0)))
        return out

    def predict(self, unet, x, t, emb, extras: dict):
        return unet(x, t, encoder_hidden_states=emb, class_labels=extras["class_labels"].to(x.dtype),
                    return_dict=False)[0]


def is_unclip_unet(unet) -> bool:
    return getattr(unet.config, "class_embed_type", None) == "projection" and \
        getattr(unet.config, "addition_embed_type", None) is None
