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
  Video      (TextGenerate's `video`) every frame as a picture, frames paired into the 2-frame patches
             (an odd count repeats the last), one `<|video_pad|>` per clip; its temporal patches step
             the time axis by tokens_per_second x seconds per patch (`rope_positions`, docs/models.md).
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


def frame_pixels(frames, config):
    """IMAGE [F, H, W, C] -> the tower's normalized pixels [F, 3, h, w]: bilinear to whole 28-pixel cells
    (`vision_size` of the frames' size), CLIP's mean and std."""
    import torch
    import torch.nn.functional as F

    pixels = frames[..., :3].movedim(-1, 1).float()
    h, w = vision_size(pixels.shape[2], pixels.shape[3], config.patch_size * config.spatial_merge_size)
    pixels = F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def patchify(pixels, config):
    """Normalized frames [T, 3, h, w] (T a multiple of the temporal patch) -> (patches [T/t * gh * gw,
    3 * t * p * p], grid [[T/t, gh, gw]]), ordered temporal patch by temporal patch, then merge window by
    merge window, as the tower's patch embedding and merger expect."""
    import torch

    p, t, m = config.patch_size, config.temporal_patch_size, config.spatial_merge_size
    frames, gh, gw = pixels.shape[0], pixels.shape[2] // p, pixels.shape[3] // p
    cells = pixels.reshape(frames // t, t, 3, gh // m, m, p, gw // m, m, p)
    # -> (temporal patch, merge row, merge col, row in window, col in window, channel, frame, y, x)
    cells = cells.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return cells.reshape(frames // t * gh * gw, 3 * t * p * p), torch.tensor([[frames // t, gh, gw]])


def vision_patches(image, config):
    """The first picture of IMAGE [B, H, W, C] -> (patches, grid [[1, gh, gw]]): a still picture is the
    same frame t times."""
    pixels = frame_pixels(image[:1], config)
    return patchify(pixels.expand(config.temporal_patch_size, -1, -1, -1), config)


def video_patches(frames, config):
    """Frames IMAGE [F, H, W, C] -> (patches, grid [[ceil(F / t), gh, gw]]): every frame at the first's
    vision size; an odd count repeats the last frame to fill the last 2-frame temporal patch."""
    import torch

    pixels = frame_pixels(frames, config)
    missing = -pixels.shape[0] % config.temporal_patch_size
    return patchify(torch.cat([pixels, pixels[-1:].expand(missing, -1, -1, -1)]), config)


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


def vision_inputs(model, ids: list[int], images: list, pad: int, videos: list = (), video_pad: int | None = None,
                  video_fps: float = 1.0):
    """(token ids [1, T'], input embeddings [1, T', D], 3-D rotary positions [3, 1, T'] or None without a
    picture or video) of `ids` with each `pad` (`<|image_pad|>`) that has a picture, and each `video_pad`
    (`<|video_pad|>`) that has a video (IMAGE frames sampled at `video_fps`), in order, widened to its merged
    patch tokens and those tokens' embeddings replaced by the vision tower's. A video's temporal patches
    step the time axis by tokens_per_second * temporal_patch / video_fps (Qwen2.5-VL's absolute time).
    `model` is a Qwen2_5_VLModel (the encoder's `.model`); shared by the edit encoders and TextGenerate."""
    import torch

    param = next(model.visual.parameters())
    config = model.visual.config
    left = {pad: [(1, image, vision_patches) for image in images]}
    if videos and video_pad is not None:
        left[video_pad] = [(2, video, video_patches) for video in videos]
    merge = config.spatial_merge_size ** 2
    expanded, kinds, used = [], [], {1: [], 2: []}
    for token in ids:
        if not left.get(token):
            expanded.append(token)
            kinds.append(0)
            continue
        kind, frames, patches_of = left[token].pop(0)
        patches, grid = patches_of(frames, config)
        used[kind].append((patches, grid))
        count = int(grid.prod()) // merge
        expanded += [token] * count
        kinds += [kind] * count
    tokens = torch.tensor([expanded], device=param.device)
    embeds = model.get_input_embeddings()(tokens)
    if not used[1] and not used[2]:
        return tokens, embeds, None
    mask = torch.tensor(kinds, device=param.device)
    for kind, features_of in ((1, model.get_image_features), (2, model.get_video_features)):
        if used[kind]:
            grid = torch.cat([g for _p, g in used[kind]]).to(param.device)
            patches = torch.cat([p for p, _g in used[kind]]).to(param.device, param.dtype)
            features = features_of(patches, grid, return_dict=True).pooler_output
            embeds[0, mask == kind] = torch.cat(features).to(embeds.dtype)
    grids = {kind: [g[0].tolist() for _p, g in found] for kind, found in used.items()}
    positions = rope_positions(kinds, grids, config.tokens_per_second * config.temporal_patch_size / video_fps,
                               config.spatial_merge_size)
    return tokens, embeds, positions.to(param.device)


def rope_positions(kinds: list[int], grids: dict, video_step: float, merge: int):
    """Qwen2.5-VL's 3-D rotary positions [3, 1, T] (time, row, column) of a sequence whose tokens are text
    (kind 0), picture (1) or video (2) tokens; `grids` holds each kind's [t, h, w] patch grids in order.
    Text counts up on all three axes. A vision block starts at the next free position: its merged cells
    add their row and column to it, a video's temporal patch k adds k * `video_step` (tokens_per_second x
    seconds per temporal patch) to its time, a picture's time stays. The text after a block resumes one
    past the block's largest position, as Qwen's own implementation places it (transformers 5.3+ resumes
    past the larger merged side only, which differs once a video's time outgrows its sides)."""
    import torch

    out = torch.empty(3, len(kinds), dtype=torch.long)
    left = {kind: list(g) for kind, g in grids.items()}
    at, i = 0, 0
    while i < len(kinds):
        if kinds[i] == 0:
            out[:, i] = at
            at, i = at + 1, i + 1
            continue
        t, h, w = left[kinds[i]].pop(0)
        h, w = h // merge, w // merge
        times = (torch.arange(t) * (video_step if kinds[i] == 2 else 0)).long()
        block = torch.stack(torch.meshgrid(times, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
        out[:, i:i + block.shape[1]] = block + at
        at, i = int(block.max()) + at + 1, i + block.shape[1]
    return out[:, None]


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
