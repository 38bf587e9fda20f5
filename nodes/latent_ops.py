"""ComfyUI's core latent nodes for compositing, arithmetic, batches and transforms.

The tensor work is genloom.diffusion.latent_ops, imported inside `run` so that listing nodes never
imports torch. (EmptyLatentImage, the VAE nodes and the noise mask live in nodes/latent.py.)
"""

from __future__ import annotations

from genloom.diffusion.latent_ops import FLIPS, ROTATIONS, SEED_BEHAVIORS
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Boolean, Combo, Float, Input, Int, Node, Out
from genloom.nodes.masks import numbered_inputs, numbered_values

MAX_RESOLUTION = 16384
_OUT = [Out("LATENT")]


def _lib():
    from genloom.diffusion import latent_ops

    return latent_ops


def _latent(name: str, tooltip: str = "The latents."):
    return Input(name, "LATENT", tooltip=tooltip)


def _cells(name: str, default: int = 0, low: int = 0, tooltip: str = ""):
    """A pixel distance that moves in whole latent cells (8 px)."""
    return Int(name, default, min=low, max=MAX_RESOLUTION, step=8, tooltip=tooltip)


_PAIR = [_latent("samples1", "The first latents."), _latent("samples2", "The second latents.")]


class LatentComposite(Node):
    """Pastes one latent into another at (x, y), optionally fading the pasted block in at its edges."""

    category = "latent"
    display_name = "Latent Composite"
    inputs = [_latent("samples_to", "The latents pasted into."), _latent("samples_from", "The latents pasted."),
              _cells("x", tooltip="Where the pasted block's left edge goes, in pixels."),
              _cells("y", tooltip="Where the pasted block's top edge goes, in pixels."),
              _cells("feather", tooltip="Pixels over which the block fades in at edges inside the target.")]
    outputs = _OUT

    def run(self, samples_to, samples_from, x, y, feather=0):
        return (_lib().composite(samples_to, samples_from, x, y, feather),)


class LatentCompositeMasked(Node):
    """Pastes a source latent into a destination at (x, y), weighted by an optional mask."""

    category = "latent"
    display_name = "Latent Composite Masked"
    inputs = [_latent("destination", "The latents pasted into."), _latent("source", "The latents pasted."),
              _cells("x", tooltip="Where the source's left edge goes, in pixels."),
              _cells("y", tooltip="Where the source's top edge goes, in pixels."),
              Boolean("resize_source", False, tooltip="Stretch the source to the destination's size first."),
              Input("mask", "MASK", optional=True, tooltip="How much of the source each pixel takes (1 = all).")]
    outputs = _OUT

    def run(self, destination, source, x, y, resize_source, mask=None):
        return (_lib().composite_masked(destination, source, x, y, resize_source, mask),)


class LatentBlend(Node):
    """blend_factor * samples1 + (1 - blend_factor) * samples2."""

    category = "_for_testing"
    display_name = "Latent Blend"
    inputs = _PAIR + [Float("blend_factor", 0.5, min=0, max=1, step=0.01, tooltip="The share of samples1.")]
    outputs = _OUT

    def run(self, samples1, samples2, blend_factor):
        return (_lib().blend(samples1, samples2, blend_factor),)


class LatentAdd(Node):
    """samples1 + samples2 (samples2 resized and repeated to samples1's shape when they differ)."""

    category = "latent/advanced"
    display_name = "LatentAdd"
    inputs = _PAIR
    outputs = _OUT

    def run(self, samples1, samples2):
        return (_lib().add(samples1, samples2),)


class LatentSubtract(Node):
    """samples1 - samples2 (samples2 resized and repeated to samples1's shape when they differ)."""

    category = "latent/advanced"
    display_name = "LatentSubtract"
    inputs = _PAIR
    outputs = _OUT

    def run(self, samples1, samples2):
        return (_lib().subtract(samples1, samples2),)


class LatentMultiply(Node):
    """The latents times a number."""

    category = "latent/advanced"
    display_name = "LatentMultiply"
    inputs = [_latent("samples"), Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01, tooltip="The factor.")]
    outputs = _OUT

    def run(self, samples, multiplier):
        return (_lib().multiply(samples, multiplier),)


class LatentInterpolate(Node):
    """Blends two latents pixel by pixel, directions and lengths apart, so that a blend of unlike
    latents keeps its strength."""

    category = "latent/advanced"
    display_name = "LatentInterpolate"
    inputs = _PAIR + [Float("ratio", 1.0, min=0.0, max=1.0, step=0.01,
                            tooltip="The share of samples1 (1 = samples1 only).")]
    outputs = _OUT

    def run(self, samples1, samples2, ratio):
        return (_lib().interpolate(samples1, samples2, ratio),)


class LatentFromBatch(Node):
    """Takes `length` latents from the batch starting at batch_index."""

    category = "latent/batch"
    display_name = "Latent From Batch"
    inputs = [_latent("samples"), Int("batch_index", 0, min=0, max=63, tooltip="The first entry taken."),
              Int("length", 1, min=1, max=64, tooltip="How many entries to take.")]
    outputs = _OUT

    def run(self, samples, batch_index, length):
        return (_lib().from_batch(samples, batch_index, length),)


class RepeatLatentBatch(Node):
    """The batch repeated a number of times; each repeat gets noise of its own."""

    category = "latent/batch"
    display_name = "Repeat Latent Batch"
    inputs = [_latent("samples"), Int("amount", 1, min=1, max=64, tooltip="How many times the batch appears.")]
    outputs = _OUT

    def run(self, samples, amount):
        from genloom.engine.budgets import tensor_problem

        shape = samples["samples"].shape
        problem = tensor_problem((shape[0] * amount, *shape[1:]), "the repeated batch")
        if problem:
            raise NodeInputError("amount", problem)
        return (_lib().repeat(samples, amount),)


class LatentBatch(Node):
    """samples2 appended to the batch of samples1 (resized to its size). Deprecated in ComfyUI in
    favour of Batch Latents."""

    category = "latent/batch"
    display_name = "LatentBatch"
    inputs = _PAIR
    outputs = _OUT

    def run(self, samples1, samples2):
        return (_lib().batch([samples1, samples2]),)


class BatchLatentsNode(Node):
    """All connected latents in one batch, each resized to the first one's size."""

    category = "latent"
    display_name = "Batch Latents"
    inputs = numbered_inputs("latents", "latent", "LATENT", 2, 50)
    outputs = _OUT

    def run(self, **latents):
        return (_lib().batch(numbered_values(latents)),)


class LatentRotate(Node):
    """Rotates the latents clockwise."""

    category = "latent/transform"
    display_name = "Rotate Latent"
    inputs = [_latent("samples"), Combo("rotation", ROTATIONS,
                                        tooltip="The clockwise angle.")]
    outputs = _OUT

    def run(self, samples, rotation):
        return (_lib().rotate(samples, rotation),)


class LatentFlip(Node):
    """Mirrors the latents."""

    category = "latent/transform"
    display_name = "Flip Latent"
    inputs = [_latent("samples"), Combo("flip_method", FLIPS,
                                        tooltip="x-axis mirrors top to bottom, y-axis left to right.")]
    outputs = _OUT

    def run(self, samples, flip_method):
        return (_lib().flip(samples, flip_method),)


class LatentCrop(Node):
    """The width x height pixel region at (x, y), in whole latent cells."""

    category = "latent/transform"
    display_name = "Crop Latent"
    inputs = [_latent("samples"), _cells("width", 512, 64, "Width in pixels."),
              _cells("height", 512, 64, "Height in pixels."),
              _cells("x", tooltip="Left edge in pixels."), _cells("y", tooltip="Top edge in pixels.")]
    outputs = _OUT

    def run(self, samples, width, height, x, y):
        return (_lib().crop(samples, width, height, x, y),)


class LatentBatchSeedBehavior(Node):
    """Whether the entries of a batch get the same noise ('fixed') or each their own ('random')."""

    category = "latent/advanced"
    display_name = "LatentBatchSeedBehavior"
    inputs = [_latent("samples"), Combo("seed_behavior", SEED_BEHAVIORS, "fixed",
                                        tooltip="fixed: all entries get the first one's noise; random: "
                                                "each gets its own.")]
    outputs = _OUT

    def run(self, samples, seed_behavior):
        return (_lib().seed_behavior(samples, seed_behavior),)


NODES = [LatentComposite, LatentCompositeMasked, LatentBlend, LatentAdd, LatentSubtract, LatentMultiply,
         LatentInterpolate, LatentFromBatch, RepeatLatentBatch, LatentBatch, BatchLatentsNode,
         LatentRotate, LatentFlip, LatentCrop, LatentBatchSeedBehavior]
