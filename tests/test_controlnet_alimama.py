"""AliMama's inpainting ControlNets (SD3-Controlnet-Inpainting, FLUX.1-dev-Controlnet-Inpainting) through
ControlNetInpaintingAliMamaApply, on tiny random weights.

ComfyUI's rule, which genloom follows: the mask is inverted (1 = keep), the image is multiplied by it
(bilinear to the image's size, rounded), and the hint is the VAE latent of that image in the model's
latent format (SD3's without its shift) with the inverted mask, nearest-exact at the latent's size, as
one more channel. diffusers' StableDiffusion3ControlNetInpaintingPipeline builds the same hint except
that it subtracts the VAE's shift before scaling (and picks the mask pixels with 'nearest', which on
8-aligned masks agrees): `test_sd3_hint_is_comfyuis_rule_and_differs_from_the_pipeline_by_the_shift`
shows it in numbers, and the whole-run test feeds the pipeline ComfyUI's hint (its own plus shift x
scale on the latent channels) to compare the networks and the sampling.

Flux: diffusers has no inpainting pipeline; FluxControlNetPipeline takes the blacked-out image and a
forward pre-hook on the ControlNet's hint embedder appends the packed inverted mask to each token (4
values: the 2x2 patch), which is ComfyUI's 17-channel hint patchified. The VAEs' log-variances are
pinned at diffusers' floor so the pipelines' sampled latents equal ComfyUI's means
(tests/test_controlnet_flow.py has the conventions).
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_flux  # noqa: E402
import tiny_split  # noqa: E402
from test_controlnet_flow import _controlnet, _in_context  # noqa: E402

PROMPT, SEED, STEPS = "a red cat on the grass", 7, 4
SIZE, CFG = 64, 4.0
PIXELS = np.random.default_rng(8).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
REPAINT = np.zeros((SIZE, SIZE), dtype=np.float32)
REPAINT[16:48, 24:56] = 1.0  # the area to repaint, on 8-pixel boundaries
SD3_FOLDER, SD3_FILE, SD3_PLAIN = "sd3-inpaint/diffusion_pytorch_model.safetensors", "sd3-inpaint.safetensors", \
    "sd3-canny.safetensors"


def _pin(vae):
    with torch.no_grad():  # a (near) deterministic encoder: the log-variance at diffusers' floor
        vae.encoder.conv_out.weight[16:] = 0
        vae.encoder.conv_out.bias[16:] = -30.0


def _random(net, scale: float):
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return net.eval()


def _sd3_net(extra: int, seed: int):
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    return _random(SD3ControlNetModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=tiny_split.T5_WIDTH, caption_projection_dim=64, out_channels=16,
        pooled_projection_dim=tiny_split.CLIP_L + tiny_split.CLIP_G, pos_embed_max_size=16, qk_norm="rms_norm",
        extra_conditioning_channels=extra), 0.1)


def _save(net, path):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


@pytest.fixture(scope="module")
def sd3_inpaint(tmp_path_factory):
    root = tmp_path_factory.mktemp("alimama_sd3")
    parts = tiny_split.build_sd3_parts()
    _pin(parts["vae"])
    tiny_split.write_sd3_files(root, parts)
    net = _sd3_net(1, 21)
    net.save_pretrained(str(root / "controlnet" / SD3_FOLDER.split("/")[0]), safe_serialization=True)
    _save(net, root / "controlnet" / SD3_FILE)
    _save(_sd3_net(0, 22), root / "controlnet" / SD3_PLAIN)
    return {"root": root, "parts": parts, "controlnet": net}


@pytest.fixture
def sd3_ctx(sd3_inpaint, tmp_path):
    yield from _in_context(sd3_inpaint, tmp_path)


def _image():
    return torch.from_numpy(PIXELS).float()[None] / 255.0


def _sd3_apply(name, mask, node=None, strength=1.0):
    """(the Control on the positive conditioning, the MODEL) after the apply node."""
    from genloom.nodes.controlnet import ControlNetInpaintingAliMamaApply, ControlNetLoader
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import UNETLoader

    (model,) = UNETLoader().run("tiny-sd3.safetensors", "default")
    (vae,) = VAELoader().run("tiny-sd3-vae.safetensors")
    (control,) = ControlNetLoader().run(name)
    cond = [[torch.zeros(1, 4, 8), {}]]
    if node is None:
        pos, _ = ControlNetInpaintingAliMamaApply().run(cond, cond, control, vae, _image(), mask, strength, 0.0, 1.0)
    else:
        pos, _ = node().run(cond, cond, control, _image(), strength, 0.0, 1.0, vae)
    return pos[0][1]["control"], model


def _latent_hint(control, model):
    return control._latent_hint(model, torch.zeros(1, 16, SIZE // 8, SIZE // 8), shifted=False)


def _loaded(names, kind: str, family: str, net) -> list:
    """The modules ControlNetLoader reads from `names`: inpainting ControlNets of `kind` and `family`
    holding `net`'s weights."""
    from genloom.nodes.controlnet import ControlNetLoader

    want, modules = net.state_dict(), []
    for name in names:
        (control,) = ControlNetLoader().run(name)
        assert (control.kind, control.family, control.concat_mask) == (kind, family, True)
        got = control.module.state_dict()
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
        modules.append(control.module)
    return modules


def test_sd3_inpainting_controlnet_loads_from_both_layouts(sd3_ctx):
    from genloom.nodes.controlnet import ControlNetLoader

    for module in _loaded((SD3_FOLDER, SD3_FILE), "sd3_controlnet", "sd3", sd3_ctx["controlnet"]):
        assert module.config.extra_conditioning_channels == 1
    assert not ControlNetLoader().run(SD3_PLAIN)[0].concat_mask


def _bilinear(a, height: int, width: int):
    """torch's bilinear resize (half-pixel centres, edges clamped), written out in numpy."""
    def axis(n_in, n_out):
        pos = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), pos - lo

    (r0, r1, tr), (c0, c1, tc) = axis(a.shape[0], height), axis(a.shape[1], width)
    rows = a[r0] * (1 - tr)[:, None] + a[r1] * tr[:, None]
    return rows[:, c0] * (1 - tc) + rows[:, c1] * tc


def test_alimama_apply_blacks_out_the_area_and_adds_the_inverted_mask_channel(sd3_ctx):
    small = np.zeros((SIZE // 2, SIZE // 2), dtype=np.float32)
    small[5:19, 9:27] = 1.0  # half-size, off the 8-pixel grid: the image mask is bilinear and rounded
    control, model = _sd3_apply(SD3_FILE, torch.from_numpy(small)[None])
    keep = np.round(_bilinear(1.0 - small, SIZE, SIZE))
    assert 0 < keep.mean() < 1
    want = PIXELS.astype(np.float32) / 255.0 * keep[..., None]
    assert np.allclose(control.hint[0].permute(1, 2, 0).numpy(), want, atol=1e-6)
    assert torch.equal(control.mask, 1.0 - torch.from_numpy(small)[None, None])
    hint = _latent_hint(control, model)
    assert hint.shape == (1, 17, SIZE // 8, SIZE // 8)
    # nearest-exact from 32 to 8: source pixel 4i + 2; the mask channel is the inverted mask there
    assert np.array_equal(hint[0, 16].numpy(), 1.0 - small[2::4, 2::4])


def test_other_apply_nodes_and_controlnets(sd3_ctx):
    from genloom.nodes.controlnet import ControlNetApplyAdvanced

    mask = torch.from_numpy(REPAINT)[None]
    control, model = _sd3_apply(SD3_FILE, mask, node=ControlNetApplyAdvanced)
    hint = _latent_hint(control, model)
    assert torch.equal(hint[:, 16], torch.ones(1, SIZE // 8, SIZE // 8))  # no mask: keep everything
    plain, _ = _sd3_apply(SD3_PLAIN, mask)  # an ordinary ControlNet: the image as given, no mask
    assert plain.mask is None and torch.equal(plain.hint, _image().movedim(-1, 1))
    assert _latent_hint(plain, model).shape[1] == 16


def _sd3_pipeline(parts, net):
    import diffusers

    pipe = diffusers.StableDiffusion3ControlNetInpaintingPipeline(**tiny_split.sd3_pipeline(parts).components,
                                                                  controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_inputs(mask):
    return torch.from_numpy(PIXELS).permute(2, 0, 1)[None].float() / 127.5 - 1, torch.from_numpy(mask)[None, None]


def test_sd3_hint_is_comfyuis_rule_and_differs_from_the_pipeline_by_the_shift(sd3_ctx):
    control, model = _sd3_apply(SD3_FOLDER, torch.from_numpy(REPAINT)[None])
    ours = _latent_hint(control, model)
    pipe = _sd3_pipeline(sd3_ctx["parts"], sd3_ctx["controlnet"])
    image, mask = _pipeline_inputs(REPAINT)
    with torch.no_grad():
        theirs = pipe.prepare_image_with_mask(image=image, mask=mask, width=SIZE, height=SIZE, batch_size=1,
                                              num_images_per_prompt=1, device="cpu", dtype=torch.float32)
    vae = sd3_ctx["parts"]["vae"].config
    shift = vae.shift_factor * vae.scaling_factor
    assert shift > 0.05
    assert float((ours[:, :16] - theirs[:, :16] - shift).abs().max()) < 1e-4
    assert torch.equal(ours[:, 16], theirs[:, 16])


def _graph(strength):
    text = lambda words: {"class_type": "CLIPTextEncodeSD3", "inputs": {  # noqa: E731
        "clip": ["2", 0], "clip_l": words, "clip_g": words, "t5xxl": words, "empty_padding": "none"}}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-sd3.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "TripleCLIPLoader", "inputs": {"clip_name1": "tiny-sd3-t5xxl.safetensors",
                                                           "clip_name2": "tiny-sd3-clip_g.safetensors",
                                                           "clip_name3": "tiny-sd3-clip_l.safetensors"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-sd3-vae.safetensors"}},
        "4": text(PROMPT), "5": text("blurry"),
        "6": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": SD3_FOLDER}},
        "7": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "8": {"class_type": "ControlNetInpaintingAliMamaApply", "inputs": {
            "positive": ["4", 0], "negative": ["5", 0], "control_net": ["6", 0], "vae": ["3", 0],
            "image": ["7", 0], "mask": ["7", 1], "strength": strength, "start_percent": 0.0, "end_percent": 1.0}},
        "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["8", 0], "negative": ["8", 1], "latent_image": ["9", 0],
            "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["3", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "alimama"}},
    }


def test_sd3_inpainting_run_through_the_engine_equals_the_pipeline_with_comfyuis_hint(sd3_inpaint, tmp_path):
    """loader -> ControlNetInpaintingAliMamaApply -> KSampler as an API graph; the picture's alpha is
    the mask (LoadImage: 1 - alpha). The pipeline gets ComfyUI's hint (see the module docstring)."""
    from PIL import Image

    import genloom

    (tmp_path / "input").mkdir()
    alpha = ((1.0 - REPAINT) * 255).astype(np.uint8)
    Image.fromarray(np.dstack([PIXELS, alpha]), "RGBA").save(tmp_path / "input" / "photo.png")
    engine = genloom.Engine(models_dirs=[sd3_inpaint["root"]], input_dir=tmp_path / "input",
                            output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    result = engine.run(_graph(0.8))
    assert not result.errors, result.errors
    (entry,) = result.outputs["12"]["images"]
    ours = np.asarray(Image.open(tmp_path / "out" / entry["subfolder"] / entry["filename"]).convert("RGB"))

    pipe = _sd3_pipeline(sd3_inpaint["parts"], sd3_inpaint["controlnet"])
    own = pipe.prepare_image_with_mask
    vae = sd3_inpaint["parts"]["vae"].config

    def comfyuis_hint(**kw):  # ComfyUI scales the hint latent without subtracting the VAE's shift
        hint = own(**kw).clone()
        hint[:, :16] += vae.shift_factor * vae.scaling_factor
        return hint

    pipe.prepare_image_with_mask = comfyuis_hint
    image, mask = _pipeline_inputs(REPAINT)
    noise = torch.randn((1, 16, SIZE // 8, SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))

    def theirs(scale):
        with torch.no_grad():
            out = pipe(PROMPT, PROMPT, PROMPT, negative_prompt="blurry", negative_prompt_2="blurry",
                       negative_prompt_3="blurry", height=SIZE, width=SIZE, num_inference_steps=STEPS,
                       guidance_scale=CFG, latents=noise, max_sequence_length=77, output_type="np",
                       control_image=image, control_mask=mask, controlnet_conditioning_scale=scale).images
        return np.clip(out[0] * 255, 0, 255)

    want = theirs(0.8)
    assert want.std() > 3
    # SaveImage truncates to 8 bits (as ComfyUI): a difference under 1/255 moves a value by 1 at most
    assert np.abs(ours.astype(np.float64) - np.floor(want)).max() <= 1.0
    assert np.abs(ours.astype(np.float64) - theirs(0.0)).max() > 5  # the ControlNet changed the picture


# -- Flux (alimama-creative/FLUX.1-dev-Controlnet-Inpainting-Beta / Alpha) -------------------------------

W, H = 64, 48
FLUX_PIXELS = np.random.default_rng(9).integers(0, 256, (H, W, 3), dtype=np.uint8)
FLUX_REPAINT = np.zeros((H, W), dtype=np.float32)
FLUX_REPAINT[8:32, 16:48] = 1.0
FLUX_FOLDER, FLUX_FILE = "flux-inpaint/diffusion_pytorch_model.safetensors", "flux-inpaint.safetensors"


def _flux_net(extra: int = 4, seed: int = 31):
    """A tiny FluxControlNetModel whose hint embedder takes `extra` more inputs per token (AliMama's: 4)."""
    net = _controlnet(seed)
    torch.manual_seed(seed + 1)
    net.controlnet_x_embedder = torch.nn.Linear(64 + extra, net.inner_dim)
    return _random(net, 0.2)


@pytest.fixture(scope="module")
def flux_inpaint(tmp_path_factory):
    from safetensors.torch import save_file

    from genloom.diffusion.models import keymaps

    parts = tiny_flux.build_models(tmp_path_factory.mktemp("alimama_flux"))
    vae = parts["vae"]
    _pin(vae)
    ae = keymaps.map_keys(vae.state_dict(), keymaps.vae_map(dict(vae.config)), "", "vae")
    save_file({k: v.contiguous() for k, v in ae.items()}, str(parts["root"] / "vae" / parts["names"]["vae"]))
    net = _flux_net()
    folder = parts["root"] / "controlnet" / FLUX_FOLDER.split("/")[0]
    net.save_pretrained(str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())  # as AliMama's config.json says it
    (folder / "config.json").write_text(json.dumps({**config, "extra_condition_channels": 4}))
    _save(net, parts["root"] / "controlnet" / FLUX_FILE)
    return {**parts, "controlnet": net}


@pytest.fixture
def flux_ctx(flux_inpaint, tmp_path):
    yield from _in_context(flux_inpaint, tmp_path)


def _flux_ours(name, strength):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.controlnet import ControlNetInpaintingAliMamaApply, ControlNetLoader
    from genloom.nodes.custom_sampling import (BasicGuider, BasicScheduler, KSamplerSelect, RandomNoise,
                                               SamplerCustomAdvanced)
    from genloom.nodes.flux import FluxGuidance
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import DualCLIPLoader, UNETLoader
    from genloom.nodes.model_sampling import ModelSamplingFlux
    from genloom.nodes.sd3 import EmptySD3LatentImage

    names = tiny_flux.FILE_NAMES
    (model,) = ModelSamplingFlux().run(UNETLoader().run(names["dev"], "default")[0], 1.15, 0.5, W, H)
    (clip,) = DualCLIPLoader().run(names["clip_l"], names["t5xxl"], "flux")
    (vae,) = VAELoader().run(names["vae"])
    (cond,) = FluxGuidance().run(CLIPTextEncode().run(PROMPT, clip)[0], 4.0)
    (control,) = ControlNetLoader().run(name)
    image = torch.from_numpy(FLUX_PIXELS).float()[None] / 255.0
    cond, _neg = ControlNetInpaintingAliMamaApply().run(cond, cond, control, vae, image,
                                                        torch.from_numpy(FLUX_REPAINT)[None], strength, 0.0, 1.0)
    (guider,) = BasicGuider().run(model, cond)
    (sigmas,) = BasicScheduler().run(model, "simple", STEPS, 1.0)
    out, _ = SamplerCustomAdvanced().run(RandomNoise().run(SEED)[0], guider, KSamplerSelect().run("euler")[0],
                                         sigmas, EmptySD3LatentImage().run(W, H, 1)[0])
    return VAEDecode().run(out, vae)[0]


def _packed_keep_mask():
    """The inverted mask at the latent's size (nearest-exact from 8x: pixel 8i + 4) as Flux tokens: per
    2x2 patch of latent pixels, row-major, its 4 values in (row, column) order."""
    keep = 1.0 - FLUX_REPAINT[4::8, 4::8]
    h, w = keep.shape
    return torch.from_numpy(keep.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(1, -1, 4).copy())


def _flux_theirs(parts, scale):
    """FluxControlNetPipeline on the blacked-out image; the packed mask appended to every hint token."""
    import diffusers
    from PIL import Image

    tok, clip, t5tok, t5 = parts["parts"]
    net = parts["controlnet"]
    pipe = diffusers.FluxControlNetPipeline(scheduler=tiny_flux.scheduler(True), vae=parts["vae"], text_encoder=clip,
                                            tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5tok,
                                            transformer=parts["dev"], controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    blacked = (FLUX_PIXELS * (1 - FLUX_REPAINT[..., None])).astype(np.uint8)
    mask = _packed_keep_mask()
    hook = net.controlnet_x_embedder.register_forward_pre_hook(
        lambda _m, args: (torch.cat([args[0], mask.to(args[0].dtype).expand(args[0].shape[0], -1, -1)], -1),))
    noise = torch.randn((1, 16, H // 8, W // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    try:
        out = pipe(prompt=PROMPT, height=H, width=W, num_inference_steps=STEPS, guidance_scale=4.0,
                   latents=pipe._pack_latents(noise, 1, 16, H // 8, W // 8), max_sequence_length=256,
                   output_type="pt", control_image=Image.fromarray(blacked), controlnet_conditioning_scale=scale).images
    finally:
        hook.remove()
    return out.permute(0, 2, 3, 1)


def test_flux_inpainting_controlnet_loads_from_both_layouts(flux_ctx):
    for module in _loaded((FLUX_FOLDER, FLUX_FILE), "flux_controlnet", "flux", flux_ctx["controlnet"]):
        assert (module.controlnet_x_embedder.in_features, module.x_embedder.in_features) == (68, 64)


def test_flux_inpainting_run_equals_the_controlnet_pipeline_with_the_packed_mask(flux_ctx):
    ours = _flux_ours(FLUX_FILE, 0.9)
    theirs = _flux_theirs(flux_ctx, 0.9)
    assert ours.shape == theirs.shape and float(theirs.std()) > 0.01
    assert float((ours - theirs).abs().max()) < 1e-4
    assert float((_flux_ours(FLUX_FOLDER, 0.3) - ours).abs().max()) > 1e-3  # the strength mattered


def test_other_extra_widths_are_refused_by_name(tmp_path):
    from genloom.diffusion.errors import CheckpointError
    from genloom.diffusion.models.control_files import load_control

    _save(_flux_net(extra=8), tmp_path / "flux-wide.safetensors")
    with pytest.raises(CheckpointError, match="8 extra inputs per token"):
        load_control(tmp_path / "flux-wide.safetensors")
    _sd3_net(2, 5).save_pretrained(str(tmp_path / "sd3-wide"))
    with pytest.raises(CheckpointError, match="2 extra channels"):
        load_control(tmp_path / "sd3-wide" / "diffusion_pytorch_model.safetensors")
