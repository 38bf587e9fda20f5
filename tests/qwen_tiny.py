"""Tiny stand-ins for the Qwen language-model text encoders (Qwen2.5-VL, Qwen3), their tokenizer, and the
Qwen-Image / Z-Image transformers. The encoders are saved as users have them: one .safetensors file in
transformers' original key names (`model.layers.*`, `visual.*`), the tokenizer in a `qwen25_tokenizer/`
folder next to it."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
# the tiny tokenizer's ids of the vision tokens (its specials come first, in SPECIALS' order; no video token)
TOKEN_IDS = {"vision_start_token_id": 3, "vision_end_token_id": 4, "image_token_id": 5, "video_token_id": 415}
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
          "relationships of the objects and background:", "system user assistant", "a red circle on a blue "
          "square", "the cat sits on the mat", "a photo of a dog running in the park with green trees"]


def write_tokenizer(folder: Path) -> Path:
    """A byte-level BPE of ~400 tokens with Qwen's special tokens and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "unk_token": None, "chat_template": CHAT, "model_max_length": 32768}))
    return folder


def tiny_qwen25_vl(seed: int, width: int = 64):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=416, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=width // 4,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=width,
                           patch_size=14, fullatt_block_indexes=[0]),
        **TOKEN_IDS)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwen3(seed: int, width: int = 64):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=416, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                        head_dim=16, tie_word_embeddings=True)).eval()


def save_llm(module, path: Path, lm_head: bool = True) -> Path:
    """The original key names (`model.language_model.` -> `model.`, `model.visual.` -> `visual.`), the
    config in the metadata (a tiny model's heads cannot be read from its shapes)."""
    from safetensors.torch import save_file

    out = {}
    for key, value in module.state_dict().items():
        if key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model."):]
        elif key.startswith("model.visual."):
            key = key[len("model."):]
        out[key] = value.detach().clone().contiguous()
    if not lm_head:
        out.pop("lm_head.weight", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"genloom.config": json.dumps(module.config.to_dict())})
    return path


def qwen_image_transformer(seed: int, text_width: int = 64, depth: int = 2, heads: int = 2, **variant):
    """`variant`: diffusers' zero_cond_t=True (Qwen-Image-Edit-2511), use_additional_t_cond=True and
    use_layer3d_rope=True (Qwen-Image-Layered)."""
    import torch
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=depth,
                                       attention_head_dim=128, num_attention_heads=heads,
                                       joint_attention_dim=text_width, axes_dims_rope=(16, 56, 56), **variant).eval()


def z_image_transformer(seed: int, text_width: int = 64):
    import torch
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    return ZImageTransformer2DModel(in_channels=16, dim=256, n_layers=2, n_refiner_layers=1, n_heads=2,
                                    n_kv_heads=2, cap_feat_dim=text_width, axes_dims=[32, 48, 48],
                                    axes_lens=[64, 32, 32]).eval()


def qwen_models(root: Path, clip_name: str, seed: int = 2):
    """ComfyUI's model folders under `root` with the tiny Qwen2.5-VL encoder saved as `clip_name` and
    the tokenizer beside it; returns the encoder."""
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    encoder = tiny_qwen25_vl(seed)
    save_llm(encoder, root / "text_encoders" / clip_name)
    write_tokenizer(root / "text_encoders" / "qwen25_tokenizer")
    return encoder


def edit_picture(size: int = 1024):
    """A smooth picture with some noise (an RGB PIL image): what the edit tests show the models."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    smooth = np.stack([yy, xx, (yy + xx) / 2], -1) * 200 + rng.integers(0, 55, (size, size, 3))
    return Image.fromarray(smooth.astype(np.uint8))
