"""genloom's CLIPTextEncode + KSampler + VAEDecode give the diffusers pipeline's pixels.

The pipelines load the same tiny model folders on their own; the schedulers they get are built
here explicitly. genloom samples as ComfyUI does (sigma space, its schedules); the pairs below are
those where a diffusers scheduler runs the same algorithm on the same numbers. With 4 steps the
`normal` schedule lands on whole timesteps (999, 666, 333, 0), where ComfyUI's log-sigma
interpolation and diffusers' linear one agree. Not compared: euler_ancestral (ComfyUI draws the
ancestral noise from a second generator seeded with the seed, the pipeline continues its own) and
ddim (ComfyUI's ddim is Euler from sigma * noise; diffusers' DDIM starts from unit noise in VP units).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

PROMPT = "a red circle on a blue background"
SEED = 42
STEPS = 4
CFG = 4.0


def _pipeline(folder, xl=False):
    import diffusers

    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    extra = {} if xl else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scheduler(pipe, cls_name, **overrides):
    import diffusers

    return getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **overrides)


def _genloom_nodes(folder_name, sampler, schedule, width, height, batch=1):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode
    from genloom.nodes.loaders import DiffusersLoader
    from genloom.nodes.ksampler import KSampler

    model, clip, vae = DiffusersLoader().run(folder_name)
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (neg,) = CLIPTextEncode().run("", clip)
    (latent,) = EmptyLatentImage().run(width, height, batch)
    (samples,) = KSampler().run(model, SEED, STEPS, CFG, sampler, schedule, pos, neg, latent, 1.0)
    (images,) = VAEDecode().run(samples, vae)
    return images  # [B, H, W, C] on the CPU


def _reference(pipe, size, batch=1, **kw):
    """The pipeline's image from ComfyUI's starting latent: at the top of the schedule ComfyUI
    scales the noise by sqrt(1 + sigma_max^2) where diffusers' Euler-type schedulers use sigma_max
    (their init_noise_sigma), so the pipeline gets the same seeded noise pre-scaled."""
    f = pipe.vae_scale_factor
    gen = torch.Generator("cpu").manual_seed(SEED)
    noise = torch.randn((batch, pipe.unet.config.in_channels, size[0] // f, size[1] // f), generator=gen)
    init = float(pipe.scheduler.init_noise_sigma)
    if init > 1.0:  # sigma-space (VE) scheduler
        sigma_max = float(pipe.scheduler.sigmas.max())
        noise = noise * (1 + sigma_max ** 2) ** 0.5 / init
    out = pipe(PROMPT, negative_prompt="", height=size[0], width=size[1], num_inference_steps=STEPS,
               guidance_scale=CFG, num_images_per_prompt=batch, output_type="pt", latents=noise,
               generator=torch.Generator("cpu").manual_seed(SEED), **kw).images
    return out.permute(0, 2, 3, 1)


CASES = [  # genloom names -> the diffusers scheduler the pipeline gets
    ("euler", "normal", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("euler", "simple", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("dpmpp_2m", "karras", "DPMSolverMultistepScheduler",
     {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("heun", "normal", "HeunDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("lms", "normal", "LMSDiscreteScheduler", {"timestep_spacing": "linspace"}),
]


@pytest.mark.parametrize("sampler,schedule,cls_name,overrides", CASES)
def test_sd1_nodes_equal_pipeline(tiny_models, tmp_folders, sampler, schedule, cls_name, overrides):
    pipe = _pipeline(tiny_models / "diffusers" / "tiny-sd1")
    pipe.scheduler = _scheduler(pipe, cls_name, **overrides)
    ours = _genloom_nodes("tiny-sd1", sampler, schedule, 64, 64, batch=2)
    f = pipe.vae_scale_factor  # the tiny VAE is 2x: EmptyLatentImage 64 px -> 8x8 latents -> 16 px
    ref = _reference(pipe, (8 * f, 8 * f), batch=2)
    assert ours.shape == ref.shape == (2, 8 * f, 8 * f, 3)
    assert (ours - ref).abs().max() < 1e-4


def test_sd2_v_prediction_equals_pipeline(tiny_models, tmp_folders):
    pipe = _pipeline(tiny_models / "diffusers" / "tiny-sd2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.scheduler = _scheduler(pipe, "EulerDiscreteScheduler", timestep_spacing="linspace")
    ours = _genloom_nodes("tiny-sd2", "euler", "normal", 64, 64)
    ref = _reference(pipe, (8 * pipe.vae_scale_factor,) * 2)
    assert (ours - ref).abs().max() < 1e-4


def test_sdxl_equals_pipeline(tiny_models, tmp_folders):
    pipe = _pipeline(tiny_models / "diffusers" / "tiny-sdxl", xl=True)
    # genloom, like ComfyUI, scales latents by the model family's format (SDXL: 0.13025), not by the
    # VAE config (the tiny VAE's says 0.18215): the pipeline is told the family's factor.
    pipe.vae.register_to_config(scaling_factor=0.13025)
    pipe.scheduler = _scheduler(pipe, "EulerDiscreteScheduler", timestep_spacing="linspace")
    ours = _genloom_nodes("tiny-sdxl", "euler", "normal", 64, 64)
    ref = _reference(pipe, (8 * pipe.vae_scale_factor,) * 2)
    assert (ours - ref).abs().max() < 1e-4


def test_engine_workflow_saves_the_pipeline_image(tiny_models, tmp_path):
    """The same through genloom.Engine running an API-format workflow, down to the saved PNG."""
    from PIL import Image

    from genloom import Engine

    engine = Engine(models_dirs=[tiny_models], output_dir=tmp_path / "out", device="cpu")
    wf = {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_name": "tiny-sd1"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "eq"}},
    }
    events = []
    result = engine.run(wf, on_event=lambda e, d: events.append((e, d)))
    saved = result.outputs["7"]["images"][0]
    png = np.asarray(Image.open(tmp_path / "out" / saved["subfolder"] / saved["filename"]).convert("RGB"))
    assert [d["value"] for e, d in events if e == "progress" and d["node"] == "5"] == [1, 2, 3, 4]

    pipe = _pipeline(tiny_models / "diffusers" / "tiny-sd1")
    pipe.scheduler = _scheduler(pipe, "EulerDiscreteScheduler", timestep_spacing="linspace")
    ref = _reference(pipe, (8 * pipe.vae_scale_factor,) * 2)[0].numpy()
    ref8 = np.clip(ref * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert png.shape == ref8.shape
    assert np.abs(png.astype(int) - ref8.astype(int)).max() <= 1
