"""Flux ControlNets (InstantX / Shakker-Labs, diffusers FluxControlNetModel layout) through genloom's
nodes equal diffusers' FluxControlNetPipeline on tiny random weights: within 1e-4 on the decoded image.

The files are written as users have them in ComfyUI's `controlnet/` folder: a diffusers folder
(diffusion_pytorch_model.safetensors beside its config.json) and a lone renamed file (configuration
from the shapes). The ControlNet has fewer blocks than the transformer (1 double for 1, 1 single for 2),
so the spreading of its residuals over the transformer's blocks counts.

Conventions: ComfyUI's noise (CPU, latent shape) goes into the pipeline packed; ModelSamplingFlux sets
the pipeline's mu (see tests/diffusion/test_flux_pipeline.py). The pipeline VAE-encodes the hint by
sampling the latent distribution, ComfyUI takes its mean: the test VAE's log-variance is pinned at
diffusers' floor (-30, a standard deviation of 3e-7) so both read the same latent. Start/end windows:
ComfyUI judges a step by its starting sigma (live when percent_to_sigma(end) <= sigma <=
percent_to_sigma(start)), the pipeline by its index (live when i/n >= start and (i+1)/n <= end); with 4
steps ComfyUI's (0.2, 0.55) and the pipeline's (0.2, 0.8) both keep steps 1 and 2 only.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny  # noqa: E402
import tiny_flux  # noqa: E402

PROMPT, SEED, W, H, STEPS = "a red cat on the grass", 7, 64, 48, 4
HINT = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
FOLDER_NAME, FILE_NAME = "flux-canny-tiny/diffusion_pytorch_model.safetensors", "flux-canny-tiny.safetensors"
UNION_NAME = "flux-union-tiny.safetensors"


def _controlnet(seed: int = 11, num_mode=None):
    """A tiny FluxControlNetModel for tiny_flux's transformer, every zero-initialised part random
    (`num_mode`: a union ControlNet with that many hint kinds)."""
    from diffusers import FluxControlNetModel

    from genloom.diffusion.models.families.flux import rope_axes

    torch.manual_seed(seed)
    head = tiny_flux.WIDTH // tiny_flux.HEADS
    net = FluxControlNetModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                              attention_head_dim=head, num_attention_heads=tiny_flux.HEADS,
                              joint_attention_dim=tiny_flux.TEXT_DIM, pooled_projection_dim=tiny_flux.POOLED_DIM,
                              guidance_embeds=True, axes_dims_rope=list(rope_axes(head)), num_mode=num_mode)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def flux_cn(tmp_path_factory):
    from safetensors.torch import save_file

    from genloom.diffusion.models import keymaps

    parts = tiny_flux.build_models(tmp_path_factory.mktemp("flux_cn_models"))
    vae = parts["vae"]
    with torch.no_grad():  # a (near) deterministic encoder: see the module docstring
        vae.encoder.conv_out.weight[16:] = 0
        vae.encoder.conv_out.bias[16:] = -30.0
    ae = keymaps.map_keys(vae.state_dict(), keymaps.vae_map(dict(vae.config)), "", "vae")
    save_file({k: v.contiguous() for k, v in ae.items()}, str(parts["root"] / "vae" / parts["names"]["vae"]))
    net = _controlnet()
    folder = parts["root"] / "controlnet" / FOLDER_NAME.split("/")[0]
    folder.mkdir(parents=True)
    net.save_pretrained(str(folder), safe_serialization=True)
    weights = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(weights, str(parts["root"] / "controlnet" / FILE_NAME))
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "FluxControlNetModel"
    union = _controlnet(13, num_mode=3)
    save_file({k: v.contiguous() for k, v in union.state_dict().items()}, str(parts["root"] / "controlnet" / UNION_NAME))
    return {**parts, "controlnet": net, "union": union}


def _in_context(parts, tmp_path):
    """A CPU run context over `parts["root"]` for the test's duration (yields the parts)."""
    with tiny.cpu_context([parts["root"]], tmp_path):
        yield parts


@pytest.fixture
def ctx(flux_cn, tmp_path):
    yield from _in_context(flux_cn, tmp_path)


def _ours(parts, name, strength, start, end, guidance=4.0, union_type=None):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.controlnet import ControlNetApplyAdvanced, ControlNetLoader
    from genloom.nodes.custom_sampling import (BasicGuider, BasicScheduler, KSamplerSelect, RandomNoise,
                                               SamplerCustomAdvanced)
    from genloom.nodes.flux import FluxGuidance
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import DualCLIPLoader, UNETLoader
    from genloom.nodes.model_sampling import ModelSamplingFlux
    from genloom.nodes.sd3 import EmptySD3LatentImage

    names = parts["names"]
    (model,) = UNETLoader().run(names["dev"], "default")
    (model,) = ModelSamplingFlux().run(model, 1.15, 0.5, W, H)
    (clip,) = DualCLIPLoader().run(names["clip_l"], names["t5xxl"], "flux")
    (vae,) = VAELoader().run(names["vae"])
    (cond,) = FluxGuidance().run(CLIPTextEncode().run(PROMPT, clip)[0], guidance)
    (control,) = ControlNetLoader().run(name)
    if union_type is not None:
        from genloom.nodes.controlnet import SetUnionControlNetType

        (control,) = SetUnionControlNetType().run(control, union_type)
    image = torch.from_numpy(HINT).float()[None] / 255.0
    cond, _neg = ControlNetApplyAdvanced().run(cond, cond, control, image, strength, start, end, vae)
    (guider,) = BasicGuider().run(model, cond)
    (sigmas,) = BasicScheduler().run(model, "simple", STEPS, 1.0)
    (latent,) = EmptySD3LatentImage().run(W, H, 1)
    out, _ = SamplerCustomAdvanced().run(RandomNoise().run(SEED)[0], guider, KSamplerSelect().run("euler")[0],
                                         sigmas, latent)
    return VAEDecode().run(out, vae)[0]


def _theirs(parts, scale, start, end, guidance=4.0, controlnet=None, **more):
    import diffusers
    from PIL import Image

    tok, clip, t5tok, t5 = parts["parts"]
    model = parts["dev"]
    kw = dict(scheduler=tiny_flux.scheduler(True), vae=parts["vae"], text_encoder=clip, tokenizer=tok,
              text_encoder_2=t5, tokenizer_2=t5tok, transformer=model)
    if controlnet is None:
        pipe = diffusers.FluxPipeline(**kw)
        extra = {}
    else:
        pipe = diffusers.FluxControlNetPipeline(**kw, controlnet=controlnet)
        extra = dict(control_image=Image.fromarray(HINT), controlnet_conditioning_scale=scale,
                     control_guidance_start=start, control_guidance_end=end, **more)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 16, H // 8, W // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    latents = pipe._pack_latents(noise, 1, 16, H // 8, W // 8)
    out = pipe(prompt=PROMPT, height=H, width=W, num_inference_steps=STEPS, latents=latents, guidance_scale=guidance,
               max_sequence_length=256, output_type="pt", **extra).images
    return out.permute(0, 2, 3, 1)


def _close(ours, theirs):
    assert ours.shape == theirs.shape
    assert float(theirs.std()) > 0.01
    assert float((ours - theirs).abs().max()) < 1e-4


def test_flux_controlnet_folder_layout_whole_run(ctx):
    ours = _ours(ctx, FOLDER_NAME, 0.8, 0.0, 1.0)
    _close(ours, _theirs(ctx, 0.8, 0.0, 1.0, controlnet=ctx["controlnet"]))
    plain = _theirs(ctx, 0, 0, 1)
    assert float((ours - plain).abs().max()) > 1e-3  # the ControlNet changed the picture


def test_flux_controlnet_lone_file_with_a_window(ctx):
    ours = _ours(ctx, FILE_NAME, 1.3, 0.2, 0.55)
    _close(ours, _theirs(ctx, 1.3, 0.2, 0.8, controlnet=ctx["controlnet"]))
    whole = _theirs(ctx, 1.3, 0.0, 1.0, controlnet=ctx["controlnet"])
    assert float((ours - whole).abs().max()) > 1e-3  # the window mattered


def test_flux_controlnet_loads_the_same_weights_from_both_layouts(ctx):
    from genloom.nodes.controlnet import ControlNetLoader

    (a,) = ControlNetLoader().run(FOLDER_NAME)
    (b,) = ControlNetLoader().run(FILE_NAME)
    assert (a.kind, a.family, a.takes_latents) == ("flux_controlnet", "flux", True)
    want = ctx["controlnet"].state_dict()
    for net in (a.module, b.module):
        got = net.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert dict(b.module.config)["num_single_layers"] == 1 and dict(b.module.config)["guidance_embeds"]


def test_flux_union_controlnet_takes_setunioncontrolnettypes_number_as_its_mode(ctx):
    from genloom.diffusion.errors import SamplingError

    ours = _ours(ctx, UNION_NAME, 0.9, 0.0, 1.0, union_type="depth")  # ComfyUI's number 1, passed as is
    _close(ours, _theirs(ctx, 0.9, 0.0, 1.0, controlnet=ctx["union"], control_mode=1))
    other = _theirs(ctx, 0.9, 0.0, 1.0, controlnet=ctx["union"], control_mode=2)
    assert float((ours - other).abs().max()) > 1e-3  # the mode mattered
    with pytest.raises(SamplingError, match="SetUnionControlNetType"):
        _ours(ctx, UNION_NAME, 0.9, 0.0, 1.0, union_type="auto")


def test_flux_controlnet_needs_a_vae(ctx):
    from genloom.engine.errors import NodeInputError
    from genloom.nodes.controlnet import ControlNetApply, ControlNetApplyAdvanced, ControlNetLoader

    (control,) = ControlNetLoader().run(FILE_NAME)
    image = torch.zeros(1, H, W, 3)
    with pytest.raises(NodeInputError, match="VAE"):
        ControlNetApplyAdvanced().run([], [], control, image, 1.0, 0.0, 1.0, None)
    with pytest.raises(NodeInputError, match="VAE"):
        ControlNetApply().run([], control, image, 1.0)


# -- SD3 (InstantX's SD3 ControlNets, diffusers SD3ControlNetModel) ----------------------------------
# The same conventions, with StableDiffusion3ControlNetPipeline and real CFG: ControlNetApplySD3 puts
# the ControlNet on both prompts, as the pipeline runs it on its CFG batch (each prompt its own text).
# SD3's shift-3 schedule is not linear in the step index: the window's ComfyUI ends are chosen from
# the step sigmas (written in the test) to keep the same steps as the pipeline's.

SD3_FOLDER, SD3_FILE, SD3_SIZE, SD3_CFG = "sd3-canny-tiny/diffusion_pytorch_model.safetensors", \
    "sd3-canny-tiny.safetensors", 64, 4.0
SD3_HINT = np.random.default_rng(6).integers(0, 256, (SD3_SIZE, SD3_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sd3_cn(tmp_path_factory):
    """Own tiny SD3.5-style parts (tests/tiny_split.py): the VAE's log-variance is pinned, so the
    shared session models stay untouched."""
    from diffusers import SD3ControlNetModel
    from safetensors.torch import save_file

    import tiny_split

    root = tmp_path_factory.mktemp("sd3_cn_models")
    parts = tiny_split.build_sd3_parts()
    with torch.no_grad():
        parts["vae"].encoder.conv_out.weight[16:] = 0
        parts["vae"].encoder.conv_out.bias[16:] = -30.0
    files = tiny_split.write_sd3_files(root, parts)
    torch.manual_seed(12)
    net = SD3ControlNetModel(sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=32,
                             num_attention_heads=2, joint_attention_dim=tiny_split.T5_WIDTH, caption_projection_dim=64,
                             pooled_projection_dim=tiny_split.CLIP_L + tiny_split.CLIP_G, out_channels=16,
                             pos_embed_max_size=16, qk_norm="rms_norm").eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    folder = root / "controlnet" / SD3_FOLDER.split("/")[0]
    net.save_pretrained(str(folder), safe_serialization=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "controlnet" / SD3_FILE))
    return {"root": root, "parts": parts, "files": files, "controlnet": net}


@pytest.fixture
def sd3_ctx(sd3_cn, tmp_path):
    yield from _in_context(sd3_cn, tmp_path)


def _sd3_ours(name, strength, start, end):
    from genloom.nodes.controlnet import ControlNetApplySD3, ControlNetLoader
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import VAEDecode
    from genloom.nodes.loaders import VAELoader
    from genloom.nodes.loaders_split import TripleCLIPLoader, UNETLoader
    from genloom.nodes.sd3 import CLIPTextEncodeSD3, EmptySD3LatentImage

    (model,) = UNETLoader().run("tiny-sd3.safetensors", "default")
    (vae,) = VAELoader().run("tiny-sd3-vae.safetensors")
    (clip,) = TripleCLIPLoader().run("tiny-sd3-t5xxl.safetensors", "tiny-sd3-clip_g.safetensors",
                                     "tiny-sd3-clip_l.safetensors")
    pos, neg = (CLIPTextEncodeSD3().run(clip, text, text, text, "none")[0] for text in (PROMPT, "blurry"))
    (control,) = ControlNetLoader().run(name)
    image = torch.from_numpy(SD3_HINT).float()[None] / 255.0
    pos, neg = ControlNetApplySD3().run(pos, neg, control, vae, image, strength, start, end)
    (latent,) = EmptySD3LatentImage().run(SD3_SIZE, SD3_SIZE, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, SD3_CFG, "euler", "normal", pos, neg, latent, 1.0)
    return VAEDecode().run(samples, vae)[0]


def _sd3_theirs(parts, scale, start, end, controlnet=None):
    import diffusers
    from PIL import Image

    import tiny_split

    pipe = tiny_split.sd3_pipeline(parts)
    extra = {}
    if controlnet is not None:
        pipe = diffusers.StableDiffusion3ControlNetPipeline(**pipe.components, controlnet=controlnet)
        pipe.set_progress_bar_config(disable=True)
        extra = dict(control_image=Image.fromarray(SD3_HINT), controlnet_conditioning_scale=scale,
                     control_guidance_start=start, control_guidance_end=end)
    noise = torch.randn((1, 16, SD3_SIZE // 8, SD3_SIZE // 8), generator=torch.Generator("cpu").manual_seed(SEED))
    with torch.no_grad():
        out = pipe(PROMPT, PROMPT, PROMPT, negative_prompt="blurry", negative_prompt_2="blurry",
                   negative_prompt_3="blurry", height=SD3_SIZE, width=SD3_SIZE, num_inference_steps=STEPS,
                   guidance_scale=SD3_CFG, latents=noise, max_sequence_length=77, output_type="pt", **extra).images
    return out.permute(0, 2, 3, 1)


def test_sd3_controlnet_folder_layout_whole_run(sd3_ctx):
    ours = _sd3_ours(SD3_FOLDER, 0.7, 0.0, 1.0)
    _close(ours, _sd3_theirs(sd3_ctx["parts"], 0.7, 0.0, 1.0, sd3_ctx["controlnet"]))
    assert float((ours - _sd3_theirs(sd3_ctx["parts"], 0, 0, 1)).abs().max()) > 1e-3


def test_sd3_controlnet_lone_file_with_a_window(sd3_ctx):
    from genloom.nodes.controlnet import ControlNetLoader

    (control,) = ControlNetLoader().run(SD3_FILE)
    assert (control.kind, control.family) == ("sd3_controlnet", "sd3")
    want = sd3_ctx["controlnet"].state_dict()
    assert all(torch.equal(control.module.state_dict()[k], want[k]) for k in want)
    # the step sigmas are 1, .858, .602, .009; percent_to_sigma(0.2) = .923, (0.7) = .5625: steps 1, 2
    ours = _sd3_ours(SD3_FILE, 1.2, 0.2, 0.7)
    _close(ours, _sd3_theirs(sd3_ctx["parts"], 1.2, 0.2, 0.8, sd3_ctx["controlnet"]))
    whole = _sd3_theirs(sd3_ctx["parts"], 1.2, 0.0, 1.0, sd3_ctx["controlnet"])
    assert float((ours - whole).abs().max()) > 1e-3
