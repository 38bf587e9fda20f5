"""Video latents and Wan's conditioning nodes, with ComfyUI's names and inputs: the empty video latent
Wan workflows start from, trimming latent frames, image-to-video and first-last-frame conditioning (the
given frames encoded and attached to both conditionings, with the mask that says which frames are
given), VACE control (a control video split by its mask into the kept and the regenerated part, an
optional reference frame ahead; chained nodes add their controls up), the Fun models' conditioning
(InP: start and end frames with their mask; Control: the control video's and start image's latents
beside the latent), and Wan 2.2 5B's latent (48 channels; a start image encoded into it under a noise
mask)."""

from __future__ import annotations

from genloom.engine.errors import NodeInputError
from genloom.engine.node import Float, Input, Int, Node, Out

MAX_RESOLUTION = 16384


def latent_frames(length: int) -> int:
    """Frames of a Wan latent for `length` video frames: the first alone, then one per four."""
    return (length - 1) // 4 + 1


def _size_inputs(width: int, height: int, length: int):
    return [Int("width", width, min=16, max=MAX_RESOLUTION, step=16),
            Int("height", height, min=16, max=MAX_RESOLUTION, step=16),
            Int("length", length, min=1, max=MAX_RESOLUTION, step=4, tooltip="Video frames."),
            Int("batch_size", 1, min=1, max=4096)]


def _validate(cls, width, height, length, batch_size):
    from genloom.engine.budgets import declared_size

    return declared_size(cls.inputs, {"width": width, "height": height, "batch_size": batch_size,
                                      "length": length}, frames="length")


def _conditioning_inputs(*own):
    """What Wan's conditioning nodes take: both conditionings, the VAE, the video's size, then their own."""
    return [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
            *_size_inputs(832, 480, 81), *own]


def _with(conditioning, extra: dict):
    """Each entry of a CONDITIONING with `extra` set on it (ComfyUI's conditioning_set_values)."""
    return [[c, {**e, **extra}] for c, e in conditioning]


class _VideoConditioning(Node):
    """The frame Wan's conditioning nodes share: positive and negative out with the latent to sample."""

    category = "conditioning/video_models"
    outputs = [Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent")]

    @classmethod
    def validate(cls, width, height, length, batch_size, **_links):
        return _validate(cls, width, height, length, batch_size)


class EmptyHunyuanLatentVideo(Node):
    """Zero video latents [batch, 16, 1 + (length - 1) / 4, height / 8, width / 8] to sample from."""

    category = "latent/video"
    display_name = "EmptyHunyuanLatentVideo"  # ComfyUI gives it none: the editor shows the class name
    inputs = _size_inputs(848, 480, 25)
    outputs = [Out("LATENT")]

    @classmethod
    def validate(cls, width, height, length, batch_size):
        return _validate(cls, width, height, length, batch_size)

    def run(self, width, height, length, batch_size):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, latent_frames(length), height // 8, width // 8])},)


class TrimVideoLatent(Node):
    """Drops the first latent frames of a video latent (a reference frame sampled with it)."""

    category = "latent/video"
    display_name = "TrimVideoLatent"
    inputs = [Input("samples", "LATENT"), Int("trim_amount", 0, min=0, max=99999)]
    outputs = [Out("LATENT")]

    def run(self, samples, trim_amount):
        latent = samples["samples"]
        if latent.ndim != 5:
            raise NodeInputError("samples", f"a video latent is [batch, channels, frames, h, w], "
                                            f"not {tuple(latent.shape)}")
        return ({**samples, "samples": latent[:, :, trim_amount:]},)


class WanImageToVideo(_VideoConditioning):
    """Conditions Wan image-to-video on start frames: the frames (grey after them) are encoded and
    attached to both conditionings with the mask of given frames; the latent to sample is empty."""

    display_name = "WanImageToVideo"
    inputs = _conditioning_inputs(Input("clip_vision_output", "CLIP_VISION_OUTPUT", optional=True),
                                  Input("start_image", "IMAGE", optional=True))

    def run(self, positive, negative, vae, width, height, length, batch_size, clip_vision_output=None,
            start_image=None):
        import torch

        from genloom.diffusion.resample import scale_image

        frames = latent_frames(length)
        latent = torch.zeros([batch_size, 16, frames, height // 8, width // 8])
        extra = {}
        if start_image is not None:
            given = scale_image(start_image[:length], width, height, "bilinear", "center")
            video = torch.full((length, height, width, 3), 0.5)
            video[:given.shape[0]] = given[..., :3]
            encoded = vae.encode(video)
            mask = torch.ones((1, 1, frames, encoded.shape[-2], encoded.shape[-1]))
            mask[:, :, :latent_frames(given.shape[0])] = 0.0
            extra.update(concat_latent_image=encoded, concat_mask=mask)
        if clip_vision_output is not None:
            extra["clip_vision_output"] = clip_vision_output
        return _with(positive, extra), _with(negative, extra), {"samples": latent}


class WanFirstLastFrameToVideo(_VideoConditioning):
    """Conditions Wan first-last-frame models on a start and an end image: the frames between are grey,
    the mask marks the given ones (the first latent frame's four sub-frames for the start image, the
    last pixel frames for the end image); the two CLIP-vision outputs are joined token-wise."""

    display_name = "WanFirstLastFrameToVideo"
    inputs = _conditioning_inputs(Input("clip_vision_start_image", "CLIP_VISION_OUTPUT", optional=True),
                                  Input("clip_vision_end_image", "CLIP_VISION_OUTPUT", optional=True),
                                  Input("start_image", "IMAGE", optional=True),
                                  Input("end_image", "IMAGE", optional=True))

    def run(self, positive, negative, vae, width, height, length, batch_size, clip_vision_start_image=None,
            clip_vision_end_image=None, start_image=None, end_image=None):
        import torch

        from genloom.diffusion.resample import scale_image

        frames = latent_frames(length)
        h, w = height // 8, width // 8
        video = torch.full((length, height, width, 3), 0.5)
        todo = torch.ones((frames * 4, h, w))  # 0 = given; pixel frames, the first one counted four times
        if start_image is not None:
            start = scale_image(start_image[:length], width, height, "bilinear", "center")[..., :3]
            video[:start.shape[0]] = start
            todo[:start.shape[0] + 3] = 0.0
        if end_image is not None:
            end = scale_image(end_image[-length:], width, height, "bilinear", "center")[..., :3]
            video[-end.shape[0]:] = end
            todo[-end.shape[0]:] = 0.0
        mask = todo.reshape(1, frames, 4, h, w).transpose(1, 2)  # [1, 4, frames, h, w]
        extra = {"concat_latent_image": vae.encode(video), "concat_mask": mask}
        vision = _joined_vision(clip_vision_start_image, clip_vision_end_image)
        if vision is not None:
            extra["clip_vision_output"] = vision
        return _with(positive, extra), _with(negative, extra), {"samples": torch.zeros([batch_size, 16, frames, h, w])}


class WanFunInpaintToVideo(_VideoConditioning):
    """Conditions Wan Fun InP models: start and end images as WanFirstLastFrameToVideo gives them (grey
    between, the mask of given frames), the CLIP-vision output of the start image."""

    display_name = "WanFunInpaintToVideo"
    inputs = _conditioning_inputs(Input("clip_vision_output", "CLIP_VISION_OUTPUT", optional=True),
                                  Input("start_image", "IMAGE", optional=True),
                                  Input("end_image", "IMAGE", optional=True))

    def run(self, positive, negative, vae, width, height, length, batch_size, clip_vision_output=None,
            start_image=None, end_image=None):
        return WanFirstLastFrameToVideo().run(positive, negative, vae, width, height, length, batch_size,
                                              clip_vision_start_image=clip_vision_output,
                                              start_image=start_image, end_image=end_image)


def _fun_concat(vae, width, height, length, batch_size, start_image=None, control_video=None):
    """Fun Control's 32 channels beside the latent: the encoded control video in the first 16, the
    encoded start image's frames in the last 16, the format's mean (zero in model space) elsewhere."""
    import torch

    from genloom.diffusion.models.families.wan import wan21_format
    from genloom.diffusion.resample import scale_image

    frames = latent_frames(length)
    concat = wan21_format().process_out(torch.zeros([batch_size, 16, frames, height // 8, width // 8]))
    concat = concat.repeat(1, 2, 1, 1, 1)
    for images, first in ((start_image, 16), (control_video, 0)):
        if images is not None:
            encoded = vae.encode(scale_image(images[:length], width, height, "bilinear", "center")[..., :3])
            n = min(encoded.shape[2], frames)
            concat[:, first:first + 16, :n] = encoded[:, :, :n]
    return concat


class WanFunControlToVideo(_VideoConditioning):
    """Conditions Wan 2.1 Fun Control models: the control video's latent and the start image's latent
    as 32 channels beside the latent (no mask: the model takes exactly those)."""

    display_name = "WanFunControlToVideo"
    inputs = _conditioning_inputs(Input("clip_vision_output", "CLIP_VISION_OUTPUT", optional=True),
                                  Input("start_image", "IMAGE", optional=True),
                                  Input("control_video", "IMAGE", optional=True))

    def run(self, positive, negative, vae, width, height, length, batch_size, clip_vision_output=None,
            start_image=None, control_video=None):
        import torch

        extra = {"concat_latent_image": _fun_concat(vae, width, height, length, batch_size, start_image,
                                                    control_video)}
        if clip_vision_output is not None:
            extra["clip_vision_output"] = clip_vision_output
        latent = torch.zeros([batch_size, 16, latent_frames(length), height // 8, width // 8])
        return _with(positive, extra), _with(negative, extra), {"samples": latent}


class Wan22FunControlToVideo(_VideoConditioning):
    """Conditions Wan 2.2 Fun Control models: the control latent, four mask channels (ComfyUI's node takes
    no start image, so every frame is to be made) and the start latent's 16 channels, in that order
    (`concat_mask_index` 16); a reference image's latent as `reference_latents`."""

    display_name = "Wan22FunControlToVideo"
    inputs = _conditioning_inputs(Input("ref_image", "IMAGE", optional=True),
                                  Input("control_video", "IMAGE", optional=True))

    def run(self, positive, negative, vae, width, height, length, batch_size, ref_image=None, control_video=None):
        import torch

        from genloom.diffusion.resample import scale_image

        frames, h, w = latent_frames(length), height // 8, width // 8
        extra = {"concat_latent_image": _fun_concat(vae, width, height, length, batch_size, None, control_video),
                 "concat_mask": torch.ones([1, 4, frames, h, w]), "concat_mask_index": 16}
        positive, negative = _with(positive, extra), _with(negative, extra)
        if ref_image is not None:
            ref = vae.encode(scale_image(ref_image[:1], width, height, "bilinear", "center")[..., :3])
            positive, negative = (_appended(positive, {"reference_latents": [ref]}),
                                  _appended(negative, {"reference_latents": [ref]}))
        return positive, negative, {"samples": torch.zeros([batch_size, 16, frames, h, w])}


def _joined_vision(start, end):
    """The start and end images' CLIP-vision outputs as one, their tokens one after the other."""
    if start is None or end is None:
        return start if end is None else end
    import copy

    import torch

    states = [getattr(v, "penultimate_hidden_states", v) for v in (start, end)]
    joined = torch.cat(states, dim=-2)
    if not hasattr(start, "penultimate_hidden_states"):
        return joined
    out = copy.copy(start)
    out.penultimate_hidden_states = joined
    return out


class Wan22ImageToVideoLatent(Node):
    """Wan 2.2 5B's latent [1, 48, 1 + (length - 1) / 4, height / 16, width / 16]: with a start image,
    its encoded frames lead the latent and a noise mask keeps them (the rest is regenerated)."""

    category = "conditioning/inpaint"
    display_name = "Wan22ImageToVideoLatent"
    inputs = [Input("vae", "VAE"), Int("width", 1280, min=32, max=MAX_RESOLUTION, step=32),
              Int("height", 704, min=32, max=MAX_RESOLUTION, step=32),
              Int("length", 49, min=1, max=MAX_RESOLUTION, step=4, tooltip="Video frames."),
              Int("batch_size", 1, min=1, max=4096), Input("start_image", "IMAGE", optional=True)]
    outputs = [Out("LATENT")]

    @classmethod
    def validate(cls, width, height, length, batch_size, **_links):
        return _validate(cls, width, height, length, batch_size)

    def run(self, vae, width, height, length, batch_size, start_image=None):
        import torch

        from genloom.diffusion.models.families.wan import wan22_format
        from genloom.diffusion.resample import scale_image

        frames = latent_frames(length)
        latent = torch.zeros([1, 48, frames, height // 16, width // 16])
        if start_image is None:  # as ComfyUI: one empty latent, whatever the batch size
            return ({"samples": latent},)
        start = scale_image(start_image[:length], width, height, "bilinear", "center")
        encoded = vae.encode(start[..., :3])
        latent[:, :, :encoded.shape[2]] = encoded
        mask = torch.ones([1, 1, frames, latent.shape[-2], latent.shape[-1]])
        mask[:, :, :encoded.shape[2]] = 0.0
        # regenerated frames at the format's zero (its mean), given frames as encoded
        latent = wan22_format().process_out(latent) * mask + latent * (1.0 - mask)
        return ({"samples": latent.repeat(batch_size, 1, 1, 1, 1), "noise_mask": mask.repeat(batch_size, 1, 1, 1, 1)},)


class WanVaceToVideo(Node):
    """Conditions a Wan VACE model: the control video (grey where missing) split by the control mask into
    the part to keep and the part to regenerate, each encoded; the mask at latent size in 64 channels
    (one per pixel of an 8 x 8 cell); a reference image's latent ahead of the frames, which
    `trim_latent` (for TrimVideoLatent) counts."""

    category = "conditioning/video_models"
    display_name = "WanVaceToVideo"
    inputs = [Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              *_size_inputs(832, 480, 81), Float("strength", 1.0, min=0.0, max=1000.0, step=0.01),
              Input("control_video", "IMAGE", optional=True), Input("control_masks", "MASK", optional=True),
              Input("reference_image", "IMAGE", optional=True)]
    outputs = [Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative"), Out("LATENT", "latent"),
               Out("INT", "trim_latent")]

    @classmethod
    def validate(cls, width, height, length, batch_size, **_links):
        return _validate(cls, width, height, length, batch_size)

    def run(self, positive, negative, vae, width, height, length, batch_size, strength, control_video=None,
            control_masks=None, reference_image=None):
        import torch
        import torch.nn.functional as F

        from genloom.diffusion.models.families.wan import wan21_format
        from genloom.diffusion.resample import scale_image

        frames, h, w = latent_frames(length), height // 8, width // 8
        video = torch.full((length, height, width, 3), 0.5)
        if control_video is not None:
            given = scale_image(control_video[:length], width, height, "bilinear", "center")[..., :3]
            video[:given.shape[0]] = given
        mask = torch.ones((length, height, width, 1))
        if control_masks is not None:
            masks = control_masks.reshape(-1, *control_masks.shape[-2:]).unsqueeze(-1)  # [T, H, W, 1]
            given = scale_image(masks[:length], width, height, "bilinear", "center")
            mask[:given.shape[0]] = given[..., :1]
        centred = video - 0.5
        control = torch.cat([vae.encode(centred * (1 - mask) + 0.5), vae.encode(centred * mask + 0.5)], dim=1)
        # the mask at latent size: each pixel of an 8 x 8 cell its own channel, frames nearest-exact
        cells = mask[..., 0].reshape(length, h, 8, w, 8).permute(2, 4, 0, 1, 3).reshape(64, length, h, w)
        cells = F.interpolate(cells[None], size=(frames, h, w), mode="nearest-exact")[0]
        trim = 0
        if reference_image is not None:
            image = scale_image(reference_image[:1], width, height, "bilinear", "center")[..., :3]
            ref = vae.encode(image)
            ref = torch.cat([ref, wan21_format().process_out(torch.zeros_like(ref))], dim=1)
            trim = ref.shape[2]
            control = torch.cat([ref, control], dim=2)
            cells = torch.cat([torch.zeros((64, trim, h, w)), cells], dim=1)
        added = {"vace_frames": [control], "vace_mask": [cells[None]], "vace_strength": [float(strength)]}
        latent = torch.zeros([batch_size, 16, frames + trim, h, w])
        return (_appended(positive, added), _appended(negative, added), {"samples": latent}, trim)


def _appended(conditioning, values: dict):
    """Each entry with `values`' lists appended to any it already holds (ComfyUI's append=True)."""
    return [[c, {**e, **{k: list(e.get(k) or []) + v for k, v in values.items()}}] for c, e in conditioning]


NODES = [EmptyHunyuanLatentVideo, TrimVideoLatent, WanImageToVideo, WanFirstLastFrameToVideo,
         WanFunInpaintToVideo, WanFunControlToVideo, Wan22FunControlToVideo, WanVaceToVideo,
         Wan22ImageToVideoLatent]
