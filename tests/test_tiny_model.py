"""The tiny model genloom trains and ships: the training script makes a standard diffusers folder, and the
shipped one loads offline and draws what it is asked."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import check_adherence  # noqa: E402
import shapes  # noqa: E402
import train_tiny_model  # noqa: E402

SHIPPED = REPO / "models" / "diffusers" / "genloom-tiny"
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    report = train_tiny_model.main(["--quick", "--out", str(out), "--seed", "3"])
    return out, report


def test_quick_training_writes_a_standard_diffusers_folder(quick_model):
    out, report = quick_model
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder"):
        assert list((out / part).glob("*.safetensors")), part
    assert report["seconds"]["total"] < 60


def test_quick_model_loads_offline_and_samples(quick_model):
    from diffusers import StableDiffusionPipeline

    out, _ = quick_model
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.vae.config.latent_channels == 4
    size = 8 * pipe.vae_scale_factor  # the 8x8 latent of a ComfyUI 64x64 EmptyLatentImage
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a blue background", num_inference_steps=2, height=size, width=size,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, size, size, 3) and np.isfinite(image).all()


def test_tokenizer_is_a_clip_tokenizer_with_one_token_per_caption_word(quick_model):
    from transformers import CLIPTokenizer

    out, _ = quick_model
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    assert 512 < len(tok) < 1000
    caption = "an orange star on a purple background"
    ids = tok(caption).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == len(caption.split()) + 2
    assert tok.unk_token_id not in tok("A Zebra? ünïcode 123").input_ids[1:-1]  # every byte has a token


def test_same_seed_same_weights(quick_model, tmp_path):
    from safetensors.torch import load_file

    out, _ = quick_model
    train_tiny_model.main(["--quick", "--out", str(tmp_path / "again"), "--seed", "3"])
    a = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "again" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- the shipped model --------------------------------------------------------------------------

def test_shipped_model_is_small_and_complete():
    assert (SHIPPED / "model_index.json").is_file(), "models/diffusers/genloom-tiny is missing: run tools/train_tiny_model.py"
    megabytes = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) / 1e6
    assert megabytes <= 9.5
    sched = json.loads((SHIPPED / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] != "PNDMScheduler"


def test_shipped_vae_latents_follow_sd1_scaling():
    """A picture is a [4, 8, 8] latent whose std is ~1 after SD1.x's 0.18215, as loaders assume."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(SHIPPED / "vae", local_files_only=True)
    images, samples = shapes.dataset(24, seed=99, size=train_tiny_model.IMAGE_SIZE)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
    assert z.shape == (24, 4, 8, 8)
    assert 0.8 < float((z * vae.config.scaling_factor).std()) < 1.25
    pics = ((rec.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
    acc = shapes.score(pics, samples)
    assert acc["colour"] == 1.0 and acc["background"] == 1.0 and acc["shape"] >= 0.9


def test_shipped_model_follows_prompts():
    result = check_adherence.run("diffusers", n=12, model=SHIPPED)
    acc = result["accuracy"]
    assert acc["colour"] >= 0.8 and acc["background"] >= 0.8 and acc["shape"] >= 0.75, acc
    # Different prompts must give different pictures: a model that ignores text cannot pass by luck.
    assert len({img.tobytes() for img in result["images"]}) == 12


TXT2IMG = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "genloom-tiny.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 0, "steps": 20, "cfg": check_adherence.DEFAULTS["cfg"], "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["8", 0]}},
}


def test_engine_with_the_shipped_checkpoint_draws_what_diffusers_draws(tmp_path):
    """The single-file checkpoint through genloom's nodes gives the pictures the diffusers folder gives."""
    pytest.importorskip("genloom.engine.api")
    if not (REPO / "models" / "checkpoints" / "genloom-tiny.safetensors").is_file():
        pytest.fail("models/checkpoints/genloom-tiny.safetensors is missing: run tools/train_tiny_model.py")
    wf = tmp_path / "txt2img.json"
    wf.write_text(json.dumps(TXT2IMG))
    via_engine = check_adherence.run("genloom", n=4, workflow=wf)
    via_diffusers = check_adherence.run("diffusers", n=4, model=SHIPPED, workflow=wf)
    for a, b in zip(via_engine["images"], via_diffusers["images"]):
        assert a.shape == b.shape == (32, 32, 3)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 3
