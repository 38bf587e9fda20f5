"""Style transfer nodes: fast (a trained feed-forward network per style), neural (optimisation against
any style picture) and colour-only transfer. Names are genloom's own; ComfyUI's StyleModelLoader is a
different thing (conditioning models), so nothing here shadows it."""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.node import Combo, Float, Input, Int, Node, NodeOutput, Out, Seed


def _style_models() -> list[str]:
    return context.current().folders.list_models("style_models")


class FastStyleModelLoader(Node):
    """Loads a fast neural style network (the PyTorch examples' TransformerNet .pth/.model files, e.g.
    candy, mosaic, udnie) from models/style_models. Weights only: pickles holding code are refused."""

    category = "loaders/style"
    display_name = "Load Fast Style Model"
    inputs = [Combo("style_name", _style_models, tooltip="A TransformerNet file in models/style_models.")]
    outputs = [Out("STYLE_NET")]

    @classmethod
    def fingerprint(cls, style_name):
        return context.current().folders.model_stamp("style_models", style_name)

    def run(self, style_name):
        from safetensors import SafetensorError

        from .models.single_file import CheckpointError, read_state_dict
        from .styling.transformer_net import load_transformer_net

        try:
            path = context.current().folders.model_path("style_models", style_name)
            state, _ = read_state_dict(path)
            return (load_transformer_net(state),)
        except (CheckpointError, SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"FastStyleModelLoader: style_name: {exc}") from exc


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
        from .styling.transformer_net import stylise

        device = context.current().device
        image = image[..., :3]
        style_net.to(device)
        try:
            styled = stylise(style_net, image, device)
        finally:
            style_net.to("cpu")
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
        import torch

        from safetensors import SafetensorError

        from .styling.features import feature_net
        from .styling.neural import transfer

        ctx = context.current()
        try:
            net = feature_net(ctx.folders, seed % 2 ** 63).to(ctx.device)
        except (OSError, ValueError, SafetensorError) as exc:  # a broken file in models/vgg
            raise ValueError(f"NeuralStyleTransfer: models/vgg: {exc}") from exc
        total = iterations * content.shape[0]
        results = []
        try:
            for b in range(content.shape[0]):
                done = b * iterations
                picture = content[b:b + 1, ..., :3].movedim(-1, 1).float()
                source = style[b % style.shape[0]][None, ..., :3].movedim(-1, 1).float()
                results.append(transfer(
                    net, picture, source, iterations, content_weight, style_weight, learning_rate,
                    (seed + b) % 2 ** 63, ctx.device,
                    on_step=lambda i, _loss, done=done: ctx.progress(done + i + 1, total)))
        finally:
            net.to("cpu")  # also when interrupted: the feature net must not stay in VRAM
        out = torch.cat(results).movedim(1, -1).contiguous()
        return NodeOutput(out, ui={"text": [f"features: {net.description}"]})


class ColorTransfer(Node):
    """Gives images the colours of a reference: Reinhard mean/std matching in Lab, or per-channel
    histogram matching. Reference image i serves image i (cycling)."""

    category = "image/style"
    display_name = "Color Transfer"
    inputs = [
        Input("image", "IMAGE"),
        Input("reference", "IMAGE"),
        Combo("method", ["reinhard_lab", "histogram"], "reinhard_lab"),
        Float("strength", 1.0, min=0.0, max=1.0, step=0.01, tooltip="0 keeps the image's colours."),
    ]
    outputs = [Out("IMAGE")]

    def run(self, image, reference, method, strength):
        import torch

        from .styling.color import match_histograms, reinhard

        transfer = {"reinhard_lab": reinhard, "histogram": match_histograms}.get(method)
        if transfer is None:
            raise ValueError(f"ColorTransfer: method: unknown method {method!r}")
        out = torch.stack([transfer(img[..., :3].float(), reference[b % reference.shape[0]][..., :3].float())
                           for b, img in enumerate(image)])
        return ((image[..., :3] * (1 - strength) + out * strength).clamp(0, 1),)


NODES = [FastStyleModelLoader, FastStyleTransfer, NeuralStyleTransfer, ColorTransfer]
