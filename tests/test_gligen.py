"""GLIGEN through genloom's nodes on a tiny SD1 model: GLIGENLoader reads ComfyUI's file layout
(position_net.* and each transformer block's fuser under its LDM block name, apart from the UNet),
GLIGENTextBoxApply adds text boxes, and KSampler gives diffusers' StableDiffusionGLIGENPipeline's
pixels on the same weights (its UNet built with attention_type="gated"). With CFG, ComfyUI hands
the positive's boxes to a negative that has none (diffusers masks them out instead): checked
against StableDiffusionPipeline on the gated UNet given those boxes for both halves."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

PROMPT = "a photo of a cat on the grass"
SEED, STEPS = 42, 4
BOXES = [("a red circle", 32, 24, 8, 16), ("a blue square", 16, 40, 40, 0)]  # text, width, height, x, y (px)
LATENT = 8  # EmptyLatentImage 64 px -> 8x8 latent cells (the tiny VAE then decodes 16 px)
FUSERS = {  # diffusers transformer block -> ComfyUI's LDM block of the same place (tiny SD1 layout)
    "down_blocks.0.attentions.0": "input_blocks.1.1", "down_blocks.0.attentions.1": "input_blocks.2.1",
    "mid_block.attentions.0": "middle_block.1", "up_blocks.1.attentions.0": "output_blocks.3.1",
    "up_blocks.1.attentions.1": "output_blocks.4.1", "up_blocks.1.attentions.2": "output_blocks.5.1"}


def _unet_config(**extra):
    return dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
                norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **extra)


@pytest.fixture(scope="module")
def gligen_parts(tmp_path_factory):
    import tiny
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from genloom.diffusion.models.single_file import save_single_file

    torch.set_num_threads(1)  # tiny tensors: a second thread only adds contention (as conftest's tiny_models)
    root = tmp_path_factory.mktemp("gligen")
    torch.manual_seed(51)
    tok = tiny.tiny_tokenizer(root / "_tok")
    text = CLIPTextModel(tiny._text_config(len(tok), "quick_gelu")).eval()
    gated = UNet2DConditionModel(**_unet_config(attention_type="gated")).eval()
    with torch.no_grad():  # GLIGEN's gates start closed (tanh(0)): open them, make the boxes count
        for name, p in gated.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(0.8)
            elif "null_" in name:
                p.normal_()
            elif name.endswith(("fuser.attn.to_out.0.weight", "fuser.ff.net.2.weight", "position_net.linears.4.weight")):
                p.mul_(4.0)
    plain = UNet2DConditionModel(**_unet_config()).eval()
    base = {k: v for k, v in gated.state_dict().items() if ".fuser." not in k and not k.startswith("position_net.")}
    plain.load_state_dict(base, strict=True)
    pipe = StableDiffusionPipeline(vae=tiny._vae(), text_encoder=text, tokenizer=tok, unet=plain,
                                   scheduler=tiny._scheduler("EulerDiscreteScheduler", "epsilon"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = root / "diffusers" / "tiny-sd1-base"
    pipe.save_pretrained(str(folder))
    (root / "checkpoints").mkdir()
    save_single_file(folder, root / "checkpoints" / "tiny-sd1-base.safetensors")

    layout = {}
    for key, value in gated.state_dict().items():
        if key.startswith("position_net."):
            layout[key] = value
        elif ".fuser." in key:
            block, rest = key.split(".transformer_blocks.")
            layout[f"{FUSERS[block]}.transformer_blocks.{rest}"] = value
    assert len({k.split(".fuser.")[0] for k in layout if ".fuser." in k}) == len(FUSERS)
    (root / "gligen").mkdir()
    save_file({k: v.contiguous() for k, v in layout.items()}, str(root / "gligen" / "gligen-tiny.safetensors"))
    save_file({k: v.contiguous() for k, v in layout.items() if ".fuser." not in k},
              str(root / "gligen" / "no-fusers.safetensors"))
    tiny._rm(root / "_tok")
    return {"root": root, "gated": gated, "pipe": pipe}


@pytest.fixture
def ctx(gligen_parts, tmp_path):
    import tiny

    with tiny.cpu_context([gligen_parts["root"]], tmp_path):
        yield gligen_parts


def _genloom(cfg: float, boxes=BOXES, negative_boxes=False):
    from genloom.nodes.conditioning import CLIPTextEncode
    from genloom.nodes.gligen import GLIGENLoader, GLIGENTextBoxApply
    from genloom.nodes.ksampler import KSampler
    from genloom.nodes.latent import EmptyLatentImage, VAEDecode
    from genloom.nodes.loaders import CheckpointLoaderSimple

    model, clip, vae = CheckpointLoaderSimple().run("tiny-sd1-base.safetensors")
    (gligen,) = GLIGENLoader().run("gligen-tiny.safetensors")
    (pos,) = CLIPTextEncode().run(PROMPT, clip)
    (neg,) = CLIPTextEncode().run("", clip)
    for text, width, height, x, y in boxes:
        (pos,) = GLIGENTextBoxApply().run(pos, clip, gligen, text, width, height, x, y)
    (latent,) = EmptyLatentImage().run(8 * LATENT, 8 * LATENT, 1)
    (samples,) = KSampler().run(model, SEED, STEPS, cfg, "euler", "normal", pos, neg, latent, 1.0)
    return VAEDecode().run(samples, vae)[0], pos


def _fractions(width, height, x, y):
    """A box in fractions of the latent, from its pixels in latent cells of 8 (ComfyUI's // 8)."""
    x1, y1 = (x // 8) / LATENT, (y // 8) / LATENT
    return [x1, y1, x1 + (width // 8) / LATENT, y1 + (height // 8) / LATENT]


def _start_noise(pipe):
    noise = torch.randn((1, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(SEED))
    sigma_max = float(pipe.scheduler.sigmas.max())  # ComfyUI's start: noise * sqrt(1 + sigma_max^2)
    return noise * (1 + sigma_max ** 2) ** 0.5 / float(pipe.scheduler.init_noise_sigma)


def _euler(pipe):
    import diffusers

    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_gligen_boxes_sample_like_the_gligen_pipeline(ctx):
    import diffusers

    ours, pos = _genloom(1.0)
    kind, _model, params = pos[0][1]["gligen"]
    assert kind == "position" and [p[1:] for p in params] == [(3, 4, 2, 1), (5, 2, 0, 5)]  # h, w, y, x cells

    p = ctx["pipe"]
    pipe = _euler(diffusers.StableDiffusionGLIGENPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=ctx["gated"], scheduler=p.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    theirs = pipe(PROMPT, height=16, width=16, num_inference_steps=STEPS, guidance_scale=1.0,
                  gligen_phrases=[b[0] for b in BOXES], gligen_boxes=[_fractions(*b[1:]) for b in BOXES],
                  gligen_scheduled_sampling_beta=1.0, latents=_start_noise(pipe), output_type="pt").images
    theirs = theirs.permute(0, 2, 3, 1)
    assert ours.shape == theirs.shape == (1, 16, 16, 3) and float(theirs.std()) > 0.01
    assert float((ours - theirs).abs().max()) < 1e-4
    plain, _pos = _genloom(1.0, boxes=[])
    assert float((plain - ours).abs().max()) > 1e-3  # the boxes mattered


def test_with_cfg_the_negative_gets_the_positive_boxes(ctx):
    import diffusers

    from genloom.diffusion.gligen_boxes import share_with_negative

    ours, pos = _genloom(4.0)
    neg = [[torch.zeros(1, 77, 32), {"pooled_output": torch.zeros(1, 32)}]]
    (shared,) = share_with_negative(pos, neg)
    assert shared[1]["gligen"] is pos[0][1]["gligen"] and "gligen" not in neg[0][1]
    own = [[neg[0][0], {"gligen": ("position", None, [])}]]
    assert share_with_negative(pos, own) is own  # a negative with boxes of its own keeps them

    p = _euler(ctx["pipe"])
    pipe = _euler(diffusers.StableDiffusionPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=ctx["gated"], scheduler=p.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    with torch.no_grad():
        ids = pipe.tokenizer([b[0] for b in BOXES], padding=True, return_tensors="pt")
        phrases = pipe.text_encoder(**ids).pooler_output
    boxes, texts, masks = torch.zeros(2, 30, 4), torch.zeros(2, 30, 32), torch.zeros(2, 30)
    boxes[:, :2] = torch.tensor([_fractions(*b[1:]) for b in BOXES])
    texts[:, :2], masks[:, :2] = phrases, 1.0  # uncond and cond halves alike
    theirs = pipe(PROMPT, negative_prompt="", height=16, width=16, num_inference_steps=STEPS, guidance_scale=4.0,
                  latents=_start_noise(pipe), output_type="pt",
                  cross_attention_kwargs={"gligen": {"boxes": boxes, "positive_embeddings": texts, "masks": masks}})
    theirs = theirs.images.permute(0, 2, 3, 1)
    assert float((ours - theirs).abs().max()) < 1e-4


def test_gligen_errors_name_the_input(ctx, tiny_models, tmp_path):
    import tiny
    from diffusers import UNet2DConditionModel

    from genloom.diffusion.errors import SamplingError
    from genloom.diffusion.gligen_boxes import fused
    from genloom.engine.errors import ModelLoadError, NodeInputError
    from genloom.nodes.gligen import GLIGENLoader, GLIGENTextBoxApply
    from genloom.nodes.loaders import CheckpointLoaderSimple

    with pytest.raises(ModelLoadError) as err:
        GLIGENLoader().run("no-fusers.safetensors")
    assert err.value.input_name == "gligen_name" and "not a GLIGEN model" in str(err.value)
    (gligen,) = GLIGENLoader().run("gligen-tiny.safetensors")
    assert gligen.fusers == len(FUSERS) and gligen.key_dim == 32

    _m, clip, _v = CheckpointLoaderSimple().run("tiny-sd1-base.safetensors")
    cond = [[torch.zeros(1, 77, 32), {}]]
    for _ in range(30):
        (cond,) = GLIGENTextBoxApply().run(cond, clip, gligen, "a cat", 8, 8, 0, 0)
    with pytest.raises(NodeInputError) as err:
        GLIGENTextBoxApply().run(cond, clip, gligen, "a cat", 8, 8, 0, 0)
    assert err.value.input_name == "conditioning_to" and "at most 30" in str(err.value)

    with tiny.cpu_context([tiny_models], tmp_path):
        _m, xl_clip, _v = CheckpointLoaderSimple().run("tiny-sdxl.safetensors")
    with pytest.raises(NodeInputError) as err:
        GLIGENTextBoxApply().run(cond[:1], xl_clip, gligen, "a cat", 8, 8, 0, 0)
    assert err.value.input_name == "clip" and "32-wide pooled text" in str(err.value)

    other = UNet2DConditionModel(**{**_unet_config(), "layers_per_block": 1})  # 4 transformer blocks, not 6
    with pytest.raises(SamplingError, match="6 fusers but the model has 4 transformer blocks"):
        with fused(other, cond[0][1]["gligen"], torch.zeros(1, 4, 8, 8)):
            pass
