"""ControlNet files in every layout load to the same weights; the apply nodes chain Controls as
ComfyUI does; Canny finds the edges of a drawn square; model files linked into a models folder load
while request names stay confined; the example workflow runs."""

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import control_tiny as ct  # noqa: E402

from genloom.engine.errors import NodeInputError  # noqa: E402


@pytest.fixture(scope="module")
def nets(tiny_models):
    return {kind: ct.build_controlnet(tiny_models / "diffusers" / f"tiny-{kind}" / "unet") for kind in ("sd1", "sdxl")}


@pytest.fixture
def control_dir(tmp_folders):
    folder = tmp_folders.folders.models_dirs[0] / "controlnet"
    folder.mkdir()
    return folder


def _same(module, ref) -> None:
    got, want = module.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


def _load(name):
    from genloom.nodes.controlnet import ControlNetLoader

    return ControlNetLoader().run(name)[0]


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_controlnet_layouts_load_to_the_same_weights(nets, control_dir, kind):
    net = nets[kind]
    ct.save_diffusers_folder(net, control_dir / "folder")
    ct.save_controlnet_original(net, control_dir / "original.safetensors")
    ct.save_controlnet_original(net, control_dir / "bare.safetensors", prefix="")
    # A diffusers-keyed file on its own (no config beside it): its configuration from the metadata.
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(control_dir / "lone.safetensors"),
              metadata={"genloom.configs": json.dumps({"controlnet": dict(net.config)})})
    for name in ("folder/diffusion_pytorch_model.safetensors", "original.safetensors", "bare.safetensors",
                 "lone.safetensors"):
        control = _load(name)
        assert (control.kind, control.family) == ("controlnet", "sdxl" if kind == "sdxl" else "sd")
        _same(control.module, net)
        assert control.module.config.attention_head_dim == net.config.attention_head_dim


def test_original_layout_agrees_with_diffusers_converter(tiny_models, tmp_path):
    """diffusers' own cldm converter reads the test's original-layout file as genloom does (its
    converter knows only the released 4-level hint encoder, so this net has one)."""
    from diffusers import ControlNetModel

    from genloom.diffusion.models.control_files import load_control

    net = ct.build_controlnet(tiny_models / "diffusers" / "tiny-sd1" / "unet", hint_channels=(4, 4, 8, 8))
    ct.save_diffusers_folder(net, tmp_path / "cfg")
    path = ct.save_controlnet_original(net, tmp_path / "cn.safetensors", configs=False)
    theirs = ControlNetModel.from_single_file(str(path), config=str(tmp_path / "cfg"), local_files_only=True)
    ours, kind, _family = load_control(path)
    _same(theirs, net)
    _same(ours, net)


def test_diff_controlnet_adds_the_base_model(nets, control_dir, tiny_models):
    from diffusers import UNet2DConditionModel

    from genloom.nodes.controlnet import DiffControlNetLoader
    from genloom.nodes.loaders import DiffusersLoader

    base = UNet2DConditionModel.from_pretrained(str(tiny_models / "diffusers" / "tiny-sd1" / "unet"),
                                                local_files_only=True)
    ct.save_controlnet_original(nets["sd1"], control_dir / "diff.safetensors", base_unet=base)
    model = DiffusersLoader().run("tiny-sd1")[0]
    control = DiffControlNetLoader().run(model, "diff.safetensors")[0]
    got, want = control.module.state_dict(), nets["sd1"].state_dict()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-6
    with pytest.raises(ValueError, match="input 'control_net_name'.*DiffControlNetLoader"):
        _load("diff.safetensors")


def test_t2i_adapter_layouts_load_to_the_same_weights(control_dir, tmp_folders):
    from safetensors.torch import save_file

    adapter = ct.build_adapter()
    ct.save_diffusers_folder(adapter, control_dir / "adapter")
    ct.save_adapter_original(adapter, control_dir / "original.pth")
    original = torch.load(str(control_dir / "original.pth"), weights_only=True)
    save_file(original, str(control_dir / "original.safetensors"))
    t2i = tmp_folders.folders.models_dirs[0] / "t2i_adapter"  # ComfyUI's second folder for them
    t2i.mkdir()
    ct.save_adapter_original(adapter, t2i / "in-t2i-folder.pth")
    for name in ("adapter/diffusion_pytorch_model.safetensors", "original.pth", "original.safetensors",
                 "in-t2i-folder.pth"):
        control = _load(name)
        assert (control.kind, control.family) == ("t2i_adapter", "sd")
        _same(control.module, adapter)
    xl = ct.build_adapter(xl=True)
    ct.save_diffusers_folder(xl, control_dir / "adapter-xl")
    control = _load("adapter-xl/diffusion_pytorch_model.safetensors")
    assert (control.family, control.module.config.adapter_type) == ("sdxl", "full_adapter_xl")
    _same(control.module, xl)


def _full_size(kind: str):
    """A full-size ControlNetModel of the released SD1.5 / SD2 / SDXL shape, on the meta device."""
    from diffusers import ControlNetModel

    from genloom.diffusion.models.loading import CONFIGS

    unet = json.loads((CONFIGS / kind / "unet" / "config.json").read_text())
    keep = set(ControlNetModel.__init__.__code__.co_varnames)
    config = {k: v for k, v in unet.items() if k in keep and k not in ("in_channels",)}
    with torch.device("meta"):
        return ControlNetModel(**config)


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_configuration_from_full_size_weights(kind):
    """Without a config, a released-size file's shapes give the released configuration (the counts,
    widths, attention heads and SDXL's embedding): shapes only, nothing is allocated."""
    from diffusers import ControlNetModel

    from genloom.diffusion.models.control_files import controlnet_config_diffusers, controlnet_config_original

    net = _full_size(kind)
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    names = ct._cldm_names(net)
    original = {names[k]: s for k, s in shapes.items()}
    for cfg in (controlnet_config_original(original), controlnet_config_diffusers(shapes)):
        with torch.device("meta"):
            again = ControlNetModel.from_config(cfg)
        assert {k: list(v.shape) for k, v in again.state_dict().items()} == shapes
        for field in ("attention_head_dim", "cross_attention_dim", "use_linear_projection", "down_block_types",
                      "transformer_layers_per_block", "addition_time_embed_dim", "layers_per_block",
                      "projection_class_embeddings_input_dim", "conditioning_embedding_out_channels"):
            want, got = net.config.get(field), again.config.get(field)
            norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
            if field == "transformer_layers_per_block" and kind != "sdxl":
                continue  # one layer everywhere: diffusers keeps the int
            assert norm(got) == norm(want), field


def test_adapter_configuration_from_released_shapes():
    from diffusers import T2IAdapter

    from genloom.diffusion.models.control_files import adapter_config

    for kind, factor in (("full_adapter", 8), ("full_adapter_xl", 16)):
        with torch.device("meta"):
            adapter = T2IAdapter(channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=factor,
                                 adapter_type=kind)
        cfg = adapter_config({k: list(v.shape) for k, v in adapter.state_dict().items()})
        assert cfg == {"in_channels": 3, "downscale_factor": factor, "channels": [320, 640, 1280, 1280],
                       "num_res_blocks": 2, "adapter_type": kind}


def test_broken_or_foreign_files_are_refused_with_what_they_are(control_dir):
    """Damaged control-LoRA and Union files, and a file that is no ControlNet, say which they are."""
    from safetensors.torch import save_file

    save_file({"lora_controlnet": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(1)},
              str(control_dir / "lora.safetensors"))
    save_file({"task_embedding": torch.zeros(1), "input_hint_block.0.weight": torch.zeros(1)},
              str(control_dir / "union.safetensors"))
    save_file({"x": torch.zeros(1)}, str(control_dir / "other.safetensors"))
    for name, what in (("lora", "control-LoRA"), ("union", "ControlNet-Union"), ("other", "not a ControlNet")):
        with pytest.raises(ValueError, match=f"input 'control_net_name'.*{what}"):
            _load(f"{name}.safetensors")


def test_a_controlnet_for_another_family_says_so(nets, control_dir, tmp_folders):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.controlnet import ControlNetApplyAdvanced
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage
    from genloom.nodes.loaders import DiffusersLoader

    ct.save_diffusers_folder(nets["sdxl"], control_dir / "xl")
    model, clip, _vae = DiffusersLoader().run("tiny-sd1")
    (cond,) = CLIPTextEncode().run("a cat", clip)
    pos, neg = ControlNetApplyAdvanced().run(cond, cond, _load("xl/diffusion_pytorch_model.safetensors"),
                                             torch.rand(1, 16, 16, 3), 1.0, 0.0, 1.0)
    (latent,) = EmptyLatentImage().run(64, 64, 1)
    with pytest.raises(ValueError, match="does not fit this model.*80-wide.*32"):
        KSampler().run(model, 0, 1, 2.0, "euler", "normal", pos, neg, latent, 1.0)


# -- the apply nodes ---------------------------------------------------------------------------

def _conds():
    pos = [[torch.zeros(1, 77, 32), {"pooled_output": torch.zeros(1, 32)}], [torch.ones(1, 77, 32), {}]]
    neg = [[torch.zeros(1, 77, 32), {}]]
    return pos, neg


def test_apply_advanced_shares_one_control_and_stacks():
    from genloom.diffusion.controlnet import ControlModel
    from genloom.nodes.controlnet import ControlNetApply, ControlNetApplyAdvanced

    first, second = ControlModel(None, "controlnet", name="a"), ControlModel(None, "controlnet", name="b")
    image = torch.rand(1, 16, 16, 3)
    pos, neg = _conds()
    p1, n1 = ControlNetApplyAdvanced().run(pos, neg, first, image, 0.5, 0.1, 0.9)
    controls = {id(e[1]["control"]) for e in p1 + n1}
    assert len(controls) == 1  # positive and negative share it: they still batch together
    c = p1[0][1]["control"]
    assert (c.model, c.strength, c.percent, c.previous) == (first, 0.5, (0.1, 0.9), None)
    assert torch.equal(c.hint, image.movedim(-1, 1))
    assert p1[0][1]["pooled_output"] is pos[0][1]["pooled_output"] and "control" not in pos[0][1]
    p2, n2 = ControlNetApplyAdvanced().run(p1, n1, second, image, 1.0, 0.0, 1.0)
    assert [x.model.name for x in p2[0][1]["control"].chain()] == ["a", "b"]
    assert p2[0][1]["control"] is n2[0][1]["control"]
    assert ControlNetApplyAdvanced().run(pos, neg, first, image, 0.0, 0.0, 1.0) == (pos, neg)
    (only,) = ControlNetApply().run(neg, first, image, 0.8)
    assert only[0][1]["control"].percent == (0.0, 1.0) and only[0][1]["control_apply_to_uncond"] is False


def test_set_union_type_returns_a_copy():
    from genloom.diffusion.controlnet import ControlModel
    from genloom.nodes.controlnet import SetUnionControlNetType

    net = ControlModel(None, "controlnet")
    (depth,) = SetUnionControlNetType().run(net, "depth")
    (auto,) = SetUnionControlNetType().run(depth, "auto")
    assert dict(depth.extra) == {"control_type": [1]} and dict(auto.extra) == {"control_type": []}
    assert net.extra == () and depth.module is net.module


# -- Canny ---------------------------------------------------------------------------------------

def test_canny_finds_the_outline_of_a_square(tmp_folders):
    """A grey square (level c) on black: the 5x5 Gaussian (sigma 1) blurs the step; Sobel across a
    straight side is 4 (the 1-2-1 smoothing along it) times the blurred profile's central difference,
    steepest at the step; non-maximum suppression keeps a ring one pixel wide on the border, and only
    where that magnitude reaches the thresholds."""
    import math

    from genloom.nodes.controlnet import Canny

    c = 0.3
    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = c
    g = [math.exp(-x * x / 2) for x in (-2, -1, 0, 1, 2)]
    g = [v / sum(g) for v in g]
    blurred = [c * sum(g[k + 2] for k in (-2, -1, 0, 1, 2) if i - k >= 8) for i in range(12)]
    peak = 4 * max(blurred[i + 1] - blurred[i - 1] for i in range(1, 11))
    (edges,) = Canny().run(image, peak - 0.06, peak - 0.03)
    assert edges.shape == (1, 32, 32, 3) and torch.equal(edges[..., 0], edges[..., 2])
    e = edges[0, :, :, 0]
    assert set(e.unique().tolist()) <= {0.0, 1.0}
    border = torch.zeros(32, 32, dtype=torch.bool)
    border[7:25, 7:25] = True
    border[9:23, 9:23] = False  # the two pixel rows either side of the step
    assert e[~border].sum() == 0  # nothing far from the step
    for side in (e[8:24, 7:9].sum(1), e[8:24, 23:25].sum(1), e[7:9, 8:24].sum(0), e[23:25, 8:24].sum(0)):
        assert (side[2:-2] == 1).all()  # exactly one edge pixel across each straight side
    (none,) = Canny().run(image, peak + 0.01, peak + 0.03)
    assert none.sum() == 0
    with pytest.raises(NodeInputError, match="low_threshold"):
        Canny().run(image, 0.9, 0.2)


# -- model files linked into the models folder -----------------------------------------------------

def test_linked_model_files_load_and_request_names_stay_confined(tmp_folders, tiny_models, tmp_path):
    from genloom.engine.folders import UnsafePath
    from genloom.nodes.loaders import CheckpointLoaderSimple

    folders = tmp_folders.folders
    elsewhere = tmp_path / "other_disk"
    (elsewhere / "sub").mkdir(parents=True)
    real = tiny_models / "checkpoints" / "tiny-sd1.safetensors"
    (elsewhere / "sub" / "deep.safetensors").symlink_to(real)
    own = folders.models_dirs[0] / "checkpoints"
    os.symlink(real, own / "linked.safetensors")
    os.symlink(elsewhere, own / "linked_dir")
    names = folders.list_models("checkpoints")
    assert {"linked.safetensors", "linked_dir/sub/deep.safetensors"} <= set(names)
    for name in ("linked.safetensors", "linked_dir/sub/deep.safetensors"):
        model, clip, vae = CheckpointLoaderSimple().run(name)
        assert model is not None and clip is not None and vae is not None
        assert folders.model_path("checkpoints", name) == own.resolve() / name  # the name the user sees
    for bad in ("../checkpoints/tiny-sd1.safetensors", "linked_dir/../linked.safetensors", str(real)):
        with pytest.raises(UnsafePath):
            folders.model_path("checkpoints", bad)
    with pytest.raises(ValueError, match="not allowed"):
        CheckpointLoaderSimple().run("linked_dir/../../x.safetensors")
    # Request paths outside the model folders (inputs, outputs) still refuse links that lead out.
    from genloom.engine.folders import safe_join

    (tmp_path / "inputs").mkdir()
    os.symlink(real, tmp_path / "inputs" / "out.png")
    with pytest.raises(UnsafePath, match="leaves its folder"):
        safe_join(tmp_path / "inputs", "out.png")


def test_linked_folder_loops_are_listed_once(tmp_folders, tmp_path):
    own = tmp_folders.folders.models_dirs[0] / "loras"
    (own / "a").mkdir()
    (own / "a" / "x.safetensors").write_bytes(b"")
    os.symlink(own, own / "a" / "loop")  # a link back up: listing must end
    assert "a/x.safetensors" in tmp_folders.folders.list_models("loras")


# -- the example workflow ----------------------------------------------------------------------------

def test_example_workflow_validates_and_the_controlnet_steers_it(tmp_path):
    import numpy as np
    from PIL import Image

    import genloom
    from genloom.engine.folders import default_models_dirs

    repo = Path(__file__).resolve().parents[2]
    ct.write_example_controlnet(tmp_path / "models")
    engine = genloom.Engine(models_dirs=[tmp_path / "models", *default_models_dirs()],
                            input_dir=repo / "workflows" / "input", output_dir=tmp_path / "out", device="cpu")
    workflow = json.loads((repo / "workflows" / "controlnet_canny.json").read_text())
    engine.validate(workflow)
    workflow["graph"]["3"]["inputs"]["steps"] = 4

    def picture(strength):
        workflow["graph"]["13"]["inputs"]["strength"] = strength
        saved = engine.run(workflow).outputs["9"]["images"][0]
        return np.asarray(Image.open(tmp_path / "out" / saved["subfolder"] / saved["filename"]), dtype=float)

    steered, plain = picture(1.0), picture(0.0)
    assert steered.shape == plain.shape == (32, 32, 3)
    assert np.abs(steered - plain).max() > 10
