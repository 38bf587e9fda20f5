"""Two ControlNet layouts users download, read and run as ComfyUI does (issue 13):

- XLabs-AI's Flux ControlNets (flux-controlnet-*-v3): Black Forest Labs' block names, a pixel hint
  encoder (input_hint_block), controlnet_blocks after the double blocks, their outputs cycled over
  the model's double blocks. The file is written here from raw tensors in XLabs' names; the
  network's residuals are checked against the same network written out below from those tensors
  (hint convolutions, 2x2 packing, timestep embeddings, the double block's modulated attention
  with rotary embeddings), a whole run against diffusers' FluxControlNetPipeline (which cycles them
  too: controlnet_blocks_repeat), and a run through genloom.Engine with strength 0 / 1.
- Stability's SD3.5 ControlNets (sd3.5_large_controlnet_*.safetensors): no text input, the real
  pooled text, `control_type` in the file. Written in Stability's names from a diffusers
  SD3ControlNetModel (the test's own renames, the inverse of diffusers'
  convert_sd3_controlnet_to_diffusers.py). ComfyUI's computation, which diffusers' pipeline does not
  make, is written out here: the image tokens are the base model's patch projection plus ComfyUI's
  sin-cos table (its grid written below, the sin-cos from diffusers' get_2d_sincos_pos_embed_from_grid),
  and the residuals reach every joint block, the last included. The residuals are checked against
  diffusers' SD3ControlNetModel fed those tokens, whole runs against StableDiffusion3ControlNetPipeline
  made to compute ComfyUI's rule by hooks in the test (`_sd35_theirs`).

The base models are tiny (tests/tiny_flux.py, tests/tiny_split.py); the XLabs base has three double
blocks for the ControlNet's two, so cycling (0, 1, 0) differs from diffusers' InstantX spreading (0,
0, 1). The pipelines' conventions (pinned VAE log-variance, windows) are test_controlnet_flow.py's.
"""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402
from test_controlnet_flow import (H, HINT, PROMPT, SD3_CFG, SD3_HINT, SD3_SIZE, SEED, STEPS, W,  # noqa: E402,F401
                                  _close, _in_context, _ours, _sd3_ours, _theirs, flux_cn, sd3_cn)

WIDTH, HEADS, HEAD = tiny_flux.WIDTH, tiny_flux.HEADS, tiny_flux.WIDTH // tiny_flux.HEADS
XLABS_NAME, DEEP_NAME, CN_DOUBLE = "flux-canny-controlnet-v3-tiny.safetensors", "flux1-dev-deep-tiny.safetensors", 2


# -- XLabs: the file, from raw tensors -------------------------------------------------------------

def xlabs_state(seed: int = 31) -> dict:
    """A tiny XLabs-layout Flux ControlNet: every tensor random, named as XLabs' files are."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2):
        return torch.randn(shape, generator=gen) * scale

    sd = {}

    def linear(name, out, inp):
        sd[name + ".weight"], sd[name + ".bias"] = rnd(out, inp), rnd(out)

    linear("img_in", WIDTH, 64)
    linear("txt_in", WIDTH, tiny_flux.TEXT_DIM)
    for emb, width in (("time_in", 256), ("guidance_in", 256), ("vector_in", tiny_flux.POOLED_DIM)):
        linear(f"{emb}.in_layer", WIDTH, width)
        linear(f"{emb}.out_layer", WIDTH, WIDTH)
    for i in range(CN_DOUBLE):
        for side in ("img", "txt"):
            b = f"double_blocks.{i}.{side}_"
            linear(b + "mod.lin", 6 * WIDTH, WIDTH)
            linear(b + "attn.qkv", 3 * WIDTH, WIDTH)
            linear(b + "attn.proj", WIDTH, WIDTH)
            linear(b + "mlp.0", 4 * WIDTH, WIDTH)
            linear(b + "mlp.2", WIDTH, 4 * WIDTH)
            for norm in ("query_norm", "key_norm"):
                sd[b + f"attn.norm.{norm}.scale"] = 1.0 + rnd(HEAD, scale=0.1)
        linear(f"controlnet_blocks.{i}", WIDTH, WIDTH)
    for j in range(8):
        sd[f"input_hint_block.{2 * j}.weight"] = rnd(16, 3 if j == 0 else 16, 3, 3, scale=0.3)
        sd[f"input_hint_block.{2 * j}.bias"] = rnd(16, scale=0.1)
    linear("pos_embed_input", WIDTH, 64)
    return sd


# -- XLabs: the same network, written out -----------------------------------------------------------

def _linear(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _time_embedding(t):  # 256 wide, cos then sin, of 1000 t
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _mlp_embed(sd, name, x):
    return _linear(sd, name + ".out_layer", torch.nn.functional.silu(_linear(sd, name + ".in_layer", x)))


def _rope(ids, axes):
    """cos, sin [N, head/2] of Flux's rotary embedding (theta 10000) for position ids [N, 3]."""
    angles = [ids[:, i:i + 1].double() / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
              for i, d in enumerate(axes)]
    angles = torch.cat(angles, dim=-1)
    return angles.cos().float(), angles.sin().float()


def _rotate(x, cos, sin):  # x [B, heads, N, head]: pairs (2i, 2i + 1) turned by the angle
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _double_block(sd, i, img, txt, vec, cos, sin):
    F = torch.nn.functional
    mods, qkv = {}, {}
    for side, x in (("img", img), ("txt", txt)):
        b = f"double_blocks.{i}.{side}_"
        mods[side] = _linear(sd, b + "mod.lin", F.silu(vec))[:, None].chunk(6, dim=-1)
        shift, scale = mods[side][0], mods[side][1]
        h = (1 + scale) * F.layer_norm(x, (WIDTH,), eps=1e-6) + shift
        q, k, v = _linear(sd, b + "attn.qkv", h).unflatten(-1, (3, HEADS, HEAD)).permute(2, 0, 3, 1, 4)

        def rms(t, name):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * sd[b + f"attn.norm.{name}.scale"]

        qkv[side] = (rms(q, "query_norm"), rms(k, "key_norm"), v)
    q, k, v = (torch.cat([qkv["txt"][j], qkv["img"][j]], dim=2) for j in range(3))
    out = F.scaled_dot_product_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v)
    out = out.transpose(1, 2).flatten(2)
    n_txt = txt.shape[1]
    result = {}
    for side, x, part in (("img", img, out[:, n_txt:]), ("txt", txt, out[:, :n_txt])):
        b = f"double_blocks.{i}.{side}_"
        shift1, scale1, gate1, shift2, scale2, gate2 = mods[side]
        x = x + gate1 * _linear(sd, b + "attn.proj", part)
        h = (1 + scale2) * F.layer_norm(x, (WIDTH,), eps=1e-6) + shift2
        h = _linear(sd, b + "mlp.2", F.gelu(_linear(sd, b + "mlp.0", h), approximate="tanh"))
        result[side] = x + gate2 * h
    return result["img"], result["txt"]


def _pack(x):  # [B, C, H, W] -> [B, (H/2)(W/2), C*4], channels then the 2x2 patch
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(hp: int, wp: int):
    """Flux's position ids of an hp x wp token grid: (0, row, column), row-major."""
    return torch.stack([torch.zeros(hp * wp), torch.arange(hp).repeat_interleave(wp), torch.arange(wp).repeat(hp)], 1)


def xlabs_reference(sd, latent, hint01, txt, pooled, sigma, guidance, axes):
    """The XLabs ControlNet's double-block outputs for a latent [B, 16, h, w] and a pixel hint 0..1."""
    F = torch.nn.functional
    h = hint01 * 2.0 - 1.0
    for j in range(8):
        h = F.conv2d(h, sd[f"input_hint_block.{2 * j}.weight"], sd[f"input_hint_block.{2 * j}.bias"],
                     stride=2 if j in (2, 4, 6) else 1, padding=1)
        h = F.silu(h) if j < 7 else h
    img = _linear(sd, "img_in", _pack(latent)) + _linear(sd, "pos_embed_input", _pack(h))
    vec = (_mlp_embed(sd, "time_in", _time_embedding(sigma)) + _mlp_embed(sd, "guidance_in", _time_embedding(guidance))
           + _mlp_embed(sd, "vector_in", pooled))
    txt = _linear(sd, "txt_in", txt)
    img_ids = image_ids(latent.shape[2] // 2, latent.shape[3] // 2)
    cos, sin = _rope(torch.cat([torch.zeros(txt.shape[1], 3), img_ids]), axes)
    outs = []
    for i in range(CN_DOUBLE):
        img, txt = _double_block(sd, i, img, txt, vec, cos, sin)
        outs.append(_linear(sd, f"controlnet_blocks.{i}", img))
    return outs


# -- XLabs: fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xlabs(flux_cn):
    """The Flux ControlNet models of test_controlnet_flow, a three-double-block dev model beside
    them and the XLabs file in controlnet/."""
    from safetensors.torch import save_file

    from genloom.diffusion.models.families.flux import save_original

    deep = tiny_flux.transformer(True, seed=21, depth=3, single=1)
    save_original(deep, flux_cn["root"] / "diffusion_models" / DEEP_NAME)
    sd = xlabs_state()
    save_file(sd, str(flux_cn["root"] / "controlnet" / XLABS_NAME))
    return {**flux_cn, "dev": deep, "names": {**flux_cn["names"], "dev": DEEP_NAME}, "xlabs": sd}


@pytest.fixture
def xctx(xlabs, tmp_path):
    yield from _in_context(xlabs, tmp_path)


def test_xlabs_file_loads_as_a_flux_controlnet_with_the_files_weights(xctx):
    from genloom.nodes.controlnet import ControlNetApply, ControlNetLoader

    (control,) = ControlNetLoader().run(XLABS_NAME)
    assert (control.kind, control.family, control.takes_latents) == ("flux_controlnet", "flux", False)
    sd, got = xctx["xlabs"], control.module.state_dict()
    assert sum(v.numel() for v in got.values()) == sum(v.numel() for v in sd.values())
    renames = {"input_hint_block.conv_in": "input_hint_block.0", "input_hint_block.conv_out": "input_hint_block.14",
               "input_hint_block.blocks.3": "input_hint_block.8", "controlnet_x_embedder": "pos_embed_input",
               "controlnet_blocks.1": "controlnet_blocks.1", "x_embedder": "img_in", "context_embedder": "txt_in",
               "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
               "transformer_blocks.1.norm1_context.linear": "double_blocks.1.txt_mod.lin",
               "transformer_blocks.0.ff.net.2": "double_blocks.0.img_mlp.2"}
    for ours, theirs in renames.items():
        assert torch.equal(got[ours + ".weight"], sd[theirs + ".weight"]), ours
    q, k, v = sd["double_blocks.1.img_attn.qkv.weight"].chunk(3)
    assert torch.equal(got["transformer_blocks.1.attn.to_k.weight"], k)
    assert torch.equal(got["transformer_blocks.1.attn.norm_added_q.weight"],
                       sd["double_blocks.1.txt_attn.norm.query_norm.scale"])
    (cond,) = ControlNetApply().run([[torch.zeros(1, 4, 32), {}]], control, torch.zeros(1, H, W, 3), 0.5)  # no VAE
    assert cond[0][1]["control"].model is control


def test_xlabs_residuals_equal_the_network_written_out_and_cycle_over_the_double_blocks(xctx):
    from genloom.diffusion.controlnet import Control
    from genloom.diffusion.models.families.flux import rope_axes
    from genloom.diffusion.models.flux_model import FluxHandle
    from genloom.nodes.controlnet import ControlNetLoader

    (control,) = ControlNetLoader().run(XLABS_NAME)
    gen = torch.Generator().manual_seed(3)
    latent = torch.randn(2, 16, H // 8, W // 8, generator=gen)
    txt = torch.randn(2, 5, tiny_flux.TEXT_DIM, generator=gen)
    pooled = torch.randn(2, tiny_flux.POOLED_DIM, generator=gen)
    hint = torch.from_numpy(HINT).float()[None].movedim(-1, 1) / 255.0
    sigma, guidance, strength = torch.full((2,), 0.6), torch.full((2,), 4.0), 0.7
    handle = FluxHandle.of(xctx["dev"])
    img_ids = image_ids(H // 16, W // 16)
    call = dict(hidden_states=_pack(latent), encoder_hidden_states=txt, pooled_projections=pooled, timestep=sigma,
                img_ids=img_ids, txt_ids=torch.zeros(5, 3), guidance=guidance)
    with torch.no_grad():
        got = Control(control, hint, strength).flux_inputs(handle, latent, call, sigma=0.6)
        want = xlabs_reference(xctx["xlabs"], latent, hint.repeat(2, 1, 1, 1), txt, pooled, sigma, guidance,
                               rope_axes(HEAD))
    assert set(got) == {"controlnet_block_samples"}  # no single blocks in the file
    blocks = got["controlnet_block_samples"]
    assert len(blocks) == 3
    for j, sample in enumerate(blocks):  # the model's blocks 0, 1, 2 take the ControlNet's 0, 1, 0
        assert float((sample - strength * want[j % CN_DOUBLE]).abs().max()) < 1e-4, j
    assert float((want[0] - want[1]).abs().max()) > 1e-2


def test_xlabs_run_equals_the_flux_controlnet_pipeline(xctx):
    from genloom.nodes.controlnet import ControlNetLoader

    (control,) = ControlNetLoader().run(XLABS_NAME)
    ours = _ours(xctx, XLABS_NAME, 0.9, 0.0, 1.0)  # ControlNetApplyAdvanced; its VAE unused by XLabs' kind
    theirs = _theirs(xctx, 0.9, 0.0, 1.0, controlnet=control.module)
    _close(ours, theirs)
    assert float((ours - _theirs(xctx, 0, 0, 1)).abs().max()) > 1e-3


def _xlabs_graph(strength: float | None, names: dict) -> dict:
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": names["dev"], "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": names["t5xxl"], "clip_name2": names["clip_l"],
                                                         "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": W, "height": H, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": SEED, "steps": 3, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["5", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "xlabs"}},
    }
    if strength is not None:
        graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        graph["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": XLABS_NAME}}
        graph["12"] = {"class_type": "ControlNetApplyAdvanced",
                       "inputs": {"positive": ["5", 0], "negative": ["5", 0], "control_net": ["11", 0],
                                  "image": ["10", 0], "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        graph["7"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    return {"schema_version": 1, "graph": graph}


def test_xlabs_through_the_engine_strength_zero_is_no_controlnet(xlabs, tmp_path):
    from PIL import Image

    import genloom

    (tmp_path / "in").mkdir()
    Image.fromarray(HINT).save(tmp_path / "in" / "hint.png")
    engine = genloom.Engine(models_dirs=[xlabs["root"]], input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                            temp_dir=tmp_path / "temp", device="cpu")

    def picture(strength):
        envelope = _xlabs_graph(strength, xlabs["names"])
        assert engine.validate(envelope).node_errors == {}
        entry = engine.run(envelope).outputs["9"]["images"][0]
        return np.asarray(Image.open(tmp_path / "out" / entry["subfolder"] / entry["filename"])).astype(int)

    plain = picture(None)
    assert np.array_equal(picture(0.0), plain)
    assert np.abs(picture(1.0) - plain).max() > 8


# -- SD3.5: the file, in Stability's names ---------------------------------------------------------

SD35_BLUR, SD35_CANNY, SD35_DEPTH, SD35_FOLDER = ("sd3.5_large_controlnet_blur-tiny.safetensors",
                                                  "sd3.5_large_controlnet_canny-tiny.safetensors",
                                                  "sd3.5_large_controlnet_depth-tiny.safetensors",
                                                  "sd35-blur-diffusers/diffusion_pytorch_model.safetensors")


def _sd35_net(seed: int = 14):
    """A tiny SD3.5-style SD3ControlNetModel (diffusers' converted form): 64-wide heads, no text, no
    position embedding, the real pooled text, every weight random."""
    from diffusers import SD3ControlNetModel

    import tiny_split

    torch.manual_seed(seed)
    net = SD3ControlNetModel(patch_size=2, in_channels=16, num_layers=1, attention_head_dim=64, num_attention_heads=1,
                             joint_attention_dim=None, caption_projection_dim=64,
                             pooled_projection_dim=tiny_split.CLIP_L + tiny_split.CLIP_G, out_channels=16,
                             pos_embed_max_size=None, pos_embed_type=None, use_pos_embed=False,
                             force_zeros_for_pooled_projection=False).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


def stability_layout(net, control_type: int) -> dict:
    """The diffusers module's weights in Stability's names (q, k, v joined as attn.qkv)."""
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    out = {k: v for k, v in sd.items() if k.startswith(("time_text_embed.", "pos_embed_input.", "controlnet_blocks."))}
    for i in range(len(net.transformer_blocks)):
        b = f"transformer_blocks.{i}."
        for suffix in ("weight", "bias"):
            out[b + f"attn.qkv.{suffix}"] = torch.cat([sd[b + f"attn.to_{n}.{suffix}"] for n in "qkv"])
            for theirs, ours in (("attn.proj", "attn.to_out.0"), ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2"),
                                 ("adaLN_modulation.1", "norm1.linear")):
                out[b + f"{theirs}.{suffix}"] = sd[b + f"{ours}.{suffix}"]
    assert len(out) == len(sd) - 4  # every tensor placed: six q, k, v ones in two
    out["control_type"] = torch.tensor(float(control_type))
    return out


@pytest.fixture(scope="module")
def sd35(sd3_cn):
    from safetensors.torch import save_file

    net = _sd35_net()
    folder = sd3_cn["root"] / "controlnet"
    save_file(stability_layout(net, 0), str(folder / SD35_BLUR))
    save_file(stability_layout(net, 1), str(folder / SD35_CANNY))
    depth = stability_layout(net, 2)  # with a patch embedding of its own, which ComfyUI never uses
    depth["x_embedder.proj.weight"], depth["x_embedder.proj.bias"] = torch.ones(64, 16, 2, 2), torch.ones(64)
    save_file(depth, str(folder / SD35_DEPTH))
    net.save_pretrained(str(folder / SD35_FOLDER.split("/")[0]), safe_serialization=True)
    return {**sd3_cn, "sd35": net}


@pytest.fixture
def sd35_ctx(sd35, tmp_path):
    yield from _in_context(sd35, tmp_path)


def test_sd35_files_load_to_the_same_weights_in_both_layouts(sd35_ctx):
    from genloom.nodes.controlnet import ControlNetLoader

    want = sd35_ctx["sd35"].state_dict()
    folder = sd35_ctx["root"] / "controlnet" / SD35_FOLDER.split("/")[0]
    assert json.loads((folder / "config.json").read_text())["use_pos_embed"] is False
    for name, kind in ((SD35_BLUR, "blur"), (SD35_CANNY, "canny"), (SD35_DEPTH, "depth"), (SD35_FOLDER, "blur")):
        (control,) = ControlNetLoader().run(name)
        assert (control.kind, control.family, control.takes_latents) == ("sd3_controlnet", "sd3", True)
        got = control.module.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name
        assert control.module.hint_kind == kind
        assert control.module.pos_embed is None and control.module.context_embedder is None


def comfy_table(width: int, h: int, w: int):
    """ComfyUI's SD3.5 ControlNet position table (get_2d_sincos_pos_embed_torch in its mmdit.py):
    an h x w grid spread over 15 units on the shorter side around 7.5, the column position's sin-cos
    in the first half of the width, the row's in the second; the sin-cos from diffusers' function,
    which encodes grid[0] first."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

    small = min(h, w)
    rows = 7.5 + 7.5 * h / small * torch.linspace(-1, 1, h)
    cols = 7.5 + 7.5 * w / small * torch.linspace(-1, 1, w)
    grid = torch.stack([cols.repeat(h), rows.repeat_interleave(w)])
    return get_2d_sincos_pos_embed_from_grid(width, grid).float()


def comfy_tokens(transformer, x):
    """The ControlNet's image tokens in ComfyUI: the base model's x_embedder (the patch convolution)
    plus comfy_table."""
    tokens = torch.nn.functional.conv2d(x, transformer.pos_embed.proj.weight, transformer.pos_embed.proj.bias,
                                        stride=2).flatten(2).transpose(1, 2)
    return tokens + comfy_table(tokens.shape[-1], x.shape[2] // 2, x.shape[3] // 2)


def _sd35_theirs(parts, scale, start, end, control_image, controlnet):
    """StableDiffusion3ControlNetPipeline with the SD3.5 ControlNet (a copy) made to compute
    ComfyUI's rule by hooks: the ControlNet takes comfy_tokens of the latent instead of the
    transformer's pos_embed the pipeline lends it, and the last joint block's output gets the
    residual of ControlNet output (depth - 1) // ceil(depth / outputs), which diffusers leaves out."""
    import copy

    import diffusers

    import tiny_split

    pipe = tiny_split.sd3_pipeline(parts)
    pipe = diffusers.StableDiffusion3ControlNetPipeline(**pipe.components, controlnet=copy.deepcopy(controlnet))
    pipe.set_progress_bar_config(disable=True)
    base, seen = pipe.transformer, {}
    pipe.controlnet.pos_embed = None

    def tokens(_module, args, kwargs):
        return args, {**kwargs, "hidden_states": comfy_tokens(base, kwargs["hidden_states"])}

    def residuals(_module, _args, kwargs):
        seen["res"] = kwargs["block_controlnet_hidden_states"]

    def last(_module, _args, out):
        depth, res = len(base.transformer_blocks), seen["res"]
        return out[0], out[1] + res[(depth - 1) // math.ceil(depth / len(res))]

    hooks = [pipe.controlnet.register_forward_pre_hook(tokens, with_kwargs=True),
             base.register_forward_pre_hook(residuals, with_kwargs=True),
             base.transformer_blocks[-1].register_forward_hook(last)]
    noise = torch.randn((1, 16, SD3_SIZE // 8, SD3_SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    try:
        with torch.no_grad():
            out = pipe(PROMPT, PROMPT, PROMPT, negative_prompt="blurry", negative_prompt_2="blurry",
                       negative_prompt_3="blurry", height=SD3_SIZE, width=SD3_SIZE, num_inference_steps=STEPS,
                       guidance_scale=SD3_CFG, latents=noise, max_sequence_length=77, output_type="pt",
                       control_image=control_image, controlnet_conditioning_scale=scale,
                       control_guidance_start=start, control_guidance_end=end).images
    finally:
        for hook in hooks:  # the transformer is the module's shared one
            hook.remove()
    return out.permute(0, 2, 3, 1)


def test_sd35_position_table_is_comfyuis():
    """On a 3 x 5 grid (rows and columns told apart); diffusers' own base-size table, which its
    pipelines use, is another one (positions 0, 4, 8, 12 on a 4-wide side where ComfyUI has 0, 5, 10, 15)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    from genloom.diffusion.models.control_sd35 import sincos_table

    ours = sincos_table(64, 3, 5)
    assert ours.shape == (15, 64)
    torch.testing.assert_close(ours, comfy_table(64, 3, 5), atol=1e-5, rtol=0)
    assert float((sincos_table(64, 4, 4) - get_2d_sincos_pos_embed(64, (4, 4), base_size=16).float()).abs().max()) > 0.1


def test_sd35_residuals_are_comfyuis_and_reach_the_last_block(sd35_ctx):
    """The residuals equal diffusers' SD3ControlNetModel fed comfy_tokens (its 3-D input), with the hint
    latent genloom gave it, times the strength, and reach both joint blocks of the base model (one
    output, ceil(2 / 1) = 2 blocks a piece), the last one included."""
    from genloom.diffusion.controlnet import Control
    from genloom.nodes.controlnet import ControlNetLoader
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import UNETLoader

    (model,) = UNETLoader().run("tiny-sd3.safetensors", "default")
    (vae,) = VAELoader().run("tiny-sd3-vae.safetensors")
    (control,) = ControlNetLoader().run(SD35_BLUR)
    hint = torch.from_numpy(SD3_HINT).float().movedim(-1, 0)[None] / 255.0
    gen = torch.Generator().manual_seed(3)
    x, pooled = torch.randn(2, 16, 8, 8, generator=gen), torch.randn(2, control.module.config.pooled_projection_dim,
                                                                     generator=gen)
    t, seen = torch.full((2,), 600.0), {}
    hook = control.module.register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            got = Control(control, hint, 0.9, vae=vae).sd3_inputs(model, x, t, torch.randn(2, 4, 64), pooled,
                                                                  sigma=0.6)["block_controlnet_hidden_states"]
    finally:
        hook.remove()
    with torch.no_grad():
        (want,) = sd35_ctx["sd35"](hidden_states=comfy_tokens(sd35_ctx["parts"]["transformer"], x),
                                   controlnet_cond=seen["controlnet_cond"], timestep=t, pooled_projections=pooled,
                                   conditioning_scale=0.9, return_dict=False)
    assert len(got) == len(model.unet.transformer_blocks) == 2 and len(want) == 1
    for residual in got:
        torch.testing.assert_close(residual, want[0], atol=1e-5, rtol=1e-5)
    assert float(want[0].abs().max()) > 1e-2


def test_sd35_blur_controlnet_equals_the_pipeline(sd35_ctx):
    from PIL import Image

    ours = _sd3_ours(SD35_BLUR, 0.8, 0.0, 1.0)  # ControlNetApplySD3
    _close(ours, _sd35_theirs(sd35_ctx["parts"], 0.8, 0.0, 1.0, Image.fromarray(SD3_HINT), sd35_ctx["sd35"]))
    plain = _sd35_theirs(sd35_ctx["parts"], 0.0, 0.0, 1.0, Image.fromarray(SD3_HINT), sd35_ctx["sd35"])
    assert float((ours - plain).abs().max()) > 1e-3


@pytest.mark.parametrize("name, prepared", [(SD35_CANNY, lambda a: a * 255 * 0.5 + 0.5), (SD35_DEPTH, lambda a: 1 - a)],
                         ids=["canny", "depth"])
def test_sd35_controlnet_takes_comfyuis_hint_for_its_control_type_with_a_window(sd35_ctx, name, prepared):
    """control_type 1 (canny): ComfyUI gives the VAE a * 255 * 0.5 + 0.5 of the 0..1 hint, 2 (depth)
    1 - a; the pipeline takes a tensor hint as it is, so it is handed that image mapped to -1..1 as
    ComfyUI's VAE encode maps it (2 x - 1, unclipped)."""
    hint = torch.from_numpy(SD3_HINT).float().movedim(-1, 0)[None] / 255.0
    ours = _sd3_ours(name, 1.1, 0.2, 0.7)  # the window of test_controlnet_flow's SD3 test: steps 1, 2
    _close(ours, _sd35_theirs(sd35_ctx["parts"], 1.1, 0.2, 0.8, prepared(hint) * 2 - 1, sd35_ctx["sd35"]))
    blur = _sd3_ours(SD35_BLUR, 1.1, 0.2, 0.7)
    assert float((ours - blur).abs().max()) > 1e-3  # the control type mattered


def test_instantx_outputs_spread_as_comfyui_when_the_depth_is_not_a_multiple(sd35_ctx):
    """InstantX's SD3 ControlNets in ComfyUI: depth // outputs copies of each output, one less of the
    last; a 2-block ControlNet on a 3-block model gives one copy of output 0 for block 0 and nothing
    else (diffusers' pipeline, interval 1.5, would give block 1 output 0 as well)."""
    from diffusers import SD3ControlNetModel, SD3Transformer2DModel

    import tiny_split
    from genloom.diffusion.controlnet import Control, ControlModel
    from genloom.diffusion.models.families.sd3 import SD3Handle
    from genloom.diffusion.sampling import latent_formats, model_sampling
    from genloom.nodes.loaders import VAELoader

    torch.manual_seed(4)
    pooled_dim = tiny_split.CLIP_L + tiny_split.CLIP_G
    base = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=32,
                                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=64,
                                 pooled_projection_dim=pooled_dim, out_channels=16, pos_embed_max_size=8)
    net = SD3ControlNetModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=32,
                             num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=64,
                             pooled_projection_dim=pooled_dim, out_channels=16, pos_embed_max_size=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    handle = SD3Handle(unet=base, latent_channels=16, vae_scale_factor=8, name="three", prediction_type="flow",
                       sampling=model_sampling.flow(shift=3.0), latent_format=latent_formats.SD3)
    (vae,) = VAELoader().run("tiny-sd3-vae.safetensors")
    x, emb, pooled = torch.randn(1, 16, 8, 8), torch.randn(1, 4, 32), torch.randn(1, pooled_dim)
    t, seen = torch.full((1,), 500.0), {}
    hook = net.register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    try:
        with torch.no_grad():
            got = Control(ControlModel(net, "sd3_controlnet", "sd3", "instantx"), torch.rand(1, 3, 64, 64),
                          vae=vae).sd3_inputs(handle, x, t, emb, pooled, sigma=0.5)["block_controlnet_hidden_states"]
    finally:
        hook.remove()
    with torch.no_grad():
        (want,) = net(hidden_states=x, controlnet_cond=seen["controlnet_cond"], encoder_hidden_states=emb, timestep=t,
                      pooled_projections=torch.zeros_like(pooled), return_dict=False)
    assert len(got) == 3 and float(want[0].abs().max()) > 1e-3
    torch.testing.assert_close(got[0], want[0])
    assert not got[1].any() and not got[2].any()


def test_sd35_controlnet_refuses_a_model_of_another_width(sd35_ctx):
    from diffusers import SD3Transformer2DModel

    from genloom.diffusion.controlnet import Control
    from genloom.diffusion.errors import SamplingError
    from genloom.diffusion.models.families.sd3 import SD3Handle
    from genloom.nodes.controlnet import ControlNetLoader

    (control,) = ControlNetLoader().run(SD35_BLUR)
    narrow = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                                   pooled_projection_dim=192, out_channels=16, pos_embed_max_size=8)
    handle = SD3Handle(unet=narrow, latent_channels=16, vae_scale_factor=8, name="narrow", prediction_type="flow")
    with pytest.raises(SamplingError, match="64 wide, the model 32"):
        Control(control, torch.zeros(1, 3, 64, 64)).sd3_inputs(handle, torch.zeros(1, 16, 8, 8), torch.ones(1),
                                                               torch.zeros(1, 4, 32), torch.zeros(1, 192), sigma=0.5)


def test_layouts_genloom_cannot_read_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models.control_files import load_control

    odd = xlabs_state()
    odd["input_hint_block.2.weight"] = torch.zeros(8, 16, 3, 3)  # not XLabs' 16-channel stack
    sd35 = stability_layout(_sd35_net(), 2)
    sd35["transformer_blocks.0.attn.ln_q.weight"] = torch.ones(64)  # a part SD3.5's blocks do not have
    misto = {k.replace("controlnet_blocks.0.", "controlnet_blocks.0.linear."): v for k, v in xlabs_state().items()}
    wide = stability_layout(_sd35_net(), 0)
    wide["time_text_embed.text_embedder.linear_1.weight"] = torch.zeros(64, 64)  # ComfyUI's double_y_emb kind
    named = {"input_hint_block.conv_in.weight": torch.zeros(16, 3, 3, 3), "x_embedder.weight": torch.zeros(8, 64),
             "controlnet_x_embedder.weight": torch.zeros(8, 64)}  # diffusers' names, no config.json
    for name, state, message in (("odd-xlabs.safetensors", odd, "eight 3x3 convolutions of 16 channels"),
                                 ("odd-sd35.safetensors", sd35, r"no known name, e\.g\. \['transformer_blocks"),
                                 ("misto.safetensors", misto, "MistoLine"),
                                 ("wide-sd35.safetensors", wide, "pooled-text embedder is 64 wide"),
                                 ("named.safetensors", named, "put its config.json beside it")):
        save_file(state, str(tmp_path / name))
        with pytest.raises(CheckpointError, match=message) as err:
            load_control(tmp_path / name)
        assert name in str(err.value)
