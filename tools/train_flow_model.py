"""Train genloom-flow, genloom's second shipped model, from nothing on a couple of CPU cores.

A Flux.1-architecture text-to-image model (a FluxTransformer2DModel with guidance embedding, CLIP-L
and T5 text encoders over the real tokenizers, a 16-channel VAE) trained on the compositional scenes
of tools/scenes.py, and written as the split files users download for Flux.1 dev:

    models/diffusion_models/genloom-flow.safetensors      Black Forest Labs' key layout (UNETLoader)
    models/text_encoders/genloom-flow-clip-l.safetensors  CLIPTextModel keys, fp16 (DualCLIPLoader)
    models/text_encoders/genloom-flow-t5.safetensors      T5EncoderModel keys, fp16 (DualCLIPLoader)
    models/vae/genloom-flow-ae.safetensors                the `ae` (LDM) layout (VAELoader)

Budgets are in steps and every random draw is seeded: the same seed and thread count give the same
weights. See docs/tiny-model.md ("genloom-flow") for the recipe and its figures.

    python tools/train_flow_model.py                       # the shipped model
    python tools/train_flow_model.py --quick --out /tmp/m  # seconds; for tests
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenes  # noqa: E402
from train_tiny_model import _lr, encode_latents, vae_step  # noqa: E402  (the first model's schedule, VAE step, encoder pass)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models"
FILES = {"transformer": "diffusion_models/genloom-flow.safetensors",
         "clip_l": "text_encoders/genloom-flow-clip-l.safetensors",
         "t5xxl": "text_encoders/genloom-flow-t5.safetensors", "vae": "vae/genloom-flow-ae.safetensors"}

IMAGE_SIZE = 64
LATENT_CHANNELS = 16
# ComfyUI's fixed Flux latent format: the sampler feeds the network (raw - SHIFT) * SCALE.
SCALE, SHIFT = 0.3611, 0.1159
CLIP_TOKENS, T5_TOKENS = 77, 256  # what genloom's (and ComfyUI's) Flux text encoding makes
CLIP_END = 49407
T5_KEPT = 24  # T5 positions the transformer sees one by one in training; the padding after them is one token
FLUX_MU = 1.15  # a dev model's default time shift (the workflow has no ModelSamplingFlux: see docs)
PAD_NORM = 400.0  # the T5 padding embedding's length: see _t5_padding


# ---- models -------------------------------------------------------------------------------------

def build_models(width: int, heads: int, double: int, single: int, vae_channels: tuple, seed: int):
    """CLIP-L, T5, VAE and transformer at tiny sizes whose configs genloom's loaders read back from
    the shapes alone (CLIP: 64-wide heads; T5: heads from the relative-bias table)."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from genloom.diffusion.models.families.flux import rope_axes

    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=CLIP_TOKENS, hidden_act="quick_gelu", projection_dim=64, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(
        vocab_size=32128, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), block_out_channels=tuple(vae_channels),
        layers_per_block=1, norm_num_groups=2, scaling_factor=SCALE, shift_factor=SHIFT,
        use_quant_conv=False, use_post_quant_conv=False)
    head_dim = width // heads
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=double, num_single_layers=single,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=t5.config.d_model,
        pooled_projection_dim=clip.config.hidden_size, guidance_embeds=True, axes_dims_rope=rope_axes(head_dim))
    with torch.no_grad():
        # adaLN-zero: every block starts as the identity and the output at zero.
        for name, module in transformer.named_modules():
            if name.endswith(("norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear")) \
                    or name == "proj_out":
                module.weight.zero_()
                module.bias.zero_()
        for name, module in vae.named_modules():  # residual branches too (train_tiny_model.py)
            if "resnets" in name and hasattr(module, "conv2"):
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
        # Start the posterior nearly deterministic (see train_tiny_model.py): a short run should not
        # spend itself shrinking sampling noise.
        vae.encoder.conv_out.weight[LATENT_CHANNELS:].zero_()
        vae.encoder.conv_out.bias[LATENT_CHANNELS:].fill_(-8.0)
    _t5_padding(t5, seed)
    return clip, t5, vae, transformer


def _t5_padding(t5, seed: int) -> None:
    """Give T5's padding token (id 0) a fixed, very long embedding.

    Flux conditioning is 256 T5 positions, nearly all padding, and every one goes through the
    transformer. With a padding embedding this long, each pre-norm layer sees the same padding
    vector wherever it stands, so every padding position leaves T5 as (nearly) the same vector; and
    N equal keys in an attention are exactly one key whose score is raised by log N. Training then
    runs the transformer on T5_KEPT positions plus one stand-in for the rest (`joint_inputs`), 4x
    cheaper, and sampling with all 256 computes the same thing (checked: `padding_gap`).
    """
    import torch

    g = torch.Generator().manual_seed(seed + 7)
    v = torch.randn(t5.config.d_model, generator=g)
    with torch.no_grad():
        t5.shared.weight[0] = v / v.norm() * PAD_NORM


# ---- VAE ----------------------------------------------------------------------------------------

def train_vae(vae, pixels, steps: int, batch: int, seed: int, lr: float, crop: int = 0) -> list[float]:
    """MSE + 0.5 L1 with a whisper of KL; halfway, the latent space is put into Flux's latent format
    (`fit_latent_format`) and training goes on, so the decoder settles on the final scale. With
    `crop`, the first 80% of the steps see random crops of that side (the network is convolutional)."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    losses = []
    bar = tqdm(range(steps), desc="vae", unit="step", dynamic_ncols=True)
    for step in bar:
        if step == steps // 2:
            vae.eval()
            fit_latent_format(vae, encode(vae, pixels[:2048])[0])
            vae.train()
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, max(steps // 20, 1))
        x = pixels[torch.randint(len(pixels), (batch,), generator=gen)]
        if crop and step < steps * 0.8:  # mostly on crops (4x cheaper), the last fifth on whole pictures
            i, j = (int(v) for v in torch.randint(0, x.shape[-1] - crop + 1, (2,), generator=gen))
            x = x[..., i:i + crop, j:j + crop]
        losses.append(vae_step(vae, opt, x, gen))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    vae.eval()
    return losses


def encode(vae, pixels):
    """Posterior means and stds (raw VAE latents), in the batches the shipped run used."""
    return encode_latents(vae, pixels, batch=128)


def fit_scale(vae, means) -> None:
    """Scale the latent space (exactly: the encoder's last conv out, the decoder's first conv in) so
    that (raw - SHIFT) * SCALE has std 1 over `means`, after training has moved it since
    `fit_latent_format`."""
    import torch

    c = LATENT_CHANNELS
    k = (1.0 / SCALE) / ((means - means.mean()).std())
    with torch.no_grad():
        out, inp = vae.encoder.conv_out, vae.decoder.conv_in
        out.weight[:c] *= k
        out.bias[:c] *= k
        out.bias[c:] += 2 * torch.log(k)
        inp.weight /= k


def fit_latent_format(vae, means) -> None:
    """Affine change of latent coordinates so that (raw - SHIFT) * SCALE has mean 0 and std 1.

    Folded into the encoder's last conv (exact) and the decoder's first (exact but for its one-cell
    border, where the zero padding sees the shift: the training that follows absorbs that)."""
    import torch

    c = LATENT_CHANNELS
    mu = means.mean(dim=(0, 2, 3))
    k = (1.0 / SCALE) / (means - mu[None, :, None, None]).std()
    with torch.no_grad():
        out, inp = vae.encoder.conv_out, vae.decoder.conv_in
        out.weight[:c] *= k
        out.bias[:c] = (out.bias[:c] - mu) * k + SHIFT
        out.bias[c:] += 2 * torch.log(k)
        # decoder sees z_old = (z - SHIFT) / k + mu
        inp.bias += (inp.weight * (mu - SHIFT / k)[None, :, None, None]).sum(dim=(1, 2, 3))
        inp.weight /= k


# ---- text ---------------------------------------------------------------------------------------

def tokenize(captions: list[str]):
    """Token ids as genloom's Flux encoding builds them: CLIP-L's one window of 77 (start, tokens, end,
    end-padding) and T5's tokens, end token and padding to 256."""
    from genloom.diffusion.models.text_encoders import clip_tokenizer, t5_tokenizer

    clip_ids = clip_tokenizer("clip_l")(captions, padding="max_length", max_length=CLIP_TOKENS,
                                        truncation=True, return_tensors="pt").input_ids
    t5_ids = t5_tokenizer()(captions, padding="max_length", max_length=T5_TOKENS, truncation=True,
                            return_tensors="pt").input_ids
    return clip_ids, t5_ids


def joint_inputs(t5_hidden):
    """T5's 256 positions -> the first T5_KEPT and one stand-in for the padding after them, with the
    attention bias (log of how many it stands for) that makes the two inputs equivalent."""
    import torch

    rest = t5_hidden[:, T5_KEPT:]
    txt = torch.cat([t5_hidden[:, :T5_KEPT], rest.mean(dim=1, keepdim=True)], dim=1)
    return txt, math.log(rest.shape[1])


def t5_collapsed(t5, ids):
    """T5's output at its first T5_KEPT positions and at one padding position standing for all of them
    ([B, T5_KEPT + 1, d]), from those T5_KEPT + 1 positions alone: 10x cheaper than all 256.

    Every position from T5_KEPT on holds the padding token (asserted by the caller), so its layer
    inputs are (nearly, exactly in the first layer) one vector (`_t5_padding`); attention to them
    is then one key whose score is raised, per query and head, by the log-sum-exp of the relative
    position biases of the positions it stands for. `text_gap` measures what is left over."""
    import torch

    enc, n = t5.encoder, ids.shape[1]
    x = enc.embed_tokens(ids[:, :T5_KEPT + 1])
    bias = enc.block[0].layer[0].SelfAttention.compute_bias(n, n)[0, :, :T5_KEPT + 1]  # [H, K + 1, n]
    bias = torch.cat([bias[..., :T5_KEPT], torch.logsumexp(bias[..., T5_KEPT:], dim=-1, keepdim=True)], dim=-1)
    for block in enc.block:
        norm, att = block.layer[0].layer_norm, block.layer[0].SelfAttention
        h = norm(x)
        q, k, v = (f(h).unflatten(-1, (att.n_heads, -1)).transpose(1, 2) for f in (att.q, att.k, att.v))
        w = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # T5 does not scale its scores
        x = x + att.o((w @ v).transpose(1, 2).flatten(2))
        x = block.layer[1](x)
    return enc.final_layer_norm(x)


def text_gap(clip, t5, clip_ids, t5_ids) -> dict:
    """Largest |difference| between the text inputs training computes (`t5_collapsed`, CLIP cut after
    its last end token) and those of sampling (all 256 T5 positions, CLIP's 77), relative to scale."""
    import torch

    with torch.no_grad():
        full, _bias = joint_inputs(t5(t5_ids)[0])
        short = t5_collapsed(t5, t5_ids)
        pooled = clip(clip_ids).pooler_output
        cut = clip(clip_ids[:, :_clip_len(clip_ids)]).pooler_output
    return {"t5": float((full - short).abs().max() / full.abs().max()),
            "clip": float((pooled - cut).abs().max() / pooled.abs().max())}


def _clip_len(clip_ids) -> int:
    """CLIP positions up to the last end token of these captions: CLIP's mask is causal, so what
    follows an end token changes nothing the pooled output (read at the end token) depends on."""
    return int((clip_ids == CLIP_END).int().argmax(dim=1).max()) + 1


def _attention_bias(bias: float, n_txt: int, n_img: int):
    import torch

    mask = torch.zeros(1, 1, 1, n_txt + n_img)
    mask[..., n_txt - 1] = bias  # text tokens come first in Flux's joint attention
    return mask


def predict(transformer, x, sigma, txt, pooled, guidance, bias: float | None):
    """The transformer's velocity for latents x [B, 16, H, W] in the model's latent format, as
    genloom's Flux MODEL calls it (flux_model.FluxHandle.predict)."""
    import torch

    from genloom.diffusion.models.flux_model import pack, position_ids, unpack

    b, _c, h, w = x.shape
    img_ids = position_ids(h // 2, w // 2, 0, 0, 0, x.device)
    kwargs = {} if bias is None else {"attention_mask": _attention_bias(bias, txt.shape[1], img_ids.shape[0])}
    out = transformer(hidden_states=pack(x), encoder_hidden_states=txt, pooled_projections=pooled,
                      timestep=sigma, img_ids=img_ids, txt_ids=torch.zeros(txt.shape[1], 3), guidance=guidance,
                      joint_attention_kwargs=kwargs, return_dict=False)[0]
    return unpack(out, h // 2, w // 2)


def padding_gap(transformer, clip, t5, clip_ids, t5_ids, latents, seed: int) -> float:
    """Largest |difference| between the transformer's output on all 256 T5 positions (sampling) and
    on the compressed input training uses, relative to the output's scale."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hidden = t5(t5_ids)[0]
        pooled = clip(clip_ids).pooler_output
        x = torch.randn(latents.shape, generator=gen)
        sigma = torch.full((len(x),), 0.7)
        g = torch.full((len(x),), 3.5)
        full = predict(transformer, x, sigma, hidden, pooled, g, None)
        txt, bias = joint_inputs(hidden)
        short = predict(transformer, x, sigma, txt, pooled, g, bias)
    return float((full - short).abs().max() / full.abs().max())


# ---- transformer + text encoders ----------------------------------------------------------------

def train_flow(transformer, clip, t5, latents, clip_ids, t5_ids, empty, steps: int, batch: int, seed: int,
               lr: float, drop: float = 0.1) -> list[float]:
    """Rectified flow (velocity noise - x0) at sigmas drawn as the sampler visits them (uniform in t,
    then Flux dev's time shift), text encoders trained jointly (T5 through `t5_collapsed`, CLIP cut
    after the last end token: half of a step's time before), captions dropped for guidance. The
    guidance input is drawn from [1, 5] and never changes the target: the model learns to ignore it."""
    import torch
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    means, stds = latents
    if (t5_ids[:, T5_KEPT:] != 0).any() or (empty[1][T5_KEPT:] != 0).any():
        raise ValueError(f"captions longer than {T5_KEPT} T5 tokens: raise T5_KEPT")
    clip_len, pad_bias = _clip_len(clip_ids), math.log(T5_TOKENS - T5_KEPT)
    params = list(transformer.parameters()) + list(clip.parameters()) + list(t5.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    for m in (transformer, clip, t5):
        m.train()
    losses = []
    bar = tqdm(range(steps), desc="flow+text", unit="step", dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, max(steps // 20, 1))
        idx = torch.randint(len(means), (batch,), generator=gen)
        x0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen) - SHIFT) * SCALE
        c_ids, t_ids = clip_ids[idx].clone(), t5_ids[idx].clone()
        dropped = torch.rand(batch, generator=gen) < drop
        c_ids[dropped], t_ids[dropped] = empty[0], empty[1]
        u = torch.rand(batch, generator=gen).clamp(min=1e-4)
        sigma = math.exp(FLUX_MU) / (math.exp(FLUX_MU) + (1 / u - 1))
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        guidance = 1 + 4 * torch.rand(batch, generator=gen)
        txt = t5_collapsed(t5, t_ids)
        pooled = clip(c_ids[:, :clip_len]).pooler_output
        pred = predict(transformer, xt, sigma, txt, pooled, guidance, pad_bias)
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t5.shared.weight.grad[0] = 0  # the padding embedding stays as _t5_padding set it
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():  # AdamW's weight decay would shorten it
            t5.shared.weight[0] *= PAD_NORM / t5.shared.weight[0].norm()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    for m in (transformer, clip, t5):
        m.eval()
    return losses


# ---- writing ------------------------------------------------------------------------------------

def save_all(out: Path, transformer, clip, t5, vae) -> dict:
    """The four files in the layouts users have; returns their sizes in MB."""
    import copy

    from safetensors.torch import save_file

    from genloom.diffusion.models import keymaps
    from genloom.diffusion.models.families.flux import save_original
    from genloom.diffusion.models.text_encoders import save_text_encoder

    paths = {k: out / v for k, v in FILES.items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    save_original(transformer, paths["transformer"])
    # Text encoders in half precision, as clip_l.safetensors and t5xxl_fp16 come; their configs are
    # what genloom reads from the shapes, so no config travels with them.
    save_text_encoder(copy.deepcopy(clip).half(), paths["clip_l"], with_config=False)
    save_text_encoder(copy.deepcopy(t5).half(), paths["t5xxl"], with_config=False)
    config = dict(vae.config)
    ae = keymaps.map_keys(vae.state_dict(), keymaps.vae_map(config), "", "vae")
    # GroupNorm's group count is not in any shape (2 here, 32 in Flux's ae): the config travels in
    # the metadata genloom's VAELoader reads.
    meta = {"genloom.configs": json.dumps({"vae": {k: v for k, v in config.items() if not k.startswith("_")}
                                           | {"_class_name": "AutoencoderKL"}})}
    save_file({k: v.contiguous() for k, v in ae.items()}, str(paths["vae"]), metadata=meta)
    return {k: round(p.stat().st_size / 1e6, 2) for k, p in paths.items()}


# ---- driver -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="models folder to write the four files into")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=8000, help="size of the drawn training pool")
    ap.add_argument("--steps-vae", type=int, default=1800)
    ap.add_argument("--steps-flow", type=int, default=2000)
    ap.add_argument("--batch-vae", type=int, default=16)
    ap.add_argument("--batch-flow", type=int, default=32)
    ap.add_argument("--lr-vae", type=float, default=5e-3)
    ap.add_argument("--lr-flow", type=float, default=1e-3)
    ap.add_argument("--crop", type=int, default=32, help="VAE training crop (pixels; 0: whole pictures)")
    ap.add_argument("--vae-channels", default="32,32,32",
                    help="AutoencoderKL block widths; each level after the first halves the resolution")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--double", type=int, default=2, help="double-stream blocks")
    ap.add_argument("--single", type=int, default=2, help="single-stream blocks")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few seconds' run that only proves the pipeline")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.steps_vae, args.steps_flow, args.batch_vae, args.batch_flow = 64, 2, 2, 4, 4

    import torch

    torch.set_num_threads(args.threads)
    times: dict[str, float] = {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    images, samples = scenes.dataset(args.images, args.seed, IMAGE_SIZE)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
    clip_ids, t5_ids = tokenize([s.caption for s in samples])
    empty_clip, empty_t5 = tokenize([""])
    times["data"] = time.perf_counter() - t0
    print(f"data: {times['data']:.1f} s", flush=True)

    clip, t5, vae, transformer = build_models(args.width, args.heads, args.double, args.single,
                                              tuple(int(c) for c in args.vae_channels.split(",")), args.seed)
    n_params = {n: sum(p.numel() for p in m.parameters()) for n, m in
                (("clip_l", clip), ("t5", t5), ("vae", vae), ("transformer", transformer))}
    print("parameters:", n_params, flush=True)

    t = time.perf_counter()
    vae_losses = train_vae(vae, pixels, args.steps_vae, args.batch_vae, args.seed + 1, args.lr_vae, args.crop)
    times["vae"] = time.perf_counter() - t

    t = time.perf_counter()
    fit_scale(vae, encode(vae, pixels[:2048])[0])
    means, stds = encode(vae, pixels)
    times["encode"] = time.perf_counter() - t
    fmt = (means - SHIFT) * SCALE
    latent_stats = {"mean": round(float(fmt.mean()), 3), "std": round(float(fmt.std()), 3)}
    with torch.no_grad():
        rec = vae.decode(means[:300]).sample
    pics = ((rec.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
    vae_judged = scenes.score(pics, samples[:300])
    print("latents in Flux's format:", latent_stats, "judge on VAE reconstructions:", vae_judged, flush=True)

    t = time.perf_counter()
    flow_losses = train_flow(transformer, clip, t5, (means, stds), clip_ids, t5_ids, (empty_clip[0], empty_t5[0]),
                             args.steps_flow, args.batch_flow, args.seed + 2, args.lr_flow)
    times["flow"] = time.perf_counter() - t

    t = time.perf_counter()
    gap = padding_gap(transformer, clip, t5, clip_ids[:8], t5_ids[:8], means[:8], args.seed + 3)
    text = text_gap(clip, t5, clip_ids[:64], t5_ids[:64])
    sizes = save_all(args.out, transformer, clip, t5, vae)
    times["save"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    times["cpu_total"] = time.process_time() - cpu0  # over wall seconds: how busy the machine was

    report = {
        "seed": args.seed, "threads": args.threads, "images": args.images,
        "steps": {"vae": args.steps_vae, "flow": args.steps_flow},
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "seconds_per_step": {"vae": round(times["vae"] / max(args.steps_vae, 1), 3),
                             "flow": round(times["flow"] / max(args.steps_flow, 1), 3)},
        "final_loss": {"vae": float(np.mean(vae_losses[-50:])), "flow": float(np.mean(flow_losses[-100:]))},
        "parameters": n_params, "latents_in_flux_format": latent_stats,
        "judge_on_vae_reconstructions": vae_judged, "padding_gap": gap, "text_gap": text,
        "megabytes": sizes, "megabytes_total": round(sum(sizes.values()), 2),
    }
    print(json.dumps(report, indent=2), flush=True)
    return report


if __name__ == "__main__":
    main()
