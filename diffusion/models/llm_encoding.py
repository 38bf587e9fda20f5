"""Prompt encoding with the language-model text encoders (llm_encoders.py), as ComfyUI does it:

  qwen_image  the prompt in Qwen-Image's system template, the last layer's (normed) hidden states,
              the template's start dropped up to and including the second `<|im_start|>user\\n`
              (diffusers' QwenImagePipeline drops the same 34 tokens); a prompt starting with
              `<|im_start|>` is taken as already templated.
  z_image     `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`, the second-to-last
              layer's hidden states (not normed), every token kept (diffusers' ZImagePipeline).
Prompt weights are not parsed (ComfyUI's tokenizers for these encoders read `(text:1.2)` as plain text);
no pooled output. Token windows a node pack edited (weights included) are encoded by comfy_tokens_llm.py.
"""

from __future__ import annotations

from .owner import model_owner

QWEN_IMAGE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
                       "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                       "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
Z_IMAGE_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
# Flux.2 (flux2_text.py): dev's Mistral 3 and Klein's Qwen3 templates, the layers read, by ComfyUI's key
MISTRAL_TEMPLATE = ("[SYSTEM_PROMPT]You are an AI that reasons about image descriptions. You give structured "
                    "responses focusing on object relationships, object\nattribution and actions without "
                    "speculation.[/SYSTEM_PROMPT][INST]{}[/INST]")
KLEIN_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
KLEIN_TOKENS = 512
FLUX2_LAYERS = {"mistral3_24b": (10, 20, 30), "qwen3_4b": (9, 18, 27)}


def _hidden(clip, ids: list[int], layer: int):
    """Hidden states [1, T, D] float32 CPU of `layer` (-1: the last layer's, normed)."""
    import torch

    with torch.no_grad(), model_owner().memory.use(clip.text_encoders[0], getattr(clip, "device", None)) as enc:
        base = getattr(enc.model, "language_model", enc.model)
        tokens = torch.tensor([ids], device=next(enc.parameters()).device)
        out = base(input_ids=tokens, output_hidden_states=layer != -1)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return hidden.float().cpu()


def qwen_image_ids(tokenizer, text: str, template: str | None = None) -> list[int]:
    """Qwen-Image's token ids of a prompt: in its template (or a pack's `llama_template`) unless the
    prompt starts with `<|im_start|>`."""
    prompt = text if text.startswith("<|im_start|>") else (template or QWEN_IMAGE_TEMPLATE).format(text)
    return tokenizer(prompt, add_special_tokens=False).input_ids


def z_image_ids(tokenizer, text: str, template: str | None = None) -> list[int]:
    return tokenizer((template or Z_IMAGE_TEMPLATE).format(text), add_special_tokens=False).input_ids


def flux2_token_ids(clip, text: str, template: str | None = None) -> tuple[list[int], list[int]]:
    """(ids, attention mask) of one prompt in its Flux.2 encoder's template (or a pack's): dev `<s>` +
    the Mistral template, unpadded; Klein the Qwen3 template right-padded with `<|endoftext|>` to 512
    (masked)."""
    tokenizer = clip.tokenizers[0]
    if clip.roles[0] == "mistral3_24b":
        ids = [tokenizer.convert_tokens_to_ids("<s>")] + \
            tokenizer((template or MISTRAL_TEMPLATE).format(text), add_special_tokens=False).input_ids
        return ids, [1] * len(ids)
    ids = tokenizer((template or KLEIN_TEMPLATE).format(text), add_special_tokens=False).input_ids
    pad = KLEIN_TOKENS - len(ids)
    return ids + [tokenizer.convert_tokens_to_ids("<|endoftext|>")] * max(pad, 0), [1] * len(ids) + [0] * max(pad, 0)


def umt5_pairs(tokenizer, text: str) -> list[tuple[int, float]]:
    """Wan's UMT5 (token, weight) pairs of a prompt with ComfyUI's (text:1.2) weights (UMT5's tokenizer,
    unlike the LLMs', reads them), then the end token; no padding (umt5.py pads to 512)."""
    from genloom.diffusion.prompt_weights import parse_weights

    pairs = [(t, weight) for segment, weight in parse_weights(text)
             for t in tokenizer(segment, add_special_tokens=False, truncation=False).input_ids]
    return pairs + [(tokenizer.eos_token_id, 1.0)]


def _template_end(tokenizer, ids: list, missing: int = 0) -> int:
    """ComfyUI's cut: at the second `<|im_start|>`, past it and `user\\n` when those follow. Without any
    `<|im_start|>` (genloom's prompts always have one): every token kept, or with `missing=-1` ComfyUI's
    own answer for a pack's tokens (the last position, or past a leading `user\\n`)."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    at = [i for i, t in enumerate(ids) if t == start][:2]
    if not at and missing == 0:
        return 0
    end = at[-1] if at else missing
    user = tokenizer("user\n", add_special_tokens=False).input_ids
    if len(ids) > end + 1 + len(user) and ids[end + 1:end + 1 + len(user)] == user:
        end += 1 + len(user)
    return end


def encode_qwen_image(clip, texts: dict):
    tokenizer = clip.tokenizers[0]
    ids = qwen_image_ids(tokenizer, next(iter(texts.values())) or "")
    return _hidden(clip, ids, -1)[:, _template_end(tokenizer, ids):], None


def encode_z_image(clip, texts: dict):
    return _hidden(clip, z_image_ids(clip.tokenizers[0], next(iter(texts.values())) or ""), -2), None

