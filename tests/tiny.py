"""Tiny SD1-, SD2- and SDXL-shaped diffusers models with random weights, for tests.

Each builder writes a diffusers folder (the layout real models use) in a few hundred milliseconds;
`build_models_dir` also writes them as single-file checkpoints in ComfyUI's folder layout.
"""

from __future__ import annotations

import contextlib

import json
from pathlib import Path

WORDS = ["a", "photo", "of", "red", "blue", "green", "cat", "dog", "circle", "square", "on", "the",
         "background", "white", "black", "big", "small"]


def tiny_tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    """A CLIP BPE tokenizer: all bytes, a few whole words as merges, and CLIP's special tokens."""
    from transformers import CLIPTokenizer

    from genloom.diffusion.models.loading import TOKENIZER_FILES

    byte_vocab = json.loads((TOKENIZER_FILES / "vocab.json").read_text(encoding="utf-8"))
    base = list(byte_vocab)[:512]  # the 256 byte symbols and their end-of-word forms
    merges, vocab = [], list(base)
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if (parts[0], parts[1]) not in merges:
                merges.append((parts[0], parts[1]))
                vocab.append(merged)
            parts = [merged] + parts[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                        model_max_length=77)
    return tok


def _text_config(vocab: int, act: str, hidden: int = 32, layers: int = 3, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2,
                          num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                          hidden_act=act, projection_dim=projection, bos_token_id=0, eos_token_id=2,
                          pad_token_id=1)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=32)


def _scheduler(cls_name: str, prediction_type: str):
    import diffusers

    extra = {"clip_sample": False, "set_alpha_to_one": False} if cls_name == "DDIMScheduler" else {}
    return getattr(diffusers, cls_name)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        num_train_timesteps=1000, prediction_type=prediction_type,
                                        steps_offset=1, **extra)


def build_sd(folder: Path, kind: str = "sd1", seed: int = 0) -> Path:
    """SD1: quick_gelu CLIP, conv projections, 2 layers per block, epsilon.
    SD2: gelu encoder, linear projections, '!' padding, v-prediction, 1 layer per block."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    sd2 = kind == "sd2"
    tok = tiny_tokenizer(folder / "_tok", pad_token="!" if sd2 else "<|endoftext|>")
    text = CLIPTextModel(_text_config(len(tok), "gelu" if sd2 else "quick_gelu"))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1 if sd2 else 2, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=[2, 4] if sd2 else 4, use_linear_projection=sd2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    sched = _scheduler("DDIMScheduler", "v_prediction") if sd2 else _scheduler("EulerDiscreteScheduler", "epsilon")
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    _rm(folder / "_tok")
    return folder


def build_sdxl(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_tokenizer(folder / "_tok")
    tok2 = tiny_tokenizer(folder / "_tok2", pad_token="!")
    text = CLIPTextModel(_text_config(len(tok), "quick_gelu", hidden=32))
    text2 = CLIPTextModelWithProjection(_text_config(len(tok), "gelu", hidden=48, layers=4, projection=48))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=80, attention_head_dim=[2, 4], use_linear_projection=True,
        transformer_layers_per_block=[1, 2], addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 48,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=text, text_encoder_2=text2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet, scheduler=_scheduler("EulerDiscreteScheduler",
                                                                                       "epsilon"))
    pipe.save_pretrained(str(folder))
    for sub in ("_tok", "_tok2"):
        _rm(folder / sub)
    return folder


def _rm(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def build_models_dir(root: Path) -> dict:
    """ComfyUI layout under `root`: diffusers/tiny-<kind>/ and checkpoints/tiny-<kind>.safetensors."""
    from genloom.diffusion.models.single_file import save_single_file

    for sub in ("checkpoints", "loras", "vae", "diffusers"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = {}
    for kind in ("sd1", "sd2", "sdxl"):
        folder = root / "diffusers" / f"tiny-{kind}"
        build_sdxl(folder) if kind == "sdxl" else build_sd(folder, kind)
        save_single_file(folder, root / "checkpoints" / f"tiny-{kind}.safetensors")
        names[kind] = f"tiny-{kind}"
    return names


@contextlib.contextmanager
def cpu_context(models_dirs: list, tmp_path: Path):
    """A current CPU run context over `models_dirs`, with empty data folders under `tmp_path`."""
    from genloom.engine import context
    from genloom.engine.folders import Folders

    folders = Folders(models_dirs=list(models_dirs), input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                      temp_dir=tmp_path / "tmp")
    token = context.use(context.RunContext(device_choice="cpu", folders=folders))
    try:
        yield
    finally:
        context.reset(token)

