"""Tiny random Flux.2 parts saved as users have them: the transformer in BFL's layout (ComfyUI's prefix),
the VAE in BFL's layout with its batch-norm statistics, Mistral 3 (dev) with its tekken tokenizer inside
the file as `tekken_model`, Qwen3 (Klein) with Qwen's tokenizer folder next to it. The encoders are deep
enough for the layers Flux.2 reads (Mistral's 10/20/30, Qwen3's 9/18/27)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import qwen_tiny
from tiny_split import _noisy as noisy

TEXT_WIDTH = 32
# Mistral's special tokens by rank, as its tekken files list them (the ones the template uses included)
MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                    "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                    "[TOOL_CONTENT]"]
MERGES = [b" a", b" r", b"ed", b" red", b"ci", b"ti", b"on", b"at", b" the", b"th", b" th"]
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Mistral Small 3.1's chat template as it renders a system + user conversation
MISTRAL_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]"
                "{{ m['content'][0]['text'] }}[/SYSTEM_PROMPT]{% else %}[INST]{{ m['content'][0]['text'] }}[/INST]"
                "{% endif %}{% endfor %}")
# Qwen3's chat template as it renders one user turn with add_generation_prompt and enable_thinking=False
QWEN3_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
              "not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def transformer(seed: int = 0, guidance: bool = True, text_width: int = TEXT_WIDTH, scale: float = 0.05):
    from diffusers import Flux2Transformer2DModel

    return noisy(Flux2Transformer2DModel(in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=32,
                                         num_attention_heads=2, joint_attention_dim=3 * text_width,
                                         timestep_guidance_channels=64, axes_dims_rope=(8, 8, 8, 8),
                                         guidance_embeds=guidance), seed, scale)


def vae(seed: int = 3):
    import torch
    from diffusers import AutoencoderKLFlux2

    module = noisy(AutoencoderKLFlux2(block_out_channels=(32,) * 4, layers_per_block=1, latent_channels=32,
                                      norm_num_groups=32), seed, 0.05)
    gen = torch.Generator().manual_seed(seed + 1)
    module.bn.running_mean.copy_(torch.randn(128, generator=gen) * 0.3)
    module.bn.running_var.copy_(torch.rand(128, generator=gen) + 0.5)
    return module


def tekken_bytes() -> bytes:
    """A tekken.json: every byte a token, a few merges, Mistral's special tokens first."""
    tokens = [bytes([i]) for i in range(256)] + MERGES
    vocab = [{"rank": i, "token_bytes": base64.b64encode(t).decode(), "token_str": t.decode("latin-1")}
             for i, t in enumerate(tokens)]
    return json.dumps({"config": {"pattern": PATTERN, "num_vocab_tokens": len(tokens),
                                  "default_vocab_size": len(tokens) + len(MISTRAL_SPECIALS),
                                  "default_num_special_tokens": len(MISTRAL_SPECIALS), "version": "v7"},
                       "vocab": vocab,
                       "special_tokens": [{"rank": i, "token_str": s, "is_control": True}
                                          for i, s in enumerate(MISTRAL_SPECIALS)]}).encode()


def mistral(seed: int = 1, width: int = TEXT_WIDTH, layers: int = 31):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=256 + len(MERGES) + len(MISTRAL_SPECIALS), hidden_size=width,
                           intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, sliding_window=None, rms_norm_eps=1e-5,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000000.0})
    return MistralForCausalLM(config).eval()


def qwen3(seed: int = 2, width: int = TEXT_WIDTH, layers: int = 28):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=416, hidden_size=width, intermediate_size=2 * width,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        head_dim=16, tie_word_embeddings=True)).eval()


def save_mistral(module, path: Path) -> Path:
    """transformers' names without the output head, the tekken data as ComfyUI's file carries it."""
    import torch
    from safetensors.torch import save_file

    out = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items() if k != "lm_head.weight"}
    out["tekken_model"] = torch.frombuffer(bytearray(tekken_bytes()), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"genloom.config": json.dumps(module.config.to_dict())})
    return path


def build_image_parts(root: Path, names: dict, scale: float = 0.05) -> dict:
    """The two transformers (dev, Klein; weights of std `scale`) and the VAE under `root` by the file names
    in `names`: what runs on conditioning made by hand (edits, LoRAs), without the text encoders."""
    from genloom.diffusion.models import flux2_vae
    from genloom.diffusion.models.families import flux2

    for sub in ("diffusion_models", "text_encoders", "vae", "loras"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    parts = {"dev": transformer(0, True, scale=scale), "klein": transformer(4, False, scale=scale), "vae": vae(3)}
    flux2.save_original(parts["dev"], root / "diffusion_models" / names["dev"], "model.diffusion_model.")
    flux2.save_original(parts["klein"], root / "diffusion_models" / names["klein"], "model.diffusion_model.")
    flux2_vae.save_original(parts["vae"], root / "vae" / names["vae"])
    return parts


def build(root: Path, names: dict, scale: float = 0.05) -> dict:
    """Every part under `root` (ComfyUI's models folder layout) by the file names in `names`."""
    parts = {**build_image_parts(root, names, scale), "mistral": mistral(1), "qwen3": qwen3(2)}
    save_mistral(parts["mistral"], root / "text_encoders" / names["mistral"])
    qwen_tiny.save_llm(parts["qwen3"], root / "text_encoders" / names["qwen3"], lm_head=False)
    qwen_tiny.write_tokenizer(root / "text_encoders" / "qwen25_tokenizer")
    return parts

