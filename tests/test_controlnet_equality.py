"""ControlNets and T2I-Adapters through genloom's nodes give diffusers' pipelines' pixels.

As in test_pipeline_equality.py: the pipelines load the same tiny folders; Euler with 4 steps on the
`normal` schedule lands on whole timesteps (999, 666, 333, 0), and the pipeline gets ComfyUI's
starting noise. diffusers keeps a ControlNet for step i of N when i/N >= start and (i+1)/N <= end;
ComfyUI (and genloom) when the step's sigma lies between percent_to_sigma(start) and (end). With
start 0.25 and end 0.75 both keep steps 1 and 2 of 4; the SDXL adapter pipeline's
adapter_conditioning_factor of 0.5 (steps 0 and 1) is the adapter's end_percent 0.5.
"""

import pytest

torch = pytest.importorskip("torch")

import control_tiny as ct  # noqa: E402

PROMPT = "a red circle on a blue background"
SEED = 7
STEPS = 4
CFG = 4.0


@pytest.fixture(scope="module")
def control_models(tiny_models, tmp_path_factory):
    """A models dir with controlnet/: tiny ControlNets (SD1, SDXL) and adapters in several layouts."""
    root = tmp_path_factory.mktemp("control_models")
    nets = {kind: ct.build_controlnet(tiny_models / "diffusers" / f"tiny-{kind}" / "unet")
            for kind in ("sd1", "sd2", "sdxl")}
    adapters = {"sd1": ct.build_adapter(), "sdxl": ct.build_adapter(xl=True)}
    for kind, net in nets.items():
        ct.save_diffusers_folder(net, root / "controlnet" / f"cn-{kind}")
        ct.save_controlnet_original(net, root / "controlnet" / f"cn-{kind}-original.safetensors")
    for kind, adapter in adapters.items():
        ct.save_diffusers_folder(adapter, root / "controlnet" / f"adapter-{kind}")
    ct.save_adapter_original(adapters["sd1"], root / "t2i_adapter" / "adapter-sd1-original.pth")
    return root, nets, adapters


@pytest.fixture
def ctx(control_models, tiny_models, tmp_path):
    import tiny

    with tiny.cpu_context([control_models[0], tiny_models], tmp_path):
        yield


def hint_image(size: int = 16, batch: int = 1):
    """A deterministic hint [B, H, W, 3] in 0..1 (a bright square on dark, with a gradient)."""
    img = torch.zeros(batch, size, size, 3)
    img[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    img[..., 1] = torch.linspace(0, 1, size)[None, :, None]
    return img


def _noise(pipe, size: int, batch: int = 1):
    """ComfyUI's starting latent for the pipeline (see test_pipeline_equality._reference)."""
    f = pipe.vae_scale_factor
    noise = torch.randn((batch, 4, size // f, size // f), generator=torch.Generator().manual_seed(SEED))
    sigma_max = float(pipe.scheduler.sigmas.max())
    return noise * (1 + sigma_max ** 2) ** 0.5 / float(pipe.scheduler.init_noise_sigma)


def _euler(pipe):
    import diffusers

    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(folder: str, controls):
    """DiffusersLoader + CLIPTextEncode + ControlNetLoader/ControlNetApplyAdvanced (one per entry of
    `controls`: (file name or CONTROL_NET, strength, start, end)) + KSampler + VAEDecode."""
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.controlnet import ControlNetApplyAdvanced
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode
    from genloom.nodes.loaders import DiffusersLoader

    model, clip, vae = DiffusersLoader().run(folder)
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (neg,) = CLIPTextEncode().run("", clip)
    for name, strength, start, end in controls:
        net = _load_control(name) if isinstance(name, str) else name
        pos, neg = ControlNetApplyAdvanced().run(pos, neg, net, hint_image(), strength, start, end)
    (latent,) = EmptyLatentImage().run(64, 64, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent, 1.0)
    return VAEDecode().run(samples, vae)[0]


def _bhwc(images):
    """A pipeline's images as [B, H, W, C] (the adapter pipelines give numpy even for "pt")."""
    return torch.as_tensor(images) if images.shape[-1] == 3 else images.permute(0, 2, 3, 1)


def _load_control(name: str):
    from genloom.nodes.controlnet import ControlNetLoader

    return ControlNetLoader().run(name)[0]


def _hint_nchw():
    return hint_image().permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind,strength,start,end", [("sd1", 1.0, 0.0, 1.0), ("sd1", 0.6, 0.25, 0.75),
                                                     ("sd2", 0.6, 0.25, 0.75)])
def test_sd_controlnet_equals_pipeline(tiny_models, control_models, ctx, kind, strength, start, end):
    """SD1 (epsilon) and SD2 (v-prediction, linear projections), the diffusers-layout file."""
    from diffusers import StableDiffusionControlNetPipeline

    nets = control_models[1]
    pipe = _euler(StableDiffusionControlNetPipeline.from_pretrained(
        str(tiny_models / "diffusers" / f"tiny-{kind}"), controlnet=nets[kind], safety_checker=None,
        requires_safety_checker=False, local_files_only=True))
    ref = _bhwc(pipe(PROMPT, image=_hint_nchw(), negative_prompt="", height=16, width=16, num_inference_steps=STEPS,
               guidance_scale=CFG, latents=_noise(pipe, 16), output_type="pt", controlnet_conditioning_scale=strength,
               control_guidance_start=start, control_guidance_end=end).images)
    ours = _ours(f"tiny-{kind}", [(f"cn-{kind}/diffusion_pytorch_model.safetensors", strength, start, end)])
    plain = _ours(f"tiny-{kind}", [])
    assert ours.shape == ref.shape == (1, 16, 16, 3)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-2  # the ControlNet changed the picture


def test_two_controlnets_stack_like_multicontrolnet(tiny_models, control_models, ctx):
    """Two apply nodes in a row = diffusers' MultiControlNetModel (residuals summed), each with its
    own strength and range; the original-layout file stands in for the second."""
    from diffusers import StableDiffusionControlNetPipeline

    nets = control_models[1]
    pipe = _euler(StableDiffusionControlNetPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sd1"), controlnet=[nets["sd1"], nets["sd1"]], safety_checker=None,
        requires_safety_checker=False, local_files_only=True))
    ref = _bhwc(pipe(PROMPT, image=[_hint_nchw(), _hint_nchw()], negative_prompt="", height=16, width=16,
               num_inference_steps=STEPS, guidance_scale=CFG, latents=_noise(pipe, 16), output_type="pt",
               controlnet_conditioning_scale=[0.5, 0.8], control_guidance_start=[0.0, 0.25],
               control_guidance_end=[1.0, 0.75]).images)
    ours = _ours("tiny-sd1", [("cn-sd1/diffusion_pytorch_model.safetensors", 0.5, 0.0, 1.0),
                              ("cn-sd1-original.safetensors", 0.8, 0.25, 0.75)])
    assert (ours - ref).abs().max() < 1e-4


def test_sdxl_controlnet_equals_pipeline(tiny_models, control_models, ctx):
    from diffusers import StableDiffusionXLControlNetPipeline

    pipe = _euler(StableDiffusionXLControlNetPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sdxl"), controlnet=control_models[1]["sdxl"], local_files_only=True))
    pipe.vae.register_to_config(scaling_factor=0.13025)  # the family's latent scale, as genloom (ComfyUI)
    ref = _bhwc(pipe(PROMPT, image=_hint_nchw(), negative_prompt="", height=16, width=16, num_inference_steps=STEPS,
               guidance_scale=CFG, latents=_noise(pipe, 16), output_type="pt", controlnet_conditioning_scale=0.7,
               control_guidance_start=0.25, control_guidance_end=1.0).images)
    ours = _ours("tiny-sdxl", [("cn-sdxl-original.safetensors", 0.7, 0.25, 1.0)])
    assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["adapter-sd1/diffusion_pytorch_model.safetensors", "adapter-sd1-original.pth"])
def test_t2i_adapter_equals_pipeline(tiny_models, control_models, ctx, name):
    from diffusers import DiffusionPipeline, StableDiffusionAdapterPipeline

    base = DiffusionPipeline.from_pretrained(str(tiny_models / "diffusers" / "tiny-sd1"), safety_checker=None,
                                             requires_safety_checker=False, local_files_only=True)
    pipe = _euler(StableDiffusionAdapterPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        adapter=control_models[2]["sd1"], scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False))
    ref = _bhwc(pipe(PROMPT, image=_hint_nchw(), negative_prompt="", height=16, width=16, num_inference_steps=STEPS,
               guidance_scale=CFG, latents=_noise(pipe, 16), output_type="pt",
               adapter_conditioning_scale=0.8).images)
    ours = _ours("tiny-sd1", [(name, 0.8, 0.0, 1.0)])
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - _ours("tiny-sd1", [])).abs().max() > 1e-2


def test_sdxl_t2i_adapter_equals_pipeline(tiny_models, control_models, ctx):
    from diffusers import StableDiffusionXLAdapterPipeline

    pipe = _euler(StableDiffusionXLAdapterPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sdxl"), adapter=control_models[2]["sdxl"], local_files_only=True))
    pipe.vae.register_to_config(scaling_factor=0.13025)
    ref = _bhwc(pipe(PROMPT, image=_hint_nchw(), negative_prompt="", height=16, width=16, num_inference_steps=STEPS,
               guidance_scale=CFG, latents=_noise(pipe, 16), output_type="pt",
               adapter_conditioning_scale=0.9, adapter_conditioning_factor=0.5).images)
    ours = _ours("tiny-sdxl", [("adapter-sdxl/diffusion_pytorch_model.safetensors", 0.9, 0.0, 0.5)])
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - _ours("tiny-sdxl", [])).abs().max() > 1e-2


def test_sdxl_union_controlnet_equals_pipeline(tiny_models, tmp_path, ctx):
    """ControlNet-Union with SetUnionControlNetType's type = the union pipeline's control_mode."""
    from diffusers import StableDiffusionXLControlNetUnionPipeline

    from genloom.engine import context
    from genloom.nodes.controlnet import SetUnionControlNetType

    union = ct.build_union(tiny_models / "diffusers" / "tiny-sdxl" / "unet")
    ct.save_diffusers_folder(union, context.current().folders.models_dirs[0] / "controlnet" / "union-sdxl")
    pipe = _euler(StableDiffusionXLControlNetUnionPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sdxl"), controlnet=union, local_files_only=True))
    pipe.vae.register_to_config(scaling_factor=0.13025)
    ref = _bhwc(pipe(PROMPT, control_image=[_hint_nchw()], control_mode=[3], negative_prompt="", height=16,
                     width=16, num_inference_steps=STEPS, guidance_scale=CFG, latents=_noise(pipe, 16),
                     output_type="pt", controlnet_conditioning_scale=0.8).images)
    (net,) = SetUnionControlNetType().run(_load_control("union-sdxl/diffusion_pytorch_model.safetensors"),
                                          "canny/lineart/anime_lineart/mlsd")
    ours = _ours("tiny-sdxl", [(net, 0.8, 0.0, 1.0)])
    assert (ours - ref).abs().max() < 1e-4
    from genloom.diffusion.models.control_files import union_config

    shapes = {k: list(v.shape) for k, v in union.state_dict().items()}
    assert union_config(shapes) == {k: union.config[k] for k in union_config(shapes)}
    (auto,) = SetUnionControlNetType().run(net, "auto")
    with pytest.raises(ValueError, match="union ControlNet: set the kind of hint"):
        _ours("tiny-sdxl", [(auto, 0.8, 0.0, 1.0)])
