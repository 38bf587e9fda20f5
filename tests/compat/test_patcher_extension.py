"""comfy.patcher_extension on genloom's sampler: wrappers of each type a pack registers on a MODEL
(tests/plugins_fixtures/model_packs/wrapper_pack) are called where ComfyUI calls them, checked by
arithmetic on the unwrapped run of the shipped genloom-tiny checkpoint and by what they recorded."""

from __future__ import annotations

import shutil
import sys

import pytest

torch = pytest.importorskip("torch")

from conftest import FIXTURES  # noqa: E402
from genloom.engine.plugins import module_name_of  # noqa: E402
from genloom.runtime import Engine  # noqa: E402
from references import close, sd1  # noqa: E402,F401 - sd1 is a fixture

CKPT = "genloom-tiny.safetensors"


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("wrapper_packs") / "custom_nodes"
    for pack in ("wrapper_pack", "model_patch_pack"):  # the second keeps results (Keep)
        shutil.copytree(FIXTURES / "model_packs" / pack, folder / pack, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture(scope="module")
def engine(packs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return Engine(plugins_dir=packs, device="cpu", output_dir=out, temp_dir=out / "temp", input_dir=out / "in")


def calls(packs, pack="wrapper_pack"):
    return sys.modules[module_name_of(packs / pack)].CALLS


def graph(patch: str | None = None, scale: float = 1.0, steps: int = 3, sampler="euler") -> dict:
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a blue square", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["10", 0] if patch else ["1", 0], "seed": 7,
                                                   "steps": steps, "cfg": 4.0, "sampler_name": sampler,
                                                   "scheduler": "normal", "positive": ["2", 0],
                                                   "negative": ["3", 0], "latent_image": ["4", 0],
                                                   "denoise": 1.0}},
    }
    if patch:
        g["10"] = {"class_type": patch, "inputs": {"model": ["1", 0], "scale": scale}}
    return g


def kept(engine, packs, g, name):
    g = dict(g)
    g["99"] = {"class_type": "Keep", "inputs": {"samples": ["5", 0], "name": name}}
    result = engine.run(g)
    assert not result.errors, result.errors
    return calls(packs, "model_patch_pack")["kept"][name]


def test_apply_model_wrapper_scales_the_denoised_latent(engine, packs):
    plain = kept(engine, packs, graph(), "plain")
    assert close(kept(engine, packs, graph("ScaleApplyModel", 1.0), "apply1"), plain)
    # One euler step from sigma_max to 0 lands on the denoised estimate D (x + (x - D) / s * (0 - s));
    # the CFG mix of two doubled estimates is the doubled mix, and SD1's latent format is a scaling.
    one = kept(engine, packs, graph(steps=1), "plain1")
    assert close(kept(engine, packs, graph("ScaleApplyModel", 2.0, steps=1), "apply2"), 2 * one)


def test_diffusion_model_wrapper_scales_the_network_output(engine, packs):
    # With one euler step the result is D = x - sigma * eps: affine in the network output's scale.
    r = {s: kept(engine, packs, graph("ScaleDiffusionModel", s, steps=1), f"diff{s}") for s in (0.0, 1.0, 2.0)}
    assert close(r[1.0], kept(engine, packs, graph(steps=1), "plain1d"))
    assert close(r[2.0], 2 * r[1.0] - r[0.0])
    assert not close(r[2.0], r[1.0], 1e-3)


def test_calc_cond_batch_outer_and_sampler_wrappers_and_callbacks(engine, packs):
    state = calls(packs)
    for key in ("calc", "outer", "sampler", "callbacks"):
        state[key].clear()
    plain = kept(engine, packs, graph(), "plain_r")
    assert close(kept(engine, packs, graph("RecordCalls", 1.0), "recorded"), plain)
    assert len(state["calc"]) == 3  # euler: one model call per step, cond and uncond together
    assert all(n == 2 and shape == (1, 4, 4, 4) for n, shape, _ in state["calc"])
    sigmas = [s for _, _, s in state["calc"]]
    assert sigmas == sorted(sigmas, reverse=True) and sigmas[0] > sigmas[-1] > 0
    assert len(state["outer"]) == 1 and state["outer"][0][1:] == (4, 7)  # 3 steps: 4 sigmas; the seed
    assert state["sampler"] == [(True, 4, 7)]
    assert state["callbacks"] == ["clone", "pre_run", "cleanup"]

    state["calc"].clear()
    kept(engine, packs, graph("RecordCalls", 1.0, sampler="heun"), "heun")
    assert len(state["calc"]) == 5  # heun: two calls per step but the last (to sigma 0)


def test_outer_sample_wrapper_changing_the_noise(engine, packs):
    """OUTER_SAMPLE with the noise scaled by 0 samples what KSamplerAdvanced does without noise."""
    g = graph()
    g["5"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["1", 0], "add_noise": "disable", "noise_seed": 7, "steps": 3, "cfg": 4.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0],
        "latent_image": ["4", 0], "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    want = kept(engine, packs, g, "no_noise")
    assert close(kept(engine, packs, graph("RecordCalls", 0.0), "zero_noise"), want)


def test_wrappers_live_in_transformer_options_and_clone_apart(sd1):
    import comfy.patcher_extension as pe

    m = sd1.model.clone()
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "k", len)
    m.add_wrapper(pe.WrappersMP.APPLY_MODEL, abs)
    assert m.model_options["transformer_options"]["wrappers"] == {"apply_model": {"k": [len], None: [abs]}}
    assert m.wrappers is m.model_options["transformer_options"]["wrappers"]
    assert pe.get_all_wrappers("apply_model", m.model_options, is_model_options=True) == [len, abs]
    assert m.get_all_wrappers("apply_model") == [len, abs] and m.get_wrappers("apply_model", "k") == [len]
    twin = m.clone()
    twin.remove_wrappers_with_key("apply_model", "k")
    assert twin.get_all_wrappers("apply_model") == [abs] and m.get_all_wrappers("apply_model") == [len, abs]
    assert sd1.model.get_all_wrappers("apply_model") == []  # the shared handle reads, never changes
    with pytest.raises(TypeError, match="clone"):
        sd1.model.add_wrapper_with_key("apply_model", "k", len)

    seen = []
    chain = pe.WrapperExecutor.new_class_executor(
        lambda v: seen.append("original") or v + 1, "owner",
        [lambda ex, v: seen.append(("a", ex.class_obj)) or ex(v * 2), lambda ex, v: seen.append("b") or ex(v + 3)])
    assert chain.execute(1) == (1 * 2 + 3) + 1
    assert seen == [("a", "owner"), "b", "original"]
