"""Train genloom's shipped text-to-image model from nothing, on a couple of CPU cores.

A fresh install has no weights and cannot download any, so genloom grows its own: a Stable Diffusion
1.x-layout latent diffusion model (CLIP BPE tokenizer, CLIPTextModel, AutoencoderKL,
UNet2DConditionModel) trained on the captioned shapes of tools/shapes.py. The result is a standard
diffusers folder, so every loader that reads SD1.x-style folders reads it. Budgets are in steps and all
randomness is seeded, so a run on the same machine gives the same weights.

    python tools/train_tiny_model.py                      # the shipped model
    python tools/train_tiny_model.py --quick --out /tmp/m # seconds; for tests
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "diffusers" / "genloom-tiny"
DEFAULT_CKPT = REPO / "models" / "checkpoints" / "genloom-tiny.safetensors"

IMAGE_SIZE = 32
MAX_TOKENS = 77  # SD1.x's context length: loaders and ComfyUI-style encoders assume it
# Latents are rescaled after VAE training so SD1.x's fixed factor holds: loaders that ignore the config agree.
SCALING_FACTOR = 0.18215
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"

# The noise schedule of SD1.x, so samplers with that schedule built in (ComfyUI's "normal", "karras") fit.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# ---- tokenizer ----------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-character table, so byte-level BPE files read as text."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def train_bpe(captions: list[str], merges_wanted: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style byte-level BPE: every byte (plain and word-final) plus the most frequent merges.

    Covering all bytes means any prompt tokenizes without unknowns; the merges make the caption
    vocabulary whole words so the text encoder sees one token per word.
    """
    table = _bytes_to_unicode()
    words = Counter(w for c in captions for w in c.lower().split())
    seqs = {w: [table[b] for b in w.encode()[:-1]] + [table[w.encode()[-1]] + WORD_END] for w in words}
    base = [table[b] for b in range(256)]
    vocab_list = base + [c + WORD_END for c in base]
    merges: list[tuple[str, str]] = []
    for _ in range(merges_wanted):
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for a, b in zip(seq, seq[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        # Ties broken by the pair itself so the result never depends on dict order.
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab_list.append(a + b)
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = out
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def save_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "do_lower_case": True,
              "add_prefix_space": False, "errors": "replace", "clean_up_tokenization_spaces": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


# ---- models -------------------------------------------------------------------------------------

def build_models(vocab_size: int, bos_id: int, eos_id: int, vae_channels=(16, 32, 32)):
    """The three networks, sized so the whole folder stays under ~9 MB and trains in minutes on 2 cores."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=64, hidden_act="quick_gelu",
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id))
    # 32 px pictures, 4x downsampling: a 4x8x8 latent, the size ComfyUI's EmptyLatentImage makes for
    # 64x64. An 8x VAE at 64 px (or 32 px) did not learn on 2 busy cores in budget: see docs/tiny-model.md.
    # Few groups per GroupNorm: a group of few channels normalises flat colours away.
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        block_out_channels=tuple(vae_channels), layers_per_block=1, norm_num_groups=2,
        scaling_factor=SCALING_FACTOR)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2 ** (len(vae_channels) - 1), in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4, 4), norm_num_groups=16)
    for model in (vae, unet):
        _zero_init_residuals(model)
    # Start the posterior nearly deterministic: with a whisper of KL the encoder would otherwise spend
    # most of a short run learning to shrink unit-variance sampling noise that wrecks reconstructions.
    with torch.no_grad():
        vae.quant_conv.weight[4:].zero_()
        vae.quant_conv.bias[4:].fill_(-8.0)
    return text_encoder, vae, unet


def _zero_init_residuals(model) -> None:
    """Start every residual branch at zero: each block begins as the identity and training converges faster."""
    import torch

    for name, module in model.named_modules():
        target = None
        if name.endswith(("resnets.0", "resnets.1", "resnets.2")) and hasattr(module, "conv2"):
            target = module.conv2
        elif name.endswith("attn1") or name.endswith("attn2") or name.endswith("attentions.0"):
            target = getattr(module, "to_out", [None])[0] if hasattr(module, "to_out") else getattr(module, "proj_out", None)
        if isinstance(target, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.zeros_(target.weight)
            if target.bias is not None:
                torch.nn.init.zeros_(target.bias)


def make_scheduler():
    """Euler on SD1.x's schedule: good at ~20 steps on this model (PNDM, SD1.5's default, is not)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(**SCHEDULE, prediction_type="epsilon", timestep_spacing="linspace",
                                  steps_offset=1)


# ---- training stages ----------------------------------------------------------------------------

def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_vae(vae, pixels, steps: int, batch: int, seed: int, lr: float) -> list[float]:
    """Reconstruction (MSE + L1) with a whisper of KL: flat colours and crisp edges matter, sampling diversity does not."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    bar = tqdm(range(steps), desc="vae", unit="step", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, max(steps // 20, 1))
        idx = torch.randint(len(pixels), (batch,), generator=gen)
        losses.append(vae_step(vae, opt, pixels[idx], gen))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    vae.eval()
    return losses


def vae_step(vae, opt, x, gen) -> float:
    """One optimiser step on pictures x: MSE + 0.5 L1 on a sampled posterior, a whisper of KL."""
    import torch

    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
    rec = vae.decode(z).sample
    loss = torch.nn.functional.mse_loss(rec, x) + 0.5 * (rec - x).abs().mean() + 1e-6 * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def encode_latents(vae, pixels, batch: int = 256):
    """Posterior means and stds of the whole pool, computed once so diffusion training never runs the encoder."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            post = vae.encode(pixels[i:i + batch]).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def normalise_latent_space(vae, means, stds):
    """Fold a shift and scale into quant_conv/post_quant_conv so latents have mean 0 and std 1/0.18215.

    The decoder's output is unchanged (post_quant_conv is 1x1, so the inverse is exact); what changes is
    that SD1.x's fixed scaling factor now yields unit-variance latents, whoever does the scaling.
    Returns the pool's posterior means and stds in the new latent space.
    """
    import torch

    mu = means.mean(dim=(0, 2, 3))
    std = (means - mu[None, :, None, None]).std()
    k = (1.0 / SCALING_FACTOR) / std
    with torch.no_grad():
        q, pq = vae.quant_conv, vae.post_quant_conv
        c = mu.numel()
        q.weight[:c] *= k
        q.bias[:c] = (q.bias[:c] - mu) * k
        q.bias[c:] += 2 * torch.log(k)
        pq.bias += (pq.weight[:, :, 0, 0] * mu[None, :]).sum(1)
        pq.weight /= k
    return (means - mu[None, :, None, None]) * k, stds * k


def reconstruction_score(vae, means, samples) -> dict[str, float]:
    """The judges on decoded latents: a ceiling on what the diffusion model can reach."""
    import torch

    with torch.no_grad():
        rec = vae.decode(means).sample
    pics = ((rec.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
    return shapes.score(pics, samples)


def train_diffusion(unet, text_encoder, means, stds, token_ids, steps: int, batch: int, seed: int, lr: float,
                    uncond_ids, drop: float = 0.1) -> list[float]:
    """Epsilon prediction on SD1.x's schedule, text encoder trained jointly, captions dropped for CFG."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    betas = torch.linspace(SCHEDULE["beta_start"] ** 0.5, SCHEDULE["beta_end"] ** 0.5, 1000) ** 2
    abar = torch.cumprod(1 - betas, 0)
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=5.0) / snr  # min-SNR: stop the easy low-noise steps dominating
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    unet.train()
    text_encoder.train()
    losses = []
    bar = tqdm(range(steps), desc="unet+text", unit="step", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, max(steps // 20, 1))
        idx = torch.randint(len(means), (batch,), generator=gen)
        lat = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * SCALING_FACTOR
        ids = token_ids[idx].clone()
        ids[torch.rand(batch, generator=gen) < drop] = uncond_ids
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noise = torch.randn(lat.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * lat + (1 - a).sqrt() * noise
        cond = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = (((pred - noise) ** 2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    unet.eval()
    text_encoder.eval()
    return losses


def write_single_file(diffusers_dir: Path, out_path: Path) -> str:
    """The single-file checkpoint comes from the engine's own converter; without it, say so and go on."""
    try:
        from genloom.diffusion.models.single_file import save_single_file
    except ImportError as exc:
        return f"skipped single-file checkpoint (converter not available: {exc})"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_single_file(diffusers_dir, out_path)
    return f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB)"


# ---- driver -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="diffusers folder to write")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="single-file checkpoint to write (default: models/checkpoints/genloom-tiny.safetensors "
                         "for the shipped model, none otherwise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=12000, help="size of the drawn training pool")
    ap.add_argument("--steps-vae", type=int, default=3000)
    ap.add_argument("--steps-unet", type=int, default=2700)
    ap.add_argument("--batch-vae", type=int, default=16)
    ap.add_argument("--batch-unet", type=int, default=48)
    ap.add_argument("--lr-vae", type=float, default=5e-3)
    ap.add_argument("--lr-unet", type=float, default=2e-3)
    ap.add_argument("--vae-channels", default="16,32,32",
                    help="AutoencoderKL block widths; each level after the first halves the resolution")
    ap.add_argument("--merges", type=int, default=120, help="BPE merges learnt on top of the 512 byte tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few seconds' run that only proves the pipeline")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.steps_vae, args.steps_unet, args.batch_vae, args.batch_unet = 64, 3, 3, 8, 8

    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    times: dict[str, float] = {}
    t0, cpu0 = time.perf_counter(), time.process_time()

    images, samples = shapes.dataset(args.images, args.seed, IMAGE_SIZE)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    captions = [s.caption for s in samples]
    # The tokenizer learns from every caption the grammar can produce, not only the drawn ones.
    all_captions = sorted({shapes.caption(sh, c, b) for sh in shapes.SHAPES for c in shapes.COLOUR_NAMES
                           for b in shapes.COLOUR_NAMES if b != c})
    vocab, merges = train_bpe(all_captions, args.merges)
    tok_dir = args.out / "tokenizer"
    save_tokenizer(vocab, merges, tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)

    def tokenize(texts):
        return tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                         return_tensors="pt").input_ids

    token_ids = tokenize(captions)
    uncond_ids = tokenize([""])[0]
    times["data"] = time.perf_counter() - t0

    text_encoder, vae, unet = build_models(len(vocab), vocab[BOS], vocab[EOS],
                                             tuple(int(c) for c in args.vae_channels.split(",")))
    n_params = {n: sum(p.numel() for p in m.parameters()) for n, m in
                (("text_encoder", text_encoder), ("vae", vae), ("unet", unet))}
    print("parameters:", n_params, flush=True)

    t = time.perf_counter()
    vae_losses = train_vae(vae, pixels, args.steps_vae, args.batch_vae, args.seed + 1, args.lr_vae)
    times["vae"] = time.perf_counter() - t

    t = time.perf_counter()
    means, stds = encode_latents(vae, pixels)
    means, stds = normalise_latent_space(vae, means, stds)
    times["encode"] = time.perf_counter() - t
    vae_judged = reconstruction_score(vae, means[:200], samples[:200])
    print("judges on VAE reconstructions:", vae_judged, flush=True)

    t = time.perf_counter()
    unet_losses = train_diffusion(unet, text_encoder, means, stds, token_ids, args.steps_unet, args.batch_unet,
                                  args.seed + 2, args.lr_unet, uncond_ids)
    times["unet"] = time.perf_counter() - t

    t = time.perf_counter()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=make_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(args.out, safe_serialization=True)
    ckpt = args.checkpoint or (DEFAULT_CKPT if args.out.resolve() == DEFAULT_OUT.resolve() else None)
    print(write_single_file(args.out, ckpt) if ckpt else "no single-file checkpoint requested", flush=True)
    times["save"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    # CPU seconds over wall seconds shows how much a busy machine slowed the run.
    times["cpu_total"] = time.process_time() - cpu0

    report = {
        "seed": args.seed, "threads": args.threads, "images": args.images,
        "steps": {"vae": args.steps_vae, "unet": args.steps_unet},
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "seconds_per_step": {"vae": round(times["vae"] / max(args.steps_vae, 1), 3),
                             "unet": round(times["unet"] / max(args.steps_unet, 1), 3)},
        "final_loss": {"vae": float(np.mean(vae_losses[-50:])), "unet": float(np.mean(unet_losses[-100:]))},
        "parameters": n_params,
        "judges_on_vae_reconstructions": vae_judged,
        "megabytes": round(sum(f.stat().st_size for f in args.out.rglob("*.safetensors")) / 1e6, 2),
    }
    print(json.dumps(report, indent=2), flush=True)
    return report


if __name__ == "__main__":
    main()
