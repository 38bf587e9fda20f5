"""PerturbedAttentionGuidance + KSampler give diffusers' StableDiffusionPAGPipeline's pixels.

ComfyUI (and genloom) add PAG in denoised space, `denoised + s * (cond_denoised - perturbed)`; the
pipeline in noise space, `eps_cfg + s * (eps_cond - eps_perturbed)`. For an eps model
denoised = x - sigma * eps at the step's x and sigma, so the two are the same linear combination:
x - sigma * eps_cfg + s * sigma * (eps_perturbed - eps_cond) = x - sigma * (eps_cfg + s * (eps_cond -
eps_perturbed)). The pipeline runs the perturbed pass batched with the others and replaces only that
batch item's middle-block self-attention by its value projection: the same numbers.
"""

import pytest

torch = pytest.importorskip("torch")

from test_pipeline_equality import CFG, PROMPT, SEED, STEPS, _reference, _scheduler  # noqa: E402


def _genloom(pag_scale):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode
    from genloom.nodes.loaders import DiffusersLoader
    from genloom.nodes.model_patches import PerturbedAttentionGuidance

    model, clip, vae = DiffusersLoader().run("tiny-sd1")
    (patched,) = PerturbedAttentionGuidance().run(model, pag_scale)
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (neg,) = CLIPTextEncode().run("", clip)
    (latent,) = EmptyLatentImage().run(64, 64, 1)
    (samples,) = KSampler().run(patched, SEED, STEPS, CFG, "euler", "normal", pos, neg, latent, 1.0)
    return VAEDecode().run(samples, vae)[0], model


def test_pag_equals_diffusers_pag_pipeline(tiny_models, tmp_folders):
    import diffusers

    pipe = diffusers.StableDiffusionPAGPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sd1"), local_files_only=True, safety_checker=None,
        requires_safety_checker=False, pag_applied_layers=["mid"])
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = _scheduler(pipe, "EulerDiscreteScheduler", timestep_spacing="linspace")
    size = (8 * pipe.vae_scale_factor,) * 2
    ours, model = _genloom(3.0)
    ref = _reference(pipe, size, pag_scale=3.0)
    plain = _reference(pipe, size, pag_scale=0.0)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-4
    assert (ref - plain).abs().max() > 1e-3  # the perturbation matters on this model
    assert model.model_options == {}  # the loaded MODEL is not patched
