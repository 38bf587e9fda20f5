"""Stability's control-LoRA files, ControlNet-Union files in the original (cldm) layout, and the
ControlNet start/end window judged on the step's sigma.

References: a control-LoRA's ControlNet against a diffusers ControlNetModel made from the same UNet
with the low-rank products merged by hand (control_tiny.build_control_lora), then against diffusers'
SDXL ControlNet pipeline with that network, and the file layout against diffusers' own control-LoRA
converter at full SDXL size; a union file written in the cldm layout by the test's own
converter against the diffusers-layout file of the same ControlNetUnionModel; the ControlNet window
against ComfyUI's percent_to_sigma arithmetic written out here (the discrete DDPM table with
interpolated log-sigmas, and the SD3 flow shift).
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import control_tiny as ct  # noqa: E402
from test_controlnet_equality import (CFG, PROMPT, STEPS, _bhwc, _euler, _hint_nchw, _load_control,  # noqa: E402
                                      _noise, _ours, hint_image)

LORA_FILE = "control-lora-canny-rank2.safetensors"


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory):
    """controlnet/: a control-LoRA for tiny SDXL; a union ControlNet in the diffusers layout and in the
    cldm layout (ComfyUI's attn.in_proj.* spelling, and torch's in_proj_* with 'control_model.'); a
    plain SD1 ControlNet for the window tests."""
    root = tmp_path_factory.mktemp("control_lora_models")
    unet = tiny_models / "diffusers" / "tiny-sdxl" / "unet"
    ref, _ = ct.build_control_lora(unet, root / "controlnet" / LORA_FILE)
    ct.save_diffusers_folder(ct.build_controlnet(tiny_models / "diffusers" / "tiny-sd1" / "unet"),
                             root / "controlnet" / "cn-sd1")
    union = ct.build_union(unet)
    ct.save_diffusers_folder(union, root / "controlnet" / "union-diffusers")
    ct.save_controlnet_original(union, root / "controlnet" / "union-comfy.safetensors", prefix="")
    ct.save_controlnet_original(union, root / "controlnet" / "union-torch.safetensors", torch_attention=True)
    return root, ref, union


@pytest.fixture
def ctx(files, tiny_models, tmp_path):
    import tiny

    with tiny.cpu_context([files[0], tiny_models], tmp_path):
        yield


def _plain(value):
    """A config value with lists and tuples alike (diffusers keeps either)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _same(module, ref, atol: float = 0.0) -> None:
    got, want = module.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.allclose(got[key], value, rtol=0, atol=atol), key


# -- control-LoRA ------------------------------------------------------------------------------

def test_control_lora_makes_the_controlnet_of_the_model_it_is_applied_to(files, ctx):
    from genloom.nodes.loaders import DiffusersLoader

    control = _load_control(LORA_FILE)
    assert (control.kind, control.family) == ("control_lora", "sdxl")
    model = DiffusersLoader().run("tiny-sdxl")[0]
    net = control.module.network(model.unet)
    _same(net, files[1], atol=1e-6)  # the UNet's encoder + the products merged by hand, the file's full weights
    for field in ("block_out_channels", "transformer_layers_per_block", "addition_time_embed_dim",
                  "conditioning_embedding_out_channels", "cross_attention_dim", "attention_head_dim"):
        assert _plain(net.config[field]) == _plain(files[1].config[field]), field
    assert control.module.network(model.unet) is net  # made once per UNet (and its LoRAs)


def test_a_model_with_a_lora_gets_a_controlnet_with_it(files, ctx):
    """As ComfyUI: the ControlNet copies the model's weights as they are while sampling, LoRAs applied."""
    import copy

    from safetensors.torch import save_file

    from genloom.nodes.loaders import DiffusersLoader, LoraLoaderModelOnly

    target = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    gen = torch.Generator().manual_seed(9)
    up, down = torch.randn(64, 2, generator=gen), torch.randn(2, 64, generator=gen)
    (files[0] / "loras").mkdir(exist_ok=True)
    save_file({f"unet.{target}.lora_A.weight": down, f"unet.{target}.lora_B.weight": up},
              str(files[0] / "loras" / "style.safetensors"))
    model = DiffusersLoader().run("tiny-sdxl")[0]
    (styled,) = LoraLoaderModelOnly().run(model, "style.safetensors", 0.5)
    want = copy.deepcopy(files[1])
    with torch.no_grad():
        want.get_parameter(target + ".weight").add_(0.5 * (up @ down))
    control = _load_control(LORA_FILE)
    with styled.use("cpu") as unet:
        net = control.module.network(unet, styled.patches)
    _same(net, want, atol=1e-5)
    _same(control.module.network(model.unet), files[1], atol=1e-6)  # the plain model: rebuilt without it


def test_control_lora_equals_the_sdxl_controlnet_pipeline(files, tiny_models, ctx):
    from diffusers import StableDiffusionXLControlNetPipeline

    pipe = _euler(StableDiffusionXLControlNetPipeline.from_pretrained(
        str(tiny_models / "diffusers" / "tiny-sdxl"), controlnet=files[1], local_files_only=True))
    pipe.vae.register_to_config(scaling_factor=0.13025)
    ref = _bhwc(pipe(PROMPT, image=_hint_nchw(), negative_prompt="", height=16, width=16, num_inference_steps=STEPS,
                     guidance_scale=CFG, latents=_noise(pipe, 16), output_type="pt",
                     controlnet_conditioning_scale=0.7, control_guidance_start=0.25,
                     control_guidance_end=1.0).images)
    ours = _ours("tiny-sdxl", [(LORA_FILE, 0.7, 0.25, 1.0)])
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - _ours("tiny-sdxl", [])).abs().max() > 1e-2


def test_a_control_lora_for_another_model_says_so(files, ctx):
    from genloom.nodes.loaders import DiffusersLoader

    control = _load_control(LORA_FILE)
    with pytest.raises(ValueError, match="control-LoRA"):
        control.module.network(DiffusersLoader().run("tiny-sd1")[0].unet)


def test_the_control_lora_layout_reads_as_diffusers_reads_it():
    """At SDXL's full size (meta device): the names the test's writer gives a control-LoRA are the
    ones diffusers' own converter (convert_sai_sd_control_lora_state_dict_to_peft) reads, and genloom's
    cldm map puts every one on the ControlNet weight diffusers puts it on."""
    from diffusers import ControlNetModel
    from diffusers.utils import convert_sai_sd_control_lora_state_dict_to_peft

    from genloom.diffusion.models import keymaps

    config = dict(block_out_channels=[320, 640, 1280], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                  "CrossAttnDownBlock2D"], transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                  cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    with torch.device("meta"):
        net = ControlNetModel(**config)
    names = ct._cldm_names(net)
    paired = {m + ".weight" for m in ct.control_lora_paired(net)}
    file_keys = {"lora_controlnet": "lora_controlnet"}  # file key -> the diffusers weight it belongs to
    for key in net.state_dict():
        if key in paired:
            stem = names[key][: -len(".weight")]
            file_keys[stem + ".up"] = file_keys[stem + ".down"] = key
        else:
            file_keys[names[key]] = key
    converted = convert_sai_sd_control_lora_state_dict_to_peft({k: k for k in file_keys})
    theirs = {v: k.replace(".lora_A.weight", ".weight").replace(".lora_B.weight", ".weight")
              for k, v in converted.items() if v is not None}
    assert {k for k in file_keys if k != "lora_controlnet"} <= set(theirs)
    back = {v: k for k, v in keymaps.controlnet_map({**config, "conditioning_embedding_out_channels":
                                                     [16, 32, 96, 256]}).items()}
    for key, weight in file_keys.items():
        if key == "lora_controlnet":
            continue
        ours = keymaps._translate(key if not key.endswith((".up", ".down")) else
                                  key.rpartition(".")[0] + ".weight", back)
        assert ours == theirs[key] == weight, key


def test_malformed_control_lora_is_refused_by_what_it_is(files, ctx):
    from safetensors.torch import save_file

    folder = files[0] / "controlnet"
    save_file({"lora_controlnet": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(8, 3, 3, 3),
               "input_blocks.1.0.in_layers.2.up": torch.zeros(4, 2, 1, 1)}, str(folder / "half.safetensors"))
    with pytest.raises(ValueError, match="control-LoRA with unpaired low-rank weights"):
        _load_control("half.safetensors")


# -- ControlNet-Union in the original layout ----------------------------------------------------

def test_union_in_the_original_layout_loads_to_the_same_weights(files, ctx):
    from genloom.nodes.controlnet import SetUnionControlNetType

    for name in ("union-comfy.safetensors", "union-torch.safetensors"):
        original = _load_control(name)
        assert type(original.module).__name__ == "ControlNetUnionModel" and original.family == "sdxl"
        _same(original.module, files[2])
    diffusers = _load_control("union-diffusers/diffusion_pytorch_model.safetensors")
    kind = "canny/lineart/anime_lineart/mlsd"
    (a,) = SetUnionControlNetType().run(original, kind)
    (b,) = SetUnionControlNetType().run(diffusers, kind)
    assert torch.equal(_ours("tiny-sdxl", [(a, 0.8, 0.0, 1.0)]), _ours("tiny-sdxl", [(b, 0.8, 0.0, 1.0)]))


def test_union_configuration_from_released_shapes_in_the_original_layout():
    """xinsir's ProMax at full size (on the meta device): the cldm names' shapes give its config."""
    from diffusers import ControlNetUnionModel

    from genloom.diffusion.models.control_files import controlnet_config_original, union_config

    config = dict(block_out_channels=[320, 640, 1280], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                  "CrossAttnDownBlock2D"], transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
                  cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, num_control_type=8)
    with torch.device("meta"):
        net = ControlNetUnionModel(**config)
    names = ct._cldm_names(net)
    shapes = {names[k]: list(v.shape) for k, v in net.state_dict().items()}
    got = {**controlnet_config_original(shapes), **union_config(shapes)}
    for field in ("block_out_channels", "down_block_types", "transformer_layers_per_block", "attention_head_dim",
                  "cross_attention_dim", "projection_class_embeddings_input_dim", "num_control_type",
                  "num_trans_channel", "num_trans_layer", "num_proj_channel", "conditioning_embedding_out_channels"):
        assert _plain(got[field]) == _plain(net.config[field]), field


# -- the ControlNet window on sigma ---------------------------------------------------------------

def _discrete_sigma(t: float) -> float:
    """SD's DDPM table (scaled_linear betas 0.00085..0.012, 1000 steps), log-sigma interpolated
    between whole timesteps (ComfyUI's ModelSamplingDiscrete.sigma)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas = np.cumprod(1.0 - betas)
    log_sigmas = np.log(((1 - alphas) / alphas) ** 0.5)
    low, w = int(math.floor(t)), t - math.floor(t)
    return float(np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[min(low + 1, 999)]))


def _flow_sigma(rest: float, shift: float = 3.0) -> float:
    """The SD3 shift of a (1 - percent) fraction (ComfyUI's time_snr_shift)."""
    return shift * rest / (1 + (shift - 1) * rest)


def _run_window(model, sigmas: list, start: float, end: float) -> list:
    """SamplerCustom (euler, cfg 1: one ControlNet call per step) over `sigmas` with a ControlNet live
    from start to end; the timesteps the ControlNet was called with."""
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.controlnet import ControlNetApplyAdvanced
    from genloom.nodes.custom_sampling import KSamplerSelect, SamplerCustom
    from genloom.nodes.latent import EmptyLatentImage

    clip = model[1]
    (cond,) = CLIPTextEncode().run(PROMPT, clip)
    control = _load_control("cn-sd1/diffusion_pytorch_model.safetensors")
    pos, neg = ControlNetApplyAdvanced().run(cond, cond, control, hint_image(), 1.0, start, end)
    seen = []
    hook = control.module.register_forward_pre_hook(lambda _m, args: seen.append(float(args[1].reshape(-1)[0])))
    try:
        SamplerCustom().run(model[0], True, 1, 1.0, pos, neg, KSamplerSelect().run("euler")[0],
                            torch.tensor(sigmas + [0.0]), EmptyLatentImage().run(16, 16, 1)[0])
    finally:
        hook.remove()
    return seen


@pytest.fixture
def sd1_with_controlnet(files, ctx):
    from genloom.nodes.loaders import DiffusersLoader

    return DiffusersLoader().run("tiny-sd1")


def test_the_window_is_judged_on_the_steps_sigma_discrete(sd1_with_controlnet):
    """Steps at fractional timesteps: 700.3 lies above the start's sigma (timestep 700.2), 299.8 below
    the end's (299.9), though their nearest whole timesteps (700, 300) lie inside."""
    ts = [900.0, 700.3, 650.0, 500.0, 299.8, 100.0]
    start, end = 1 - 700.2 / 999, 1 - 299.9 / 999
    hi, lo = _discrete_sigma(700.2), _discrete_sigma(299.9)
    sigmas = [_discrete_sigma(t) for t in ts]
    live = [t for t, s in zip(ts, sigmas) if lo <= s <= hi]
    assert live == [650.0, 500.0]
    assert _run_window(sd1_with_controlnet, sigmas, start, end) == live  # called at their whole timesteps


def test_the_window_is_judged_on_the_steps_sigma_flow(sd1_with_controlnet):
    """ModelSamplingSD3 (shift 3, timestep = 1000 sigma): from percent_to_sigma(0.2) = 0.923 down to
    percent_to_sigma(0.7) = 0.5625; the step at 0.5 is outside though the shifted sigma of its
    timestep (0.75) is not."""
    from genloom.nodes.model_sampling import ModelSamplingSD3

    (flow,) = ModelSamplingSD3().run(sd1_with_controlnet[0], 3.0)
    sigmas = [0.95, 0.85, 0.7, 0.5, 0.3, 0.1]
    hi, lo = _flow_sigma(0.8), _flow_sigma(0.3)
    live = [s for s in sigmas if lo <= s <= hi]
    assert live == [0.85, 0.7]
    seen = _run_window((flow, sd1_with_controlnet[1]), sigmas, 0.2, 0.7)
    assert seen == pytest.approx([s * 1000 for s in live], abs=1e-3)
