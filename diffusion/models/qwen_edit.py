"""Qwen-Image-Edit and Edit-Plus conditioning (ComfyUI's TextEncodeQwenImageEdit and
TextEncodeQwenImageEditPlus): pictures go in twice, as Qwen2.5-VL vision-tower tokens inside the
prompt and as VAE latents the transformer reads as reference tokens (QwenImageHandle.cond_extras).

The rules, as ComfyUI applies them:
  Edit       the picture scaled (area) to about 1024 x 1024 pixels, each side rounded; that one picture
             feeds the vision tower and the VAE (which crops it to whole 8-pixel cells). The prompt goes in
             the edit template, whose user turn opens with `<|vision_start|><|image_pad|><|vision_end|>`;
             without a picture it is the text-to-image template.
  Edit-Plus  up to three pictures: each scaled to about 384 x 384 for the vision tower and to about
             1024 x 1024, sides rounded to multiples of 8, for the VAE; the prompt is prefixed with
             `Picture N: <|vision_start|><|image_pad|><|vision_end|>` per picture given (N its slot) and
             goes in the edit template without the vision tokens.
  Vision     the tower's input: sides rounded to whole 28-pixel cells (patch 14 x merge 2), held within
             3136 .. 12845056 pixels, bilinear resampling, CLIP's mean and std, the frame doubled for the
             tower's 2-frame patches. Each `<|image_pad|>` that has a picture becomes that picture's
             merged patch tokens (one per 2 x 2 patches); the positions are Qwen2.5-VL's 3-D rotary ones
             (an image's tokens share a frame index and count rows and columns from where it starts;
             the text after it resumes past its larger side).
The encoder's output is cut where the t2i encoding cuts it (past the second `<|im_start|>user\\n`), so
the system part is dropped and the vision tokens stay in the conditioning.
"""

from __future__ import annotations

import math

from .llm_encoding import QWEN_IMAGE_TEMPLATE, _template_end
from .owner import model_owner

_SYSTEM = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
           "objects, background), then explain how the user's text instruction should alter or modify the "
           "image. Generate a new image that meets the user's requirements while maintaining consistency with "
           "the original input where appropriate.<|im_end|>\n<|im_start|>user\n")
VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"
EDIT_TEMPLATE = _SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"  # Edit-Plus: pictures named in the prompt
EDIT_IMAGE_TEMPLATE = _SYSTEM + VISION_TOKENS + "{}<|im_end|>\n<|im_start|>assistant\n"
PICTURE = "Picture {}: " + VISION_TOKENS
EDIT_PIXELS = 1024 * 1024
PLUS_VISION_PIXELS = 384 * 384
VISION_MIN_PIXELS, VISION_MAX_PIXELS = 3136, 12845056
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def scale_to_pixels(image, total: int, multiple: int = 1):
    """IMAGE [B, H, W, C] scaled by area resampling to about `total` pixels, the aspect kept, each side
    rounded (to a multiple of `multiple` when above 1)."""
    from genloom.diffusion.resample import resize

    h, w = image.shape[1], image.shape[2]
    scale = math.sqrt(total / (w * h))
    if multiple > 1:
        width, height = round(w * scale / multiple) * multiple, round(h * scale / multiple) * multiple
    else:
        width, height = round(w * scale), round(h * scale)
    return resize(image.movedim(-1, 1), width, height, "area").movedim(1, -1)


def vision_size(height: int, width: int, cell: int) -> tuple[int, int]:
    """The vision tower's picture size: whole cells, within VISION_MIN_PIXELS .. VISION_MAX_PIXELS."""
    h, w = round(height / cell) * cell, round(width / cell) * cell
    if h * w > VISION_MAX_PIXELS:
        beta = math.sqrt(height * width / VISION_MAX_PIXELS)
        h, w = max(cell, math.floor(height / beta / cell) * cell), max(cell, math.floor(width / beta / cell) * cell)
    elif h * w < VISION_MIN_PIXELS:
        beta = math.sqrt(VISION_MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / cell) * cell, math.ceil(width * beta / cell) * cell
    return h, w


def vision_patches(image, config):
    """The first picture of IMAGE [B, H, W, C] -> (patches [gh * gw, 3 * t * p * p], grid [[1, gh, gw]]),
    patches ordered merge-window by merge-window as the tower's patch embedding and merger expect."""
    import torch
    import torch.nn.functional as F

    p, t, m = config.patch_size, config.temporal_patch_size, config.spatial_merge_size
    pixels = image[0, ..., :3].movedim(-1, 0).float()
    h, w = vision_size(pixels.shape[1], pixels.shape[2], p * m)
    pixels = F.interpolate(pixels[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    frames = ((pixels - mean) / std)[None].expand(t, -1, -1, -1)  # a still picture: the same frame t times
    gh, gw = h // p, w // p
    cells = frames.reshape(t, 3, gh // m, m, p, gw // m, m, p)
    # -> (merge row, merge col, row in window, col in window, channel, frame, y, x)
    cells = cells.permute(2, 5, 3, 6, 1, 0, 4, 7)
    return cells.reshape(gh * gw, 3 * t * p * p), torch.tensor([[1, gh, gw]])


def encode(clip, prompt: str, images: list, template: str | None = None):
    """Hidden states [1, T, D] float32 CPU of the templated prompt with each picture's vision tokens in
    place of an `<|image_pad|>` (in order; pads past the last picture stay plain tokens)."""
    import torch

    tokenizer = clip.tokenizers[0]
    if prompt.startswith("<|im_start|>"):
        text = prompt
    else:
        text = (template or (EDIT_IMAGE_TEMPLATE if images else QWEN_IMAGE_TEMPLATE)).format(prompt)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    cut = _template_end(tokenizer, ids)
    with torch.no_grad(), model_owner().memory.use(clip.text_encoders[0], getattr(clip, "device", None)) as enc:
        model = enc.model
        pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        _tokens, embeds, positions = vision_inputs(model, ids, images, pad)
        hidden = model.language_model(inputs_embeds=embeds, position_ids=positions).last_hidden_state
        return hidden[:, cut:].float().cpu()


def vision_inputs(model, ids: list[int], images: list, pad: int):
    """(token ids [1, T'], input embeddings [1, T', D], 3-D rotary positions [3, 1, T'] or None without a
    picture) of `ids` with each `pad` (`<|image_pad|>`) that has a picture (in order) widened to its merged patch
    tokens and those tokens' embeddings replaced by the vision tower's. `model` is a Qwen2_5_VLModel (the
    encoder's `.model`); shared by the edit encoders and TextGenerate."""
    import torch

    param = next(model.visual.parameters())
    pictures = [vision_patches(image, model.visual.config) for image in images[:ids.count(pad)]]
    merge = model.visual.config.spatial_merge_size ** 2
    expanded, is_image, left = [], [], list(pictures)
    for token in ids:
        count = int(left.pop(0)[1].prod()) // merge if token == pad and left else 0
        expanded += [token] * max(count, 1)
        is_image += [1] * count if count else [0]
    tokens = torch.tensor([expanded], device=param.device)
    embeds = model.get_input_embeddings()(tokens)
    positions = None
    if pictures:
        grid = torch.cat([g for _p, g in pictures]).to(param.device)
        patches = torch.cat([p for p, _g in pictures]).to(param.device, param.dtype)
        features = model.get_image_features(patches, image_grid_thw=grid, return_dict=True).pooler_output
        mask = torch.tensor(is_image, device=param.device).bool()
        embeds[0, mask] = torch.cat(features).to(embeds.dtype)
        positions, _delta = model.get_rope_index(tokens, mm_token_type_ids=mask.int()[None], image_grid_thw=grid)
    return tokens, embeds, positions


def _reference(vae, pixels):
    from genloom.diffusion.vae_passes import crop_to_multiple

    return vae.encode(crop_to_multiple(pixels[..., :3], vae.scale_factor))


def edit_conditioning(clip, prompt: str, vae=None, image=None):
    """TextEncodeQwenImageEdit: CONDITIONING with the picture's vision tokens and, given a VAE, its latent."""
    extra = {"pooled_output": None}
    pictures = []
    if image is not None:
        scaled = scale_to_pixels(image, EDIT_PIXELS)[..., :3]
        pictures = [scaled]
        if vae is not None:
            extra["reference_latents"] = [_reference(vae, scaled)]
    return [[encode(clip, prompt, pictures), extra]]


def edit_plus_conditioning(clip, prompt: str, vae=None, images=(None, None, None)):
    """TextEncodeQwenImageEditPlus: up to three pictures, named "Picture N" in the prompt."""
    extra = {"pooled_output": None}
    pictures, references, named = [], [], ""
    for slot, image in enumerate(images, start=1):
        if image is None:
            continue
        pictures.append(scale_to_pixels(image, PLUS_VISION_PIXELS)[..., :3])
        if vae is not None:
            references.append(_reference(vae, scale_to_pixels(image, EDIT_PIXELS, multiple=8)))
        named += PICTURE.format(slot)
    if references:
        extra["reference_latents"] = references
    return [[encode(clip, named + prompt, pictures, EDIT_TEMPLATE), extra]]
