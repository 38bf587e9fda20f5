"""The feed-forward style network of the PyTorch examples' "fast neural style" (Johnson et al.).

Written here from the published layer layout so that its state-dict keys match the files people
share (`conv1.conv2d.weight`, `in1.weight`, `res1.conv1.conv2d.weight`, `deconv1.conv2d.weight`, ...).
Files saved by old PyTorch versions carry InstanceNorm running statistics the network never uses;
they are dropped on load. The network works in 0..255 pixel values, as those files were trained.
"""

from __future__ import annotations

import re
from pathlib import Path

from genloom.diffusion.errors import CheckpointError
from genloom.diffusion.models.owner import model_owner
from genloom.diffusion.models.weights import read_weights

STALE_KEY = re.compile(r"(^|\.)in\d+\.(running_mean|running_var|num_batches_tracked)$")


def build_transformer_net():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class ConvLayer(nn.Module):
        """Reflection-padded convolution: no dark frame at the borders of the styled picture."""

        def __init__(self, cin, cout, kernel, stride=1, upsample=None):
            super().__init__()
            self.upsample = upsample
            self.pad = kernel // 2
            self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

        def forward(self, x):
            if self.upsample:
                x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
            return self.conv2d(F.pad(x, [self.pad] * 4, mode="reflect"))

    def norm(channels):
        return nn.InstanceNorm2d(channels, affine=True)

    class ResidualBlock(nn.Module):
        def __init__(self, channels=128):
            super().__init__()
            self.conv1, self.in1 = ConvLayer(channels, channels, 3), norm(channels)
            self.conv2, self.in2 = ConvLayer(channels, channels, 3), norm(channels)

        def forward(self, x):
            return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))

    class TransformerNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.in1 = ConvLayer(3, 32, 9), norm(32)
            self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), norm(64)
            self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), norm(128)
            for i in range(1, 6):
                setattr(self, f"res{i}", ResidualBlock())
            self.deconv1, self.in4 = ConvLayer(128, 64, 3, upsample=2), norm(64)
            self.deconv2, self.in5 = ConvLayer(64, 32, 3, upsample=2), norm(32)
            self.deconv3 = ConvLayer(32, 3, 9)

        def forward(self, x):
            y = torch.relu(self.in1(self.conv1(x)))
            y = torch.relu(self.in2(self.conv2(y)))
            y = torch.relu(self.in3(self.conv3(y)))
            for i in range(1, 6):
                y = getattr(self, f"res{i}")(y)
            y = torch.relu(self.in4(self.deconv1(y)))
            y = torch.relu(self.in5(self.deconv2(y)))
            return self.deconv3(y)

    return TransformerNet()


def load_style_file(path: Path):
    """A TransformerNet from a weights file (weights only: pickles holding code are refused)."""
    return load_transformer_net(read_weights(path))


def load_transformer_net(state: dict):
    """A TransformerNet from a state dict; raises CheckpointError naming missing or unexpected keys."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not STALE_KEY.search(k)}
    net = build_transformer_net()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError("not a fast-neural-style TransformerNet state dict "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    return net.eval()


def stylise(net, image, device: str):
    """IMAGE [B, H, W, 3] in 0..1 -> styled IMAGE of the same size. Sizes that are not multiples of
    4 (the two strided convolutions) are reflect-padded and cropped back. The network is on `device`
    (through the engine's memory manager) for the call."""
    import torch
    import torch.nn.functional as F

    x = image.movedim(-1, 1).float() * 255.0
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        x = F.pad(x, [0, pw, 0, ph], mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    outs = []
    with torch.no_grad(), model_owner().memory.use(net, device, name="fast style network"):
        for one in x:
            outs.append(net(one[None].to(device)).float().cpu())
    y = torch.cat(outs)[..., :h, :w] / 255.0
    return y.clamp(0, 1).movedim(1, -1).contiguous()
