"""Convolutional features for neural style transfer (Gatys et al.): VGG-19 when the user supplies its
weights, otherwise a fixed, seeded random network.

VGG-19's ImageNet features give the best results, but genloom never downloads weights: a user puts
torchvision's file (e.g. vgg19-dcbbe7ff.pth, or a .safetensors of the same keys) in models/vgg.
Without it, a random multi-scale convolutional network stands in; Gram matrices of random features
still capture colour and texture statistics, so the transfer works, only less semantically.
"""

from __future__ import annotations

import logging

from genloom.diffusion.errors import CheckpointError
from genloom.diffusion.models.weights import read_weights

log = logging.getLogger(__name__)

# Indices of ReLU outputs in torchvision's vgg19().features: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG_STYLE = (1, 6, 11, 20, 29)
VGG_CONTENT = 22  # relu4_2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureNet:
    """Callable: picture [B, 3, H, W] in 0..1 -> (style feature maps, content feature map)."""

    def __init__(self, layers, style_at, content_at, description, normalise):
        self.layers, self.style_at, self.content_at = layers, set(style_at), content_at
        self.description, self.normalise = description, normalise

    def __call__(self, x):
        if self.normalise is not None:
            mean, std = (t.to(x.device) for t in self.normalise)
            x = (x - mean) / std
        styles, content = [], None
        last = max(max(self.style_at), self.content_at)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.style_at:
                styles.append(x)
            if i == self.content_at:
                content = x
            if i >= last:
                break
        return styles, content


def vgg19_features(path) -> FeatureNet:
    """VGG-19 from a torchvision-layout weights file, loaded weights-only."""
    import torch

    state = read_weights(path)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    model = vgg19_layers()
    wanted = set(model.state_dict())
    if not wanted <= set(features):
        raise CheckpointError(f"{path.name} is not a torchvision VGG-19 state dict "
                         f"(missing features.{sorted(wanted - set(features))[0]})")
    model.load_state_dict({k: features[k] for k in wanted})
    for p in model.parameters():
        p.requires_grad_(False)
    norm = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return FeatureNet(model.eval(), VGG_STYLE, VGG_CONTENT, f"VGG-19 ({path.name})", norm)


def vgg19_layers():
    """torchvision's vgg19().features up to relu5_1, same indices and keys, without building (and
    randomly initialising) the 120 M-parameter classifier that is never used here."""
    from torch import nn

    layers, cin = [], 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512):
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU()]
            cin = item
    return nn.Sequential(*layers)


def random_features(seed: int = 0) -> FeatureNet:
    """A fixed random network: each stage pools by 2 and widens, so Gram matrices see several scales."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    layers, style_at, cin = [], [], 3
    for stage, cout in enumerate((32, 64, 128, 256)):
        if stage:
            layers.append(nn.AvgPool2d(2))
        conv = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (cin * 9)) ** 0.5)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
        style_at.append(len(layers) - 1)
        cin = cout
    model = nn.Sequential(*layers).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FeatureNet(model, style_at, style_at[2], f"random conv net (seed {seed})", None)


def feature_net(folders, seed: int = 0) -> FeatureNet:
    """VGG-19 if models/vgg holds it, else the random network; logs which one is used."""
    names = folders.list_models("vgg")
    names.sort(key=lambda n: (0 if "vgg19" in n.lower() else 1, n))
    if names:
        net = vgg19_features(folders.model_path("vgg", names[0]))
    else:
        net = random_features(seed)
    log.info("neural style transfer features: %s", net.description)
    return net
