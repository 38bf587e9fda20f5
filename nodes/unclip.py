"""unCLIP: unCLIPCheckpointLoader (an SD2.1 unCLIP checkpoint with its CLIP vision tower) and
unCLIPConditioning (a CLIP image embedding for the UNet). The library is genloom.diffusion.unclip."""

from __future__ import annotations

from genloom.engine.node import Combo, Float, Input, Node, Out
from genloom.nodes.loaders import _checkpoint_problem, _load, load_model_file, model_names, model_stamp


class unCLIPCheckpointLoader(Node):  # noqa: N801 - ComfyUI's name
    """Loads an unCLIP checkpoint: its model, text encoder, VAE and the CLIP vision model it embeds pictures with."""

    category = "loaders"
    display_name = "unCLIP Checkpoint Loader"
    inputs = [Combo("ckpt_name", model_names("checkpoints"), tooltip="The unCLIP checkpoint file.",
                    check=_checkpoint_problem)]
    outputs = [Out("MODEL"), Out("CLIP"), Out("VAE"), Out("CLIP_VISION")]

    @classmethod
    def fingerprint(cls, ckpt_name):
        return model_stamp("checkpoints", ckpt_name)

    def run(self, ckpt_name):
        from genloom.diffusion.unclip import load_unclip_checkpoint

        def load(path):
            return _load("ckpt_name", path, lambda: load_unclip_checkpoint(path), tag="unclip")

        b = load_model_file("ckpt_name", "checkpoints", ckpt_name, load)
        return (b.model, b.clip, b.vae, b.clip_vision)


class unCLIPConditioning(Node):  # noqa: N801 - ComfyUI's name
    """Adds a picture's CLIP image embedding to the conditioning of an unCLIP model (SDXL: in place of the pooled text, "revision")."""

    category = "conditioning"
    inputs = [Input("conditioning", "CONDITIONING"), Input("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01, tooltip="How much the picture counts."),
              Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01,
                    tooltip="How much the embedding is noised first: higher strays further from the picture.")]
    outputs = [Out("CONDITIONING")]

    def run(self, conditioning, clip_vision_output, strength=1.0, noise_augmentation=0.0):
        from genloom.diffusion.unclip import unclip_conditioning

        return (unclip_conditioning(conditioning, clip_vision_output, strength, noise_augmentation),)


NODES = [unCLIPCheckpointLoader, unCLIPConditioning]
