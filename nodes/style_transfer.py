"""Style transfer nodes: fast (a trained feed-forward network per style), neural (optimisation against
any style picture) and colour-only transfer. Names are genloom's own; ComfyUI's StyleModelLoader is a
different thing (conditioning models), so nothing here shadows it. The work is in
genloom.diffusion.styling."""

from __future__ import annotations

from genloom.diffusion.styling.color import METHODS as COLOR_METHODS
from genloom.engine import context
from genloom.engine.errors import ModelLoadError, NodeInputError
from genloom.engine.node import Combo, DynamicCombo, Float, Input, Int, Node, NodeOutput, Out, Seed

from .loaders import load_model_file, model_names, model_stamp


class FastStyleModelLoader(Node):
    """Loads a fast neural style network (the PyTorch examples' TransformerNet .pth/.model files, e.g.
    candy, mosaic, udnie) from models/style_models. Weights only: pickles holding code are refused."""

    category = "loaders/style"
    display_name = "Load Fast Style Model"
    inputs = [Combo("style_name", model_names("style_models"),
                    tooltip="A TransformerNet file in models/style_models.")]
    outputs = [Out("STYLE_NET")]

    @classmethod
    def fingerprint(cls, style_name):
        return model_stamp("style_models", style_name)

    def run(self, style_name):
        from genloom.diffusion.styling.transformer_net import load_style_file

        return (load_model_file("style_name", "style_models", style_name, load_style_file),)


class FastStyleTransfer(Node):
    """Restyles images with a fast style network in one pass; strength blends with the original."""

    category = "image/style"
    display_name = "Fast Style Transfer"
    inputs = [
        Input("style_net", "STYLE_NET"),
        Input("image", "IMAGE"),
        Float("strength", 1.0, min=0.0, max=1.0, step=0.01, tooltip="0 keeps the image, 1 is fully styled."),
    ]
    outputs = [Out("IMAGE")]

    def run(self, style_net, image, strength=1.0):
        from genloom.diffusion.styling.transformer_net import stylise

        image = image[..., :3]
        styled = stylise(style_net, image, context.current().device)
        return ((image * (1 - strength) + styled * strength).clamp(0, 1),)


class NeuralStyleTransfer(Node):
    """Paints the content image in the style of another by optimising its pixels (Gatys et al.).
    Uses VGG-19 features when torchvision's VGG-19 weights are in models/vgg (e.g. vgg19-dcbbe7ff.pth),
    otherwise a fixed random convolutional network; the UI text says which one ran."""

    category = "image/style"
    display_name = "Neural Style Transfer"
    inputs = [
        Input("content", "IMAGE", tooltip="The pictures to restyle."),
        Input("style", "IMAGE", tooltip="The style source; image i styles content i (cycling)."),
        Int("iterations", 100, min=1, max=5000, tooltip="Optimisation steps per image."),
        Float("content_weight", 1.0, min=0.0, max=10000.0, step=0.1,
              tooltip="How strongly the content's structure is kept."),
        Float("style_weight", 10.0, min=0.0, max=1000000.0, step=0.1,
              tooltip="How strongly the style's textures and colours are imposed."),
        Float("learning_rate", 0.02, min=0.0001, max=1.0, step=0.001, tooltip="Adam step size on pixels."),
        Seed("seed", 0, tooltip="Seeds the starting noise (and the random feature network)."),
    ]
    outputs = [Out("IMAGE")]

    def run(self, content, style, iterations, content_weight, style_weight, learning_rate, seed):
        from genloom.diffusion.errors import CheckpointError
        from genloom.diffusion.styling.features import feature_net
        from genloom.diffusion.styling.neural import restyle

        ctx = context.current()
        try:
            net = feature_net(ctx.folders, seed % 2 ** 63)
        except (CheckpointError, OSError) as exc:  # a broken file in models/vgg
            raise ModelLoadError(None, f"models/vgg: {exc}") from exc
        out = restyle(net, content, style, iterations, content_weight, style_weight, learning_rate, seed,
                      ctx.device, progress=ctx.progress)
        return NodeOutput(out, ui={"text": [f"features: {net.description}"]})


class GenloomColorTransfer(Node):
    """Gives images the colours of a reference: Reinhard mean/std matching in Lab, or per-channel
    histogram matching by quantiles. Reference image i serves image i (cycling). genloom's own node;
    ComfyUI's ColorTransfer (image_target, image_ref, ...) is `ColorTransfer`."""

    category = "image/style"
    display_name = "Color Transfer (genloom)"
    inputs = [
        Input("image", "IMAGE"),
        Input("reference", "IMAGE"),
        Combo("method", COLOR_METHODS, "reinhard_lab"),
        Float("strength", 1.0, min=0.0, max=1.0, step=0.01, tooltip="0 keeps the image's colours."),
    ]
    outputs = [Out("IMAGE")]

    def run(self, image, reference, method, strength):
        from genloom.diffusion.styling.color import transfer_colours

        if method not in COLOR_METHODS:
            raise NodeInputError("method", f"unknown method {method!r}")
        return (transfer_colours(image, reference, method, strength),)


class ColorTransfer(Node):
    """Match the colors of one image to another using various algorithms."""

    category = "image/postprocessing"
    description = "Match the colors of one image to another using various algorithms."
    inputs = [
        Input("image_target", "IMAGE", tooltip="Image(s) to apply the color transform to."),
        Input("image_ref", "IMAGE", optional=True,
              tooltip="Reference image(s) to match colors to. If not provided, processing is skipped"),
        Combo("method", ["reinhard_lab", "mkl_lab", "histogram"]),
        *DynamicCombo("source_stats", {
            "per_frame": [], "uniform": [],
            "target_frame": [Int("target_index", 0, min=0, max=10000,
                                 tooltip="The frame whose colours are the baseline of the transform.")]},
            tooltip="per_frame: each frame matched to image_ref on its own. uniform: the statistics of all "
                    "frames pooled as the baseline. target_frame: one chosen frame as the baseline, its "
                    "transform applied to every frame"),
        Float("strength", 1.0, min=0.0, max=10.0, step=0.01),
    ]
    outputs = [Out("IMAGE", "image")]

    def run(self, image_target, method, source_stats, strength, image_ref=None, **options):
        from genloom.diffusion.styling.color_match import color_transfer

        target_index = options.get("source_stats.target_index")
        return (color_transfer(image_target, image_ref, method, source_stats,
                               0 if target_index is None else target_index, strength),)


NODES = [FastStyleModelLoader, FastStyleTransfer, NeuralStyleTransfer, GenloomColorTransfer, ColorTransfer]
