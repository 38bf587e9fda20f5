"""ComfyUI's image nodes that combine pictures: batches, masked pasting, Porter-Duff compositing,
stitching and alpha channels. The work is genloom.diffusion.compositing / image_ops.

BatchImagesNode's input is ComfyUI's growing "images" (Autogrow): API graphs name its sockets
images.image0, images.image1, ..."""

from __future__ import annotations

from genloom.diffusion.compositing import PORTER_DUFF_MODES, SPACING_COLORS, STITCH_DIRECTIONS
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Autogrow, Boolean, Combo, Input, Int, Node, Out

MAX_RESOLUTION = 16384
MAX_BATCH_INPUTS = 50


class ImageBatch(Node):
    """image2 appended to image1's batch (resized to image1's size when it differs)."""

    category = "image"
    display_name = "Batch Images"
    inputs = [Input("image1", "IMAGE"), Input("image2", "IMAGE")]
    outputs = [Out("IMAGE")]

    def run(self, image1, image2):
        from genloom.diffusion.image_ops import batch_images

        return (batch_images([image1, image2]),)


class BatchImagesNode(Node):
    """Combines any number of images into one batch, each resized to the first one's size."""

    category = "image"
    display_name = "Batch Images"
    inputs = Autogrow("images", Input("image", "IMAGE"), prefix="image", min=2, max=MAX_BATCH_INPUTS)
    outputs = [Out("IMAGE")]

    def run(self, **images):
        from genloom.diffusion.image_ops import batch_images

        given = [images[f"images.image{i}"] for i in range(MAX_BATCH_INPUTS)
                 if images.get(f"images.image{i}") is not None]
        return (batch_images(given),)


class ImageFromBatch(Node):
    """`length` pictures of a batch from `batch_index` (both clipped to the batch)."""

    category = "image/batch"
    display_name = "ImageFromBatch"  # ComfyUI gives it none: the editor shows the class name
    inputs = [Input("image", "IMAGE"), Int("batch_index", 0, min=0, max=4095), Int("length", 1, min=1, max=4096)]
    outputs = [Out("IMAGE")]

    def run(self, image, batch_index, length):
        from genloom.diffusion.image_ops import from_batch

        return (from_batch(image, batch_index, length),)


class RepeatImageBatch(Node):
    """The batch repeated `amount` times."""

    category = "image/batch"
    display_name = "RepeatImageBatch"  # ComfyUI gives it none: the editor shows the class name
    inputs = [Input("image", "IMAGE"), Int("amount", 1, min=1, max=4096)]
    outputs = [Out("IMAGE")]

    def run(self, image, amount):
        from genloom.engine.budgets import tensor_problem

        problem = tensor_problem((image.shape[0] * amount, *image.shape[1:]), "the repeated batch")
        if problem:
            raise NodeInputError("amount", problem)
        return (image.repeat((amount, 1, 1, 1)),)


class ImageCompositeMasked(Node):
    """Pastes a source picture into a destination at an offset, weighted by an optional mask."""

    category = "image"
    display_name = "Image Composite Masked"
    inputs = [
        Input("destination", "IMAGE", tooltip="The picture pasted into."),
        Input("source", "IMAGE", tooltip="The picture pasted."),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=1, tooltip="Left edge of the source, in pixels."),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=1, tooltip="Top edge of the source, in pixels."),
        Boolean("resize_source", False, tooltip="Stretch the source to the destination's size first."),
        Input("mask", "MASK", optional=True, tooltip="Weight of the source: 1 takes it, 0 keeps the destination."),
    ]
    outputs = [Out("IMAGE")]

    def run(self, destination, source, x, y, resize_source, mask=None):
        from genloom.diffusion.compositing import composite_masked

        return (composite_masked(destination, source, x, y, resize_source, mask),)


class PorterDuffImageComposite(Node):
    """Porter-Duff alpha compositing of source over destination; alphas travel as masks (1 - alpha)."""

    category = "mask/compositing"
    display_name = "Porter-Duff Image Composite"
    inputs = [Input("source", "IMAGE"), Input("source_alpha", "MASK"), Input("destination", "IMAGE"),
              Input("destination_alpha", "MASK"), Combo("mode", PORTER_DUFF_MODES, "DST")]
    outputs = [Out("IMAGE"), Out("MASK")]

    def run(self, source, source_alpha, destination, destination_alpha, mode):
        from genloom.diffusion.compositing import porter_duff

        try:
            return porter_duff(source, source_alpha, destination, destination_alpha, mode)
        except ValueError as exc:
            raise NodeInputError("source", str(exc)) from exc


class SplitImageWithAlpha(Node):
    """The RGB picture and its alpha as a mask (1 - alpha)."""

    category = "mask/compositing"
    display_name = "Split Image with Alpha"
    inputs = [Input("image", "IMAGE")]
    outputs = [Out("IMAGE"), Out("MASK")]

    def run(self, image):
        from genloom.diffusion.compositing import split_alpha

        return split_alpha(image)


class JoinImageWithAlpha(Node):
    """An RGBA picture whose alpha is 1 - the mask."""

    category = "mask/compositing"
    display_name = "Join Image with Alpha"
    inputs = [Input("image", "IMAGE"), Input("alpha", "MASK")]
    outputs = [Out("IMAGE")]

    def run(self, image, alpha):
        from genloom.diffusion.compositing import join_alpha

        return (join_alpha(image, alpha),)


class ImageStitch(Node):
    """Joins image2 onto a side of image1, with an optional spacer strip; without image2, image1
    passes through."""

    category = "image/transform"
    display_name = "Image Stitch"
    inputs = [Input("image1", "IMAGE"), Combo("direction", STITCH_DIRECTIONS, "right"),
              Boolean("match_image_size", True), Int("spacing_width", 0, min=0, max=1024, step=2),
              Combo("spacing_color", list(SPACING_COLORS), "white"), Input("image2", "IMAGE", optional=True)]
    outputs = [Out("IMAGE")]

    def run(self, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        from genloom.diffusion.compositing import stitch

        return (stitch(image1, direction, match_image_size, spacing_width, spacing_color, image2),)


NODES = [ImageBatch, BatchImagesNode, ImageFromBatch, RepeatImageBatch, ImageCompositeMasked,
         PorterDuffImageComposite, SplitImageWithAlpha, JoinImageWithAlpha, ImageStitch]
