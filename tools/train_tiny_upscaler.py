"""Train the shipped 2x upscaler (models/upscale_models/genloom-2x.safetensors) on procedural pictures.

The network is an ESRGAN (RRDBNet) in BasicSR's key layout, so the upscale nodes load it through
spandrel exactly like a downloaded Real-ESRGAN file: that keeps the loader honest, and the file is a
real, if small, upscaler rather than a test fixture. It starts out as exact bilinear upsampling (see
`start_as_bilinear`) and only learns the sharpening on top, which is what makes a few minutes on two
CPU cores enough to beat bicubic. Everything follows from seeds and a step budget, so two runs with the same thread count give the same weights.

    python tools/train_tiny_upscaler.py [--steps 2000] [--threads 2] [--out models/upscale_models/genloom-2x.safetensors]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402  (tools/shapes.py: the project's procedural shapes and palette)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "upscale_models" / "genloom-2x.safetensors"
GROWTH = 32  # spandrel's RRDBNet always builds 32 growth channels


def build_net(num_feat: int = 16, num_blocks: int = 1, scale: int = 2):
    """An RRDBNet whose state dict uses BasicSR's names (conv_first, body.N.rdbK.convM, conv_up1...)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    def lrelu(x):
        return F.leaky_relu(x, 0.2)

    class DenseBlock(nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(4):
                setattr(self, f"conv{i + 1}", nn.Conv2d(num_feat + i * GROWTH, GROWTH, 3, 1, 1))
            self.conv5 = nn.Conv2d(num_feat + 4 * GROWTH, num_feat, 3, 1, 1)
            with torch.no_grad():  # small residual branches: each block starts close to identity
                for conv in self.children():
                    conv.weight.mul_(0.1)

        def forward(self, x):
            feats = [x]
            for i in range(4):
                feats.append(lrelu(getattr(self, f"conv{i + 1}")(torch.cat(feats, 1))))
            return self.conv5(torch.cat(feats, 1)) * 0.2 + x

    class RRDB(nn.Module):
        def __init__(self):
            super().__init__()
            self.rdb1, self.rdb2, self.rdb3 = DenseBlock(), DenseBlock(), DenseBlock()

        def forward(self, x):
            return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x

    stages = int(math.log2(scale))

    class RRDBNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
            self.body = nn.Sequential(*[RRDB() for _ in range(num_blocks)])
            self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            for i in range(stages):
                setattr(self, f"conv_up{i + 1}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

        def forward(self, x):
            feat = self.conv_first(x)
            feat = feat + self.conv_body(self.body(feat))
            for i in range(stages):
                up = getattr(self, f"conv_up{i + 1}")
                feat = lrelu(up(F.interpolate(feat, scale_factor=2, mode="nearest")))
            return self.conv_last(lrelu(self.conv_hr(feat)))

    return RRDBNet()


def start_as_bilinear(net) -> None:
    """Make the untrained net compute bilinear 2x upsampling exactly, on feature channels 0..2.

    Channels 0..2 carry the picture: identity through conv_first, the body's residual is cut off
    from them, the first upsampling conv smooths the nearest-neighbour copy with a [1, 2, 1] / 4
    kernel (which is bilinear interpolation at half-pixel centres), and conv_hr / conv_last pass them
    through (pixel values are >= 0, so the leaky ReLUs do too). The other channels stay random and
    free to learn detail. Convolution gradients reach the zeroed weights, so nothing is frozen.
    """
    import torch

    smooth = torch.tensor([1.0, 2.0, 1.0]) / 4
    with torch.no_grad():
        for conv in (net.conv_first, net.conv_body, net.conv_up1, net.conv_hr, net.conv_last):
            conv.weight[:3].zero_()
            conv.bias[:3].zero_()
        net.conv_last.weight.zero_()
        net.conv_last.bias.zero_()
        for c in range(3):
            net.conv_first.weight[c, c, 1, 1] = 1.0
            net.conv_up1.weight[c, c] = smooth[:, None] * smooth[None, :]
            net.conv_hr.weight[c, c, 1, 1] = 1.0
            net.conv_last.weight[c, c, 1, 1] = 1.0


# ---------------------------------------------------------------- procedural pictures

def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour noise at a random grain, upsampled smoothly: soft textures the shapes alone lack."""
    cells = int(rng.integers(2, max(3, size // 3)))
    small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), dtype=np.float32)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    a, b = rng.random(3) * 255, rng.random(3) * 255
    ang = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.clip((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang) + 0.5, 0, 1)[..., None]
    return a * (1 - t) + b * t


def _pattern(rng: np.random.Generator, size: int) -> Image.Image:
    """Stripes or a checkerboard at a random angle and pitch, drawn supersampled (anti-aliased)."""
    ss = shapes.SUPERSAMPLE
    big = size * ss
    pitch = rng.uniform(3, 12) * ss
    ang = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    on = (np.floor(u / pitch) % 2).astype(bool)
    if rng.random() < 0.5:
        on ^= (np.floor(v / pitch) % 2).astype(bool)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = np.where(on[..., None], c1, c2).astype(np.uint8)
    return Image.fromarray(img).resize((size, size), Image.BOX)


def picture(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """uint8 [size, size, 3]: a background (flat, gradient, noise or pattern) with a few shapes on it."""
    kind = rng.integers(4)
    if kind == 0:
        base = np.full((size, size, 3), shapes.COLOURS[shapes.COLOUR_NAMES[rng.integers(8)]], np.float32)
    elif kind == 1:
        base = _gradient(rng, size)
    elif kind == 2:
        base = _smooth_noise(rng, size)
    else:
        base = np.asarray(_pattern(rng, size), dtype=np.float32)
    ss = shapes.SUPERSAMPLE
    big = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size * ss,) * 2, Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for _ in range(int(rng.integers(1, 5))):
        shape = shapes.SHAPES[rng.integers(len(shapes.SHAPES))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        s = rng.uniform(0.12, 0.6) * size * ss
        cx, cy = rng.uniform(0, size * ss, 2)
        if shape == "circle":
            draw.ellipse([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], fill=colour)
        else:
            draw.polygon(shapes.shape_polygon(shape, cx, cy, s), fill=colour)
    if rng.random() < 0.3:
        draw.line([tuple(rng.uniform(0, size * ss, 2)), tuple(rng.uniform(0, size * ss, 2))],
                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(2, 10)))
    img = big.resize((size, size), Image.BOX)
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return np.asarray(img)


def pictures(n: int, seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([picture(rng, size) for _ in range(n)])


def downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """The degradation the model learns to undo: PIL's (anti-aliased) bicubic reduction."""
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC))


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.BICUBIC))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * math.log10(255.0 ** 2 / max(mse, 1e-10)))


def upscale(net, lr: np.ndarray, scale: int = 2, margin: int = 8) -> np.ndarray:
    """uint8 HR picture from the net, with the borders mirrored out first as ImageUpscaleWithModel does."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(lr.copy()).float().permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        y = net(F.pad(x, [margin] * 4, mode="reflect")).clamp(0, 1)
    cut = margin * scale
    y = y[0, :, cut:y.shape[2] - cut, cut:y.shape[3] - cut].permute(1, 2, 0).numpy()
    return np.round(y * 255).astype(np.uint8)


def evaluate(net, images: np.ndarray, scale: int = 2) -> tuple[float, float]:
    """Mean PSNR (model, bicubic) over HR pictures, both judged against the original."""
    ours, bic = [], []
    for hr in images:
        lr = downscale(hr, scale)
        ours.append(psnr(hr, upscale(net, lr, scale)))
        bic.append(psnr(hr, bicubic_up(lr, scale)))
    return float(np.mean(ours)), float(np.mean(bic))


# ---------------------------------------------------------------- training

def train(steps: int, seed: int = 0, batch: int = 16, patch: int = 32, num_feat: int = 16,
          num_blocks: int = 1, log=print):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    net = build_net(num_feat, num_blocks)
    start_as_bilinear(net)
    hr_pool = pictures(600, seed=seed + 1)
    lr_pool = np.stack([downscale(hr, 2) for hr in hr_pool])
    hr_t = torch.from_numpy(hr_pool).float().permute(0, 3, 1, 2) / 255
    lr_t = torch.from_numpy(lr_pool).float().permute(0, 3, 1, 2) / 255
    rng = np.random.default_rng(seed + 2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    lp = patch // 2
    start = time.time()
    for step in range(steps):
        idx = rng.integers(len(hr_pool), size=batch)
        ys, xs = rng.integers(0, lr_t.shape[2] - lp + 1, size=(2, batch))
        flips = rng.integers(0, 8, size=batch)
        lrs, hrs = [], []
        for i, y, x, f in zip(idx, ys, xs, flips):
            lo = lr_t[i, :, y:y + lp, x:x + lp]
            hi = hr_t[i, :, 2 * y:2 * y + patch, 2 * x:2 * x + patch]
            lrs.append(_dihedral(lo, f))
            hrs.append(_dihedral(hi, f))
        out = net(torch.stack(lrs))
        loss = F.l1_loss(out, torch.stack(hrs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:5d}  l1 {loss.item():.4f}  {time.time() - start:6.1f}s")
    return net


def _dihedral(t, k: int):
    """One of the 8 flips/rotations of a CHW tensor: free extra data for orientation-free pictures."""
    import torch

    if k & 4:
        t = t.transpose(1, 2)
    if k & 1:
        t = torch.flip(t, (1,))
    if k & 2:
        t = torch.flip(t, (2,))
    return t


def main(argv=None) -> int:
    import torch
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; 1 is faster on a machine busy with other work")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    net = train(args.steps, args.seed).eval()
    ours, bic = evaluate(net, pictures(64, seed=10_000 + args.seed))
    print(f"held-out procedural pictures: model {ours:.2f} dB, bicubic {bic:.2f} dB "
          f"({ours - bic:+.2f} dB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(args.out), metadata={
        "architecture": "ESRGAN (RRDBNet, BasicSR keys)", "scale": "2",
        "trained_by": "tools/train_tiny_upscaler.py", "steps": str(args.steps), "seed": str(args.seed),
        "threads": str(args.threads),
        "psnr_model_db": f"{ours:.2f}", "psnr_bicubic_db": f"{bic:.2f}"})
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, "
          f"{sum(v.numel() for v in state.values())} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
