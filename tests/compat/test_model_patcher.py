"""MODEL as ComfyUI's packs patch it (diffusion/models/patcher.py, attention.py): clones, cfg
functions, model_function_wrapper, attention patches and weight patches, each checked against an
independent computation on the tiny SD1 model."""

import math

import pytest

torch = pytest.importorskip("torch")

from genloom.diffusion.models.patcher import ModelPatcher  # noqa: E402
from genloom.diffusion.sampling import loop  # noqa: E402
from references import ZeroQuery, close, sd1  # noqa: E402,F401 - sd1 is a fixture


@pytest.fixture(scope="module")
def conds(sd1):
    def encode(text):
        cond, pooled = sd1.clip.encode(text)
        return [[cond, {"pooled_output": pooled}]]

    return {"pos": encode("a red circle"), "neg": encode("a blue square")}


def run(model, conds, **kw):
    args = dict(seed=7, steps=3, cfg=4.0, sampler_name="euler", scheduler="normal")
    args.update(kw)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return loop.sample(model, conds["pos"], conds["neg"], latent, **args)["samples"]


def test_clone_is_a_mutable_facade_and_the_handle_stays_untouched(sd1, tmp_folders):
    base = sd1.model
    m = base.clone()
    assert isinstance(m, ModelPatcher)
    m.set_model_sampler_cfg_function(lambda args: args["cond"], disable_cfg1_optimization=True)
    m.set_model_attn2_patch(lambda n, c, v, extra: (n, c, v))
    assert "sampler_cfg_function" not in base.model_options
    assert base.model_options.get("transformer_options", {}) == {}
    m2 = m.clone()
    m2.set_model_attn1_patch(lambda n, c, v, extra: (n, c, v))
    assert len(m2.model_options["transformer_options"]["patches"]) == 2
    assert list(m.model_options["transformer_options"]["patches"]) == ["attn2_patch"]
    assert m.model_options["disable_cfg1_optimization"] is True
    # reads go through to the handle
    assert m.unet is base.unet and m.latent_channels == 4 and m.kind == "sd1"
    assert m.handle.model_options["sampler_cfg_function"] is m.model_options["sampler_cfg_function"]
    with pytest.raises(TypeError, match="clone"):
        base.set_model_attn2_patch(lambda *a: a)


def test_model_reads_as_comfyui(sd1, tmp_folders):
    m = sd1.model.clone()
    ms = m.get_model_object("model_sampling")
    # SD1's discrete table from its betas (scaled_linear 0.00085..0.012), computed here
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    sigmas = ((1 - ac) / ac) ** 0.5
    assert ms.sigma_max == pytest.approx(float(sigmas[-1]), rel=1e-4)
    assert ms.sigma_min == pytest.approx(float(sigmas[0]), rel=1e-4)
    assert m.model.model_sampling.sigma_max == ms.sigma_max
    x = torch.randn(2, 4, 3, 3)
    s = torch.tensor([1.0, 2.0])
    got = ms.calculate_input(s, x)
    assert torch.allclose(got[1], x[1] / math.sqrt(5.0))  # x / sqrt(sigma^2 + 1), per sample
    assert torch.allclose(ms.calculate_denoised(s, x, x)[0], x[0] - x[0] * 1.0)
    assert m.model.latent_format.scale_factor == pytest.approx(0.18215)
    assert m.get_model_object("latent_format").latent_channels == 4
    assert m.model.diffusion_model is sd1.model.unet
    assert m.model.model_type == "EPS"
    assert str(m.load_device) == "cpu" and str(m.offload_device) == "cpu"
    assert m.model_dtype() == torch.float32


def test_cfg_function_returning_cond_equals_cfg_1(sd1, conds, tmp_folders):
    m = sd1.model.clone()
    seen = []

    def cond_only(args):
        seen.append(args["cond_scale"])
        return args["cond"]

    m.set_model_sampler_cfg_function(cond_only)
    got = run(m, conds, cfg=4.0)
    want = run(sd1.model, conds, cfg=1.0)
    assert seen == [4.0] * 3
    assert close(got, want)
    assert not close(run(sd1.model, conds, cfg=4.0), want, 1e-3)


def test_function_wrapper_sees_comfyui_arguments(sd1, conds, tmp_folders):
    calls = []

    def identity(apply_model, args):
        calls.append((args["cond_or_uncond"], args["timestep"].clone(), args["input"].shape))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = sd1.model.clone()
    m.set_model_unet_function_wrapper(identity)
    got = run(m, conds)
    assert close(got, run(sd1.model, conds))
    assert calls[0][0] == [0, 1]  # cond and uncond batched in one call, ComfyUI's 0/1
    # the timestep is sigma: the first of the "normal" schedule is the table's largest
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    assert float(calls[0][1][0]) == pytest.approx(float(((1 - ac[-1]) / ac[-1]) ** 0.5), rel=1e-4)
    assert calls[0][2] == (2, 4, 8, 8)


def test_function_wrapper_works_on_unscaled_latents_in_denoised_space(sd1, conds, tmp_folders):
    """A wrapper returning its input as the denoised latent: Euler then never moves, so the result is
    the starting noise (seed 7, scaled to sqrt(1 + sigma_max^2)) through SD1's latent scale."""
    m = sd1.model.clone()
    m.set_model_unet_function_wrapper(lambda apply_model, args: args["input"])
    got = run(m, conds, cfg=1.0)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    sigma_max = float(((1 - ac[-1]) / ac[-1]) ** 0.5)
    assert torch.allclose(got, noise * math.sqrt(1 + sigma_max ** 2) / 0.18215, rtol=1e-4, atol=1e-3)


def _with_processors(unet, processors: dict, fn):
    saved = {path: mod.processor for path, mod in unet.named_modules() if path in processors}
    try:
        for path, mod in unet.named_modules():
            if path in processors:
                mod.processor = processors[path]
        return fn()
    finally:
        for path, mod in unet.named_modules():
            if path in saved:
                mod.processor = saved[path]


def test_attn2_patch_zeroing_the_query_matches_diffusers(sd1, conds, tmp_folders):
    seen = []

    def zero_q(n, context, value, extra):
        seen.append((extra["block"], extra["block_index"], extra["n_heads"], extra["dim_head"],
                     extra["cond_or_uncond"]))
        return n * 0, context, value

    m = sd1.model.clone()
    m.set_model_attn2_patch(zero_q)
    got = run(m, conds)
    unet = sd1.model.unet
    ref = {p: ZeroQuery() for p, mod in unet.named_modules() if p.endswith(".attn2")}
    want = _with_processors(unet, ref, lambda: run(sd1.model, conds))
    assert close(got, want)
    assert not close(got, run(sd1.model, conds), 1e-3)
    # ComfyUI's LDM block numbers for this UNet: 2 attention layers in level 0, the mid block, and
    # 3 in the last up level (output blocks 3, 4, 5)
    blocks = sorted({s[0] for s in seen})
    assert blocks == [("input", 1), ("input", 2), ("middle", 0), ("output", 3), ("output", 4),
                      ("output", 5)]
    assert {(s[2], s[3]) for s in seen} == {(4, 8), (4, 16)}  # 4 heads x dim_head = 32, 64 channels
    assert all(s[4] == [0, 1] for s in seen)
    # the shared base UNet has its own processors back
    assert not any(type(mod.processor).__name__ == "PatchedAttention"
                   for _p, mod in unet.named_modules() if hasattr(mod, "processor"))


def test_attn1_replace_on_one_block(sd1, conds, tmp_folders):
    """attn1 replaced in ("input", 1) by 'the values as they are': the reference computes
    to_out(to_v(x)) for that one module with diffusers' layers."""
    got_extra = []

    def values_only(q, k, v, extra):
        got_extra.append(extra["block"])
        return v

    m = sd1.model.clone()
    m.set_model_attn1_replace(values_only, "input", 1)
    got = run(m, conds)

    class ValuesOnly:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            return attn.to_out[0](attn.to_v(hidden_states))

    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    want = _with_processors(sd1.model.unet, {path: ValuesOnly()}, lambda: run(sd1.model, conds))
    assert set(got_extra) == {("input", 1)}
    assert close(got, want)


def test_add_patches_diff_and_merge(sd1, conds, tmp_folders):
    """A weight diff through add_patches equals sampling with that weight changed in place; merging a
    model with itself at any ratio (ComfyUI's ModelMergeSimple recipe) changes nothing."""
    unet = sd1.model.unet
    key = "diffusion_model.input_blocks.1.1.proj_in.weight"
    kp = sd1.model.get_key_patches("diffusion_model.")
    weight = dict(unet.named_parameters())["down_blocks.0.attentions.0.proj_in.weight"]
    assert key in kp and torch.equal(kp[key][0][0], weight) and len(kp[key]) == 1
    diff = torch.full_like(weight, 0.05)
    m = sd1.model.clone()
    assert m.add_patches({key: (diff,)}, 2.0, 0.5) == [key]
    got = run(m, conds)
    original = weight.data.clone()
    try:
        weight.data = original * 0.5 + 2.0 * diff
        want = run(sd1.model, conds)
    finally:
        weight.data = original
    assert close(got, want)
    assert torch.equal(weight.data, original)

    merged = sd1.model.clone()
    merged.add_patches(kp, 0.3, 0.7)
    assert close(run(merged, conds), run(sd1.model, conds))


def test_attn1_output_patch_and_sdxl_wrapper(sd1, conds, tiny_models, tmp_folders):
    """An output patch zeroing self-attention equals diffusers with that attention's output zeroed;
    on SDXL (pooled output and time ids as extra inputs) an identity wrapper changes nothing."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from genloom.diffusion.models.loading import load_diffusers_folder

    m = sd1.model.clone()
    m.set_model_attn1_output_patch(lambda out, extra: out * 0)
    got = run(m, conds)

    class Zeroed:
        inner = AttnProcessor2_0()

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * 0

    unet = sd1.model.unet
    want = _with_processors(unet, {p: Zeroed() for p, _m in unet.named_modules() if p.endswith(".attn1")},
                            lambda: run(sd1.model, conds))
    assert close(got, want)

    xl = load_diffusers_folder(tiny_models / "diffusers" / "tiny-sdxl")
    cond, pooled = xl.clip.encode("a red circle")
    xl_conds = {"pos": [[cond, {"pooled_output": pooled}]], "neg": [[cond * 0, {"pooled_output": pooled * 0}]]}
    seen = []

    def identity(apply_model, args):
        seen.append(sorted(args["c"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapped = xl.model.clone()
    wrapped.set_model_unet_function_wrapper(identity)
    assert close(run(wrapped, xl_conds), run(xl.model, xl_conds))
    assert seen[0] == ["c_crossattn", "text_embeds", "time_ids", "transformer_options"]


def test_key_patches_carry_loras_as_diffs(sd1, tmp_folders):
    """get_key_patches of a model with a LoRA lists the LoRA's change as a diff of that weight."""
    from genloom.diffusion.models.lora import lora_from_state

    name = "down_blocks.0.attentions.0.proj_in"
    weight = dict(sd1.model.unet.named_parameters())[name + ".weight"]
    up, down = torch.ones(weight.shape[0], 1, 1, 1), torch.ones(1, weight.shape[1], 1, 1)
    lora = lora_from_state({f"lora_unet_{name.replace('.', '_')}.lora_up.weight": up,
                            f"lora_unet_{name.replace('.', '_')}.lora_down.weight": down}, "x.safetensors")
    kp = sd1.model.with_lora(lora, 0.5).get_key_patches()
    entry = kp["diffusion_model.input_blocks.1.1.proj_in.weight"]
    assert len(entry) == 2 and torch.allclose(entry[1][1][0], torch.full_like(weight, 0.5))


def test_transformer_index_counts_in_the_order_the_network_runs(sd1, conds, tmp_folders):
    """extra_options' transformer_index (IPAdapter and AnimateDiff packs key on it) numbers the
    transformers as the forward pass meets them: input blocks, middle, output blocks (diffusers
    registers its up blocks before its middle block)."""
    seen = []

    def record(n, context, value, extra):
        seen.append((extra["block"][0], extra["transformer_index"]))
        return n, context, value

    m = sd1.model.clone()
    m.set_model_attn1_patch(record)
    run(m, conds, steps=1)
    first = seen[: len(set(seen))]  # one network call's worth
    kinds = [k for k, _i in first]
    assert "middle" in kinds and kinds == sorted(kinds, key=["input", "middle", "output"].index)
    assert [i for _k, i in first] == list(range(len(first)))
