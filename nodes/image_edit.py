"""ComfyUI's single-picture image nodes: invert, crop, flip, rotate, blend, blur, sharpen, quantize,
noise, solid images, colour masks and sizes. The pixel work is genloom.diffusion.image_ops."""

from __future__ import annotations

from genloom.diffusion.image_ops import BLEND_MODES, DITHERS, FLIPS, ROTATIONS
from genloom.engine.node import INT_MAX, Combo, Float, Hidden, Input, Int, Node, Out

MAX_RESOLUTION = 16384
_IMAGE = Input("image", "IMAGE")


class ImageInvert(Node):
    """1 - each pixel."""

    category = "image"
    display_name = "Invert Image"
    inputs = [_IMAGE]
    outputs = [Out("IMAGE")]

    def run(self, image):
        return (1.0 - image,)


class ImageCrop(Node):
    """A width x height region from (x, y); x and y are kept inside the picture."""

    category = "image/transform"
    display_name = "Crop Image"
    inputs = [_IMAGE,
              Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=1),
              Int("y", 0, min=0, max=MAX_RESOLUTION, step=1)]
    outputs = [Out("IMAGE")]

    def run(self, image, width, height, x, y):
        from genloom.diffusion.image_ops import crop

        return (crop(image, width, height, x, y),)


class ImageFlip(Node):
    """Mirrors the picture: 'x-axis' turns it upside down, 'y-axis' left to right."""

    category = "image/transform"
    display_name = "ImageFlip"  # ComfyUI gives it none: the editor shows the class name
    inputs = [_IMAGE, Combo("flip_method", FLIPS)]
    outputs = [Out("IMAGE")]

    def run(self, image, flip_method):
        from genloom.diffusion.image_ops import flip

        return (flip(image, flip_method),)


class ImageRotate(Node):
    """Turns the picture clockwise by quarter turns."""

    category = "image/transform"
    display_name = "Rotate"
    inputs = [_IMAGE, Combo("rotation", ROTATIONS)]
    outputs = [Out("IMAGE")]

    def run(self, image, rotation):
        from genloom.diffusion.image_ops import rotate

        return (rotate(image, rotation),)


class ImageBlend(Node):
    """Mixes image2 (resized to image1 when needed) into image1 with a blend mode."""

    category = "image/postprocessing"
    display_name = "Image Blend"
    inputs = [Input("image1", "IMAGE"), Input("image2", "IMAGE"),
              Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01),
              Combo("blend_mode", BLEND_MODES)]
    outputs = [Out("IMAGE")]

    def run(self, image1, image2, blend_factor, blend_mode):
        from genloom.diffusion.image_ops import blend

        return (blend(image1, image2, blend_factor, blend_mode),)


class ImageBlur(Node):
    """Gaussian blur over a (2 * radius + 1) square."""

    category = "image/postprocessing"
    display_name = "Image Blur"
    inputs = [_IMAGE, Int("blur_radius", 1, min=1, max=31, step=1),
              Float("sigma", 1.0, min=0.1, max=10.0, step=0.1)]
    outputs = [Out("IMAGE")]

    def run(self, image, blur_radius, sigma):
        from genloom.diffusion.image_ops import blur

        return (blur(image, blur_radius, sigma),)


class ImageSharpen(Node):
    """Unsharp-mask sharpening."""

    category = "image/postprocessing"
    display_name = "Image Sharpen"
    inputs = [_IMAGE, Int("sharpen_radius", 1, min=1, max=31, step=1),
              Float("sigma", 1.0, min=0.1, max=10.0, step=0.01),
              Float("alpha", 1.0, min=0.0, max=5.0, step=0.01)]
    outputs = [Out("IMAGE")]

    def run(self, image, sharpen_radius, sigma, alpha):
        from genloom.diffusion.image_ops import sharpen

        return (sharpen(image, sharpen_radius, sigma, alpha),)


class ImageQuantize(Node):
    """Reduces each picture to a palette of at most `colors` colours."""

    category = "image/postprocessing"
    display_name = "Image Quantize"
    inputs = [_IMAGE, Int("colors", 256, min=1, max=256, step=1), Combo("dither", DITHERS)]
    outputs = [Out("IMAGE")]

    def run(self, image, colors, dither):
        from genloom.diffusion.image_ops import quantize

        return (quantize(image, colors, dither),)


class ImageAddNoise(Node):
    """Adds seeded Gaussian noise, clipped to 0..1."""

    category = "image"
    display_name = "ImageAddNoise"  # ComfyUI gives it none: the editor shows the class name
    inputs = [_IMAGE,
              Int("seed", 0, min=0, max=INT_MAX, control_after_generate=True, tooltip="Seed of the noise."),
              Float("strength", 0.5, min=0.0, max=1.0, step=0.01)]
    outputs = [Out("IMAGE")]

    def run(self, image, seed, strength):
        from genloom.diffusion.image_ops import add_noise

        return (add_noise(image, seed, strength),)


class EmptyImage(Node):
    """A batch of pictures of one colour (0xRRGGBB)."""

    category = "image"
    display_name = "EmptyImage"  # ComfyUI gives it none: the editor shows the class name
    inputs = [Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
              Int("batch_size", 1, min=1, max=4096),
              Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color")]
    outputs = [Out("IMAGE")]

    @classmethod
    def validate(cls, width, height, batch_size=1):
        """The declared ranges, then the size budgets: a batch that cannot fit is refused unmade."""
        from genloom.engine.budgets import declared_size

        return declared_size(cls.inputs, {"width": width, "height": height, "batch_size": batch_size})

    def run(self, width, height, batch_size=1, color=0):
        from genloom.diffusion.image_ops import empty_image

        return (empty_image(width, height, batch_size, color),)


class ImageColorToMask(Node):
    """A mask that is 1 where a pixel has exactly the given 0xRRGGBB colour (at 8 bits), else 0."""

    category = "mask"
    display_name = "Image Color to Mask"
    inputs = [_IMAGE, Int("color", 0, min=0, max=0xFFFFFF, step=1, display="number",
                          tooltip="The colour as one number, 0xRRGGBB (0 black, 16777215 white).")]
    outputs = [Out("MASK")]

    def run(self, image, color):
        from genloom.diffusion.image_ops import color_to_mask

        return (color_to_mask(image, color),)


class GetImageSize(Node):
    """The picture's width, height and batch size."""

    category = "image"
    display_name = "Get Image Size"
    inputs = [_IMAGE, Hidden("unique_id", "UNIQUE_ID")]
    outputs = [Out("INT", "width"), Out("INT", "height"), Out("INT", "batch_size")]

    def run(self, image, unique_id=None):
        return (image.shape[2], image.shape[1], image.shape[0])


NODES = [ImageInvert, ImageCrop, ImageFlip, ImageRotate, ImageBlend, ImageBlur, ImageSharpen, ImageQuantize,
         ImageAddNoise, EmptyImage, ImageColorToMask, GetImageSize]
