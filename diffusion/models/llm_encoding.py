"""Prompt encoding with the language-model text encoders (llm_encoders.py), as ComfyUI does it:

  qwen_image  the prompt in Qwen-Image's system template, the last layer's (normed) hidden states,
              the template's start dropped up to and including the second `<|im_start|>user\\n`
              (diffusers' QwenImagePipeline drops the same 34 tokens); a prompt starting with
              `<|im_start|>` is taken as already templated.
  z_image     `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`, the second-to-last
              layer's hidden states (not normed), every token kept (diffusers' ZImagePipeline).
Prompt weights are not applied (ComfyUI disables them for these encoders); no pooled output.
"""

from __future__ import annotations

from .owner import model_owner

QWEN_IMAGE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
                       "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                       "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")
Z_IMAGE_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def _hidden(clip, ids: list[int], layer: int):
    """Hidden states [1, T, D] float32 CPU of `layer` (-1: the last layer's, normed)."""
    import torch

    with torch.no_grad(), model_owner().memory.use(clip.text_encoders[0], getattr(clip, "device", None)) as enc:
        base = getattr(enc.model, "language_model", enc.model)
        tokens = torch.tensor([ids], device=next(enc.parameters()).device)
        out = base(input_ids=tokens, output_hidden_states=layer != -1)
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return hidden.float().cpu()


def _template_end(tokenizer, ids: list[int]) -> int:
    """ComfyUI's cut: at the second `<|im_start|>`, past it and `user\\n` when those follow."""
    start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    at = [i for i, t in enumerate(ids) if t == start][:2]
    if not at:
        return 0
    end = at[-1]
    user = tokenizer("user\n", add_special_tokens=False).input_ids
    if len(ids) > end + 1 + len(user) and ids[end + 1:end + 1 + len(user)] == user:
        end += 1 + len(user)
    return end


def encode_qwen_image(clip, texts: dict):
    text = next(iter(texts.values())) or ""
    tokenizer = clip.tokenizers[0]
    prompt = text if text.startswith("<|im_start|>") else QWEN_IMAGE_TEMPLATE.format(text)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return _hidden(clip, ids, -1)[:, _template_end(tokenizer, ids):], None


def encode_z_image(clip, texts: dict):
    text = next(iter(texts.values())) or ""
    ids = clip.tokenizers[0](Z_IMAGE_TEMPLATE.format(text), add_special_tokens=False).input_ids
    return _hidden(clip, ids, -2), None

