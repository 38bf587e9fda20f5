"""DualCFGGuider, CFGNorm and CFGZeroStar: signatures against ComfyUI's (comfy_extras/
nodes_custom_sampler.py, nodes_cfg.py), the post-CFG formulas written out here, and the guided
results of one sampling step against the tiny SD1 UNet's predictions computed directly in the test;
then the new nodes in one API workflow through the engine."""

import pytest

torch = pytest.importorskip("torch")

from comfy_facts import capture_node, check_entry  # noqa: E402

from genloom.nodes import custom_sampling as cs  # noqa: E402
from genloom.nodes import guiders as gn  # noqa: E402

FACTS = {
    "DualCFGGuider": {
        "category": "sampling/custom_sampling/guiders", "display": "Dual CFG Guider", "output": ["GUIDER"],
        "required": [("model", "MODEL"), ("cond1", "CONDITIONING"), ("cond2", "CONDITIONING"),
                     ("negative", "CONDITIONING"), ("cfg_conds", "FLOAT", 8.0, 0.0, 100.0, 0.1),
                     ("cfg_cond2_negative", "FLOAT", 8.0, 0.0, 100.0, 0.1), ("style", ["regular", "nested"])]},
    "CFGNorm": {"category": "advanced/guidance", "display": "CFGNorm", "output": ["MODEL"],
                "required": [("model", "MODEL"), ("strength", "FLOAT", 1.0, 0.0, 100.0, 0.01)]},
    "CFGZeroStar": {"category": "advanced/guidance", "display": "CFGZeroStar", "output": ["MODEL"],
                    "required": [("model", "MODEL")]},
}


@pytest.fixture(scope="module")
def sd1(tiny_models):
    from genloom.diffusion.models.loading import load_diffusers_folder

    return load_diffusers_folder(tiny_models / "diffusers" / "tiny-sd1")


@pytest.fixture(scope="module")
def prompts(sd1):
    return {text: sd1.clip.encode(text)[0] for text in ("a red circle", "a blue square", "")}


def _cond(prompts, text):
    return [[prompts[text], {}]]


def _zero_star(x, cond, uncond, scale, guided):
    out = guided.clone()
    for i in range(x.shape[0]):  # one alpha per batch item: <x - cond, x - uncond> / |x - uncond|^2
        p, n = (x[i] - cond[i]).flatten(), (x[i] - uncond[i]).flatten()
        alpha = float((p * n).sum() / ((n * n).sum() + 1e-8))
        out[i] = guided[i] + uncond[i] * (alpha - 1) + scale * uncond[i] * (1 - alpha)
    return out


def _norm(cond, guided, strength):
    norm_c = (cond ** 2).sum(dim=1, keepdim=True).sqrt()  # over channels, at every position
    norm_g = (guided ** 2).sum(dim=1, keepdim=True).sqrt()
    return guided * torch.clamp(norm_c / (norm_g + 1e-8), 0.0, 1.0) * strength


def test_signatures_match_comfyui():
    for cls in gn.NODES:
        info = cls.schema().object_info()
        check_entry(info, FACTS[cls.__name__])
    assert gn.CFGNorm.schema().object_info()["output_name"] == ["patched_model"]
    assert gn.CFGZeroStar.schema().object_info()["output_name"] == ["patched_model"]


def test_post_cfg_formulas():
    from genloom.diffusion.sampling import guiders

    g = torch.Generator().manual_seed(0)
    x, cond, uncond = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    guided = uncond + (cond - uncond) * 5.0
    args = {"input": x, "cond_denoised": cond, "uncond_denoised": uncond, "denoised": guided, "cond_scale": 5.0}
    assert torch.allclose(guiders.CFGZeroStar()(args), _zero_star(x, cond, uncond, 5.0, guided), atol=1e-5)
    assert torch.allclose(guiders.CFGNorm(0.7)(args), _norm(cond, guided, 0.7), atol=1e-6)


def _one_step(guider, seed=3):
    """One Euler step from the top of SD1's table to 0: the guided denoised estimate (raw latent)."""
    from genloom.diffusion.sampling import model_sampling

    top = model_sampling.of_model(guider.model).sigma_max
    latent = {"samples": torch.zeros(1, 4, 6, 6)}
    out, _ = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(seed)[0], guider,
                                            cs.KSamplerSelect().run("euler")[0], torch.tensor([top, 0.0]), latent)
    x = torch.randn((1, 4, 6, 6), generator=torch.Generator().manual_seed(seed)) * (1 + top ** 2) ** 0.5
    return out["samples"], x, top


def _denoised(model, x, sigma, emb):
    """The UNet called directly at the table's top (timestep 999): x - eps * sigma."""
    with torch.no_grad():
        eps = model.unet(x / (sigma ** 2 + 1) ** 0.5, torch.tensor([999.0]), encoder_hidden_states=emb).sample
    return x - eps * sigma


def test_cfg_patches_on_the_unet(sd1, prompts, tmp_folders):
    model = sd1.model
    (normed,) = gn.CFGNorm().run(model, 0.8)
    (patched,) = gn.CFGZeroStar().run(normed)
    assert model.model_options == {} and len(patched.model_options["sampler_post_cfg_function"]) == 2
    (guider,) = cs.CFGGuider().run(patched, _cond(prompts, "a red circle"), _cond(prompts, ""), 4.0)
    got, x, top = _one_step(guider)
    cond = _denoised(model, x, top, prompts["a red circle"])
    uncond = _denoised(model, x, top, prompts[""])
    guided = _norm(cond, uncond + (cond - uncond) * 4.0, 0.8)  # CFGNorm first: it was applied first
    want = _zero_star(x, cond, uncond, 4.0, guided)
    assert torch.allclose(got * 0.18215, want, atol=1e-4), float((got * 0.18215 - want).abs().max())


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_on_the_unet(sd1, prompts, tmp_folders, style):
    model = sd1.model
    c1, c2, neg = (_cond(prompts, t) for t in ("a red circle", "a blue square", ""))
    (guider,) = gn.DualCFGGuider().run(model, c1, c2, neg, 3.0, 2.0, style)
    got, x, top = _one_step(guider)
    d1, d2, dn = (_denoised(model, x, top, prompts[t]) for t in ("a red circle", "a blue square", ""))
    if style == "regular":  # cond2 against the negative, plus cfg_conds times cond1 against cond2
        want = dn + (d2 - dn) * 2.0 + (d1 - d2) * 3.0
    else:  # cond1 against cond2 first, that against the negative
        want = dn + ((d2 + (d1 - d2) * 3.0) - dn) * 2.0
    assert torch.allclose(got * 0.18215, want, atol=1e-4), float((got * 0.18215 - want).abs().max())


def test_dual_cfg_at_cfg_one_is_plain_cfg(sd1, prompts, tmp_folders):
    model = sd1.model
    c1, c2, neg = (_cond(prompts, t) for t in ("a red circle", "a blue square", ""))
    (dual,) = gn.DualCFGGuider().run(model, c1, c2, neg, 3.5, 1.0, "regular")
    assert dual.cond_sets()[1] is None  # the negative is not evaluated at cfg_cond2_negative 1
    (plain,) = cs.CFGGuider().run(model, c1, c2, 3.5)
    (sig,) = cs.BasicScheduler().run(model, "karras", 3, 1.0)
    (smp,) = cs.KSamplerSelect().run("dpmpp_2m")
    latent = {"samples": torch.zeros(1, 4, 6, 6)}
    runs = [cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(11)[0], g, smp, sig, latent)[0]["samples"]
            for g in (dual, plain)]
    assert torch.allclose(runs[0], runs[1], atol=1e-5)
    (both,) = gn.DualCFGGuider().run(model, c1, c2, neg, 1.0, 1.0, "regular")
    assert both.cond_sets()[1:] == [None, None]  # only cond1 runs
    (basic,) = cs.BasicGuider().run(model, c1)
    runs = [cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(11)[0], g, smp, sig, latent)[0]["samples"]
            for g in (both, basic)]
    assert torch.allclose(runs[0], runs[1], atol=1e-5)


def test_api_workflow_through_the_engine(tmp_path, tmp_folders):
    """DualCFGGuider over a CFGNorm + CFGZeroStar patched LCM-sampling model, AlignYourSteps sigmas
    extended by ExtendIntermediateSigmas, GITS and OptimalSteps sigmas: the engine's results equal
    the same nodes called directly."""
    import genloom
    from genloom.nodes import sigma_nodes as sn

    engine = genloom.Engine(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    captures = {key: capture_node(f"Capture{key}ForTest") for key in ("Out", "Guider", "Sigmas", "Gits", "Opt")}
    for cls in captures.values():
        cls.seen.clear()
        engine.registry.register(cls)

    def text(t):
        return {"class_type": "CLIPTextEncode", "inputs": {"text": t, "clip": ["ckpt", 1]}}

    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "genloom-tiny.safetensors"}},
        "lcm": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["ckpt", 0], "sampling": "lcm",
                                                                  "zsnr": False}},
        "norm": {"class_type": "CFGNorm", "inputs": {"model": ["lcm", 0], "strength": 0.9}},
        "zero": {"class_type": "CFGZeroStar", "inputs": {"model": ["norm", 0]}},
        "c1": text("a red circle"), "c2": text("a blue square"), "neg": text(""),
        "guider": {"class_type": "DualCFGGuider", "inputs": {
            "model": ["zero", 0], "cond1": ["c1", 0], "cond2": ["c2", 0], "negative": ["neg", 0],
            "cfg_conds": 3.0, "cfg_cond2_negative": 2.0, "style": "nested"}},
        "ays": {"class_type": "AlignYourStepsScheduler", "inputs": {"model_type": "SD1", "steps": 3, "denoise": 1.0}},
        "ext": {"class_type": "ExtendIntermediateSigmas", "inputs": {
            "sigmas": ["ays", 0], "steps": 2, "start_at_sigma": -1.0, "end_at_sigma": 5.0, "spacing": "cosine"}},
        "gits": {"class_type": "GITSScheduler", "inputs": {"coeff": 1.05, "steps": 6, "denoise": 1.0}},
        "opt": {"class_type": "OptimalStepsScheduler", "inputs": {"model_type": "Wan", "steps": 8, "denoise": 0.5}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 17}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lcm"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "run": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["ext", 0],
            "latent_image": ["latent", 0]}},
        "k1": {"class_type": "CaptureOutForTest", "inputs": {"value": ["run", 0]}},
        "k2": {"class_type": "CaptureGuiderForTest", "inputs": {"value": ["guider", 0]}},
        "k3": {"class_type": "CaptureSigmasForTest", "inputs": {"value": ["ext", 0]}},
        "k4": {"class_type": "CaptureGitsForTest", "inputs": {"value": ["gits", 0]}},
        "k5": {"class_type": "CaptureOptForTest", "inputs": {"value": ["opt", 0]}},
    }
    engine.run(graph)
    out, guider, sigmas = (captures[k].seen[-1] for k in ("Out", "Guider", "Sigmas"))
    (ays,) = sn.AlignYourStepsScheduler().run("SD1", 3, 1.0)
    assert torch.equal(sigmas, sn.ExtendIntermediateSigmas().run(ays, 2, -1.0, 5.0, "cosine")[0])
    assert len(sigmas) == len(ays) + 1  # the one step from a sigma >= 5 (the first) split in two
    assert torch.equal(captures["Gits"].seen[-1], sn.GITSScheduler().run(1.05, 6, 1.0)[0])
    assert torch.equal(captures["Opt"].seen[-1], sn.OptimalStepsScheduler().run("Wan", 8, 0.5)[0])
    assert guider.nested and guider.cfg == 3.0 and guider.cfg2 == 2.0
    assert guider.model.sampling.prediction == "lcm"
    assert len(guider.model.model_options["sampler_post_cfg_function"]) == 2
    direct, _ = cs.SamplerCustomAdvanced().run(cs.RandomNoise().run(17)[0], guider, cs.KSamplerSelect().run("lcm")[0],
                                               sigmas, {"samples": torch.zeros(1, 4, 4, 4)})
    assert torch.equal(out["samples"], direct["samples"]) and bool(torch.isfinite(direct["samples"]).all())
