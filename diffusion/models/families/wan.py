"""Wan 2.1 / 2.2 (14B experts, 1.3B): the original key layout -> diffusers' WanTransformer3DModel,
config from the shapes, the MODEL handle for 5-D video latents [B, C, T, H, W].

Original layout (Wan's and ComfyUI's files): `patch_embedding` (a Conv3d, its kernel the patch size),
`text_embedding.{0,2}`, `time_embedding.{0,2}`, `time_projection.1`, `blocks.N.{self_attn,cross_attn}.
{q,k,v,o,norm_q,norm_k}`, `blocks.N.norm3` (the cross-attention norm), `blocks.N.ffn.{0,2}`,
`blocks.N.modulation`, `head.head`, `head.modulation`; image-to-video adds `img_emb.proj.*` and
`cross_attn.{k_img,v_img,norm_k_img}`. The renaming is diffusers' own (its converter renames keys and
reads no sizes); sizes come from the shapes: width and patch (patch_embedding), depth, text and
frequency widths, feed-forward width, output channels (head.head), heads of 128 channels as every Wan
model has (ComfyUI reads them the same way).

Sampling: rectified flow with shift 8 (ComfyUI's default for the family; ModelSamplingSD3 changes it),
timesteps sigma * 1000, the Wan 2.1 latent format (per-channel mean/std over 16 channels).

Wan 2.2 TI2V 5B (48 latent channels, ComfyUI's WAN22): the Wan 2.2 latent format over 48 channels,
16x spatial compression (its VAE patchifies 2x2), and per-frame timesteps from the run's noise mask
(ComfyUI's process_timestep: each latent frame's timestep is t times the frame's mean mask, so the
given start frame of image-to-video sits at timestep 0); a masked-off frame stays the clean latent
instead of being re-noised (ComfyUI's scale_latent_inpaint). First-last-frame models (`img_emb.emb_pos`)
read the two images' CLIP-vision tokens concatenated. VACE models (`vace_blocks.N` with `before_proj` /
`after_proj`, `vace_patch_embedding`) become WanVACETransformer3DModel, a hint block after every
(depth / hints)-th block as ComfyUI maps them; their control contexts come from WanVaceToVideo nodes
(chained ones each add their hints, ComfyUI's sum).

Fun models differ only by their input width, and take what ComfyUI's concat rule gives them: Fun InP
(36 channels: mask + start/end latents, like image-to-video), Wan 2.1 Fun Control (48: control and start
latents, no mask), Wan 2.2 Fun Control (52: control latent, mask, start latent) whose `ref_conv` puts a
reference image's latent ahead of the video as one frame of tokens.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field

from genloom.diffusion.errors import CheckpointError, SamplingError

from ..handles import ModelHandle
from ..loading import build_module
from ..weights import exact_keys
from . import DiTHandle

NAME = "Wan"
HEAD_DIM = 128
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 8.0}
# Wan 2.1's VAE statistics (also Wan 2.2 14B's): LATENT stays raw, the model sees (x - mean) / std.
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# Wan 2.2 5B's VAE statistics over 48 channels (ComfyUI's Wan22 latent format).
WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
_POS_EMBED = ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed")
_ORIGINAL = ("head.modulation", "patch_embedding.weight")
_DIFFUSERS = ("scale_shift_table", "condition_embedder.time_embedder.linear_1.weight", "patch_embedding.weight")


def detect(shapes: dict) -> bool:
    return all(k in shapes for k in _ORIGINAL) or all(k in shapes for k in _DIFFUSERS)


def wan21_format():
    from genloom.diffusion.sampling.latent_formats import LatentFormat

    return LatentFormat(1.0, channels=16, mean=WAN21_MEAN, std=WAN21_STD)


def wan22_format():
    from genloom.diffusion.sampling.latent_formats import LatentFormat

    return LatentFormat(1.0, channels=48, mean=WAN22_MEAN, std=WAN22_STD)


def to_diffusers(state: dict) -> dict:
    """Original-layout tensors -> WanTransformer3DModel's names (diffusers' own renaming)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = convert_wan_transformer_to_diffusers(dict(state))
    if _POS_EMBED[0] in out:  # first-last-frame's image positions: the converter leaves them unnamed
        out[_POS_EMBED[1]] = out.pop(_POS_EMBED[0])
    return out


def to_original(state: dict) -> dict:
    """WanTransformer3DModel tensors -> the original layout (the writer used by the tests)."""
    renames = [("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
               ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
               ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
               ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
               ("condition_embedder.time_proj", "time_projection.1"),
               ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
               ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
               ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
               ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
               ("attn1", "self_attn"), ("attn2", "cross_attn"), (".to_out.0.", ".o."), (".to_q.", ".q."),
               (".to_k.", ".k."), (".to_v.", ".v."), (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."),
               (".norm_added_k.", ".norm_k_img."), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
               (_POS_EMBED[1], _POS_EMBED[0]), ("proj_out", "head.head")]
    out = {}
    for key, value in state.items():
        new = key
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.endswith(".scale_shift_table"):
            new = new.replace(".scale_shift_table", ".modulation")
        if new.startswith("vace_blocks."):  # VACE: the hint block's input and output projections
            new = new.replace(".proj_in.", ".before_proj.").replace(".proj_out.", ".after_proj.")
        for a, b in renames:
            new = new.replace(a, b)
        new = re.sub(r"\.norm2\.", ".norm3.", new) if ".norm2." in new else new
        out[new] = value
    return out


def config_from_shapes(shapes: dict) -> dict:
    """diffusers' WanTransformer3DModel config from original-layout shapes."""
    width, in_channels, *patch = shapes["patch_embedding.weight"]
    if width % HEAD_DIM:
        raise CheckpointError(f"Wan transformer width {width} is not a whole number of {HEAD_DIM}-wide heads")
    depth = len({int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    patch_volume = patch[0] * patch[1] * patch[2]
    config = {"patch_size": tuple(patch), "num_attention_heads": width // HEAD_DIM, "attention_head_dim": HEAD_DIM,
              "in_channels": in_channels, "out_channels": shapes["head.head.weight"][0] // patch_volume,
              "text_dim": shapes["text_embedding.0.weight"][1], "freq_dim": shapes["time_embedding.0.weight"][1],
              "ffn_dim": shapes["blocks.0.ffn.0.weight"][0], "num_layers": depth,
              "cross_attn_norm": "blocks.0.norm3.weight" in shapes, "qk_norm": "rms_norm_across_heads",
              "eps": 1e-6}
    if "img_emb.proj.0.weight" in shapes:  # image-to-video: CLIP-vision tokens through their own K/V
        config.update(image_dim=shapes["img_emb.proj.0.weight"][0], added_kv_proj_dim=width)
        if "img_emb.emb_pos" in shapes:  # first-last-frame: two images' tokens with learned positions
            config["pos_embed_seq_len"] = shapes["img_emb.emb_pos"][1]
    if "vace_patch_embedding.weight" in shapes:  # VACE: hint blocks after every (depth / hints)-th block
        hints = len({int(m.group(1)) for k in shapes if (m := re.match(r"vace_blocks\.(\d+)\.", k))})
        config.update(vace_in_channels=shapes["vace_patch_embedding.weight"][1],
                      vace_layers=list(range(0, depth, depth // hints)))
    return config


@dataclass(frozen=True, eq=False)
class WanHandle(DiTHandle):
    kind: str = "wan"
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER))
    per_frame_timesteps: bool = False  # Wan 2.2 5B: timesteps from the noise mask, given frames kept clean

    @property
    def inpaint_clean(self) -> bool:
        """Under a noise mask the given part is the clean latent, not the latent noised to sigma."""
        return self.per_frame_timesteps

    def cond_extras(self, extra: dict, height: int, width: int) -> dict:
        """A model that takes more input channels than the latent has (image-to-video, Fun InP and
        Control) gets them from ComfyUI's concat_latent_image / concat_mask (`concat_channels`),
        CLIP-vision tokens as image embeddings, VACE models their control contexts; Wan 2.2 5B reads
        each latent frame's share of the noise mask, its timestep's factor."""
        out = {}
        channels = int(getattr(getattr(self.unet, "config", None), "in_channels", 0) or 0) - self.latent_channels
        if channels > 0:  # image-to-video, Fun InP / Control: channels concatenated to the latent
            out["concat"] = concat_channels(self, extra, channels)
        vision = extra.get("clip_vision_output")
        if vision is not None:  # CLIP-vision tokens (Wan 2.1 image-to-video)
            out["image_embeds"] = getattr(vision, "penultimate_hidden_states", vision)
        if getattr(getattr(self.unet, "config", None), "vace_layers", None):
            out.update(vace_inputs(self, extra))
        references = extra.get("reference_latents")
        if references and getattr(self.unet, "ref_conv", None) is not None:  # Wan 2.2 Fun: the last one's frame 0
            from genloom.diffusion.sampling.latent_formats import of_model

            out["reference"] = of_model(self).process_in(references[-1].float())[:, :, 0]
        mask = extra.get("denoise_mask")
        if self.per_frame_timesteps and mask is not None and mask.ndim == 5:
            out["frame_mask"] = mask.float().mean(dim=(1, 3, 4))  # [B, frames]
        return out

    def predict(self, transformer, x, t, emb, extras: dict):
        import torch

        if "concat" in extras:
            x = torch.cat([x, extras["concat"].to(x.dtype)], dim=1)
        timestep = self.batch_timestep(t, x)
        if "frame_mask" in extras:  # one timestep per token: its frame's, as diffusers' expand_timesteps
            _pt, ph, pw = transformer.config.patch_size
            per_frame = timestep[:, None] * extras["frame_mask"].to(x.dtype)
            timestep = per_frame.repeat_interleave((x.shape[-2] // ph) * (x.shape[-1] // pw), dim=1)
        kwargs = {}
        if "image_embeds" in extras:
            images = extras["image_embeds"]
            positions = transformer.config.pos_embed_seq_len
            if positions:  # first-last-frame: diffusers joins the two images' halves itself
                if images.shape[-2] != positions:
                    raise SamplingError(f"this first-last-frame model takes {positions} CLIP-vision tokens (a start "
                                        f"and an end image), not {images.shape[-2]}")
                images = images.reshape(-1, positions // 2, images.shape[-1])
            kwargs["encoder_hidden_states_image"] = images
        with _reference_frame(transformer, extras.get("reference")):
            if "vace_context" in extras:
                return self._vace_predict(transformer, x, timestep, emb, extras, kwargs)
            return transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=emb,
                               return_dict=False, **kwargs)[0]

    @staticmethod
    def _vace_predict(transformer, x, timestep, emb, extras: dict, kwargs: dict):
        """VACE: each control context through the hint blocks, its hints scaled by its strength; rows
        of different strengths are separate calls (diffusers takes one scale per layer)."""
        import torch

        contexts = extras["vace_context"].to(x.dtype)
        scales = extras["vace_scale"].to(x.dtype).reshape(len(contexts), -1)  # [rows, contexts]
        layers = len(transformer.config.vace_layers)
        rows = [slice(None)] if bool((scales == scales[:1]).all()) else [slice(i, i + 1) for i in range(len(x))]
        outs = []
        for r in rows:
            context, scale = contexts[r], scales[r][0]
            with _summed_hints(transformer, context[:, 1:], scale[1:]):
                outs.append(transformer(hidden_states=x[r], timestep=timestep[r], encoder_hidden_states=emb[r],
                                        control_hidden_states=context[:, 0],
                                        control_hidden_states_scale=scale[:1].repeat(layers),
                                        return_dict=False, **{k: v[r] for k, v in kwargs.items()})[0])
        return outs[0] if len(outs) == 1 else torch.cat(outs)


@contextmanager
def _reference_frame(transformer, reference):
    """Wan 2.2 Fun's reference image (ComfyUI's reference_latent): `ref_conv` turns its latent [B, 16, h, w]
    into one frame of tokens ahead of the video's, with rotary positions for one frame more (the
    reference at frame 0), and its outputs dropped before the video is unpatchified. diffusers' forward
    knows no such frame; three hooks add it: the rotary table sees one frame more, the patch embedding's
    output gets the reference frame in front, the output projection's result loses its tokens."""
    if reference is None or getattr(transformer, "ref_conv", None) is None:
        yield
        return
    import torch

    conv = transformer.ref_conv
    tokens = conv(reference.to(dtype=conv.weight.dtype, device=conv.weight.device))  # [B, dim, h', w']

    def longer(_rope, args):
        hidden = args[0]
        return (hidden.new_empty(hidden.shape[0], hidden.shape[1], hidden.shape[2] + 1, *hidden.shape[3:]),)

    def ahead(_embed, _args, output):
        return torch.cat([tokens.unsqueeze(2).to(output.dtype), output], dim=2)

    def dropped(_proj, _args, output):
        return output[:, tokens.shape[-2] * tokens.shape[-1]:]

    handles = [transformer.rope.register_forward_pre_hook(longer),
               transformer.patch_embedding.register_forward_hook(ahead),
               transformer.proj_out.register_forward_hook(dropped)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _summed_hints(transformer, contexts, scales):
    """Chained WanVaceToVideo: ComfyUI runs every control context through the hint blocks and adds
    each one's hints, scaled by its strength, after the same transformer blocks. diffusers' forward
    takes one context; the others (`contexts` [B, n, 96, T, h, w]) run beside it here: each hint block
    also steps their states on the inputs it was given, and each hinted block's output gets their
    scaled hints added."""
    if contexts.shape[1] == 0:
        yield
        return
    import torch

    hints: list = []  # per hint block: one hint per extra context
    states: list = []

    def step(block, args, _output):
        hidden, encoder, _control, temb, rotary = args
        if not states:  # the first hint block: each context's patch embedding, padded as diffusers pads
            for j in range(contexts.shape[1]):
                tokens = transformer.vace_patch_embedding(contexts[:, j]).flatten(2).transpose(1, 2)
                pad = tokens.new_zeros(tokens.shape[0], hidden.shape[1] - tokens.shape[1], tokens.shape[2])
                states.append(torch.cat([tokens, pad], dim=1))
        out = [block.forward(hidden, encoder, state, temb, rotary) for state in states]
        states[:] = [state for _hint, state in out]
        hints.append([hint for hint, _state in out])

    def add(index):
        def hook(_block, _args, output):
            return output + sum(hint * scales[j] for j, hint in enumerate(hints[index]))
        return hook

    handles = [block.register_forward_hook(step) for block in transformer.vace_blocks]
    handles += [transformer.blocks[layer].register_forward_hook(add(k))
                for k, layer in enumerate(transformer.config.vace_layers)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def vace_inputs(model, extra: dict) -> dict:
    """A VACE model's control contexts [1, n, 96, T, h, w] (one per chained WanVaceToVideo: its inactive
    and reactive latents, each in model space, then its 64-channel mask; without any, ComfyUI's default
    of zero latents and a full mask) and their strengths [1, n]."""
    import torch

    from genloom.diffusion.sampling.latent_formats import of_model

    frames, masks = extra.get("vace_frames"), extra.get("vace_mask")
    if frames is None:
        shape = list(extra["latent_image"].shape)
        frames = [torch.zeros([1, 32, *shape[2:]])]
    if masks is None:
        masks = [torch.ones([1, 64, *frames[0].shape[2:]])] * len(frames)
    strengths = extra.get("vace_strength") or [1.0] * len(frames)
    if not len(frames) == len(masks) == len(strengths):
        raise SamplingError(f"VACE conditioning with {len(frames)} control videos, {len(masks)} masks and "
                            f"{len(strengths)} strengths; each WanVaceToVideo adds one of each")
    fmt = of_model(model)
    contexts = []
    for latents, mask in zip(frames, masks):
        latents = latents.float()
        halves = [fmt.process_in(latents[:, i:i + 16]) for i in range(0, latents.shape[1], 16)]
        contexts.append(torch.cat([*halves, mask.float().to(latents.device)], dim=1))
    if len({tuple(c.shape) for c in contexts}) > 1:
        raise SamplingError("chained WanVaceToVideo nodes made control contexts of different sizes "
                            f"{sorted({tuple(c.shape) for c in contexts})}; give them one width, height and length")
    return {"vace_context": torch.stack(contexts, dim=1), "vace_scale": torch.tensor([[float(s) for s in strengths]])}


def concat_channels(model, extra: dict, channels: int):
    """The `channels` [B, channels, T, h, w] the network takes after the latent, by ComfyUI's rule: the
    given latents (each latent-wide slice in model space; zeros when none are given), and where the
    network takes four channels more, the mask of given frames as 1 - mask (ComfyUI's concat_mask is 0
    where a frame is given; one channel spread to four), ahead of them or at `concat_mask_index` (Wan 2.2
    Fun Control puts it between the control and the start latents)."""
    import torch

    from genloom.diffusion.sampling.latent_formats import of_model

    given = extra.get("concat_latent_image")
    if given is None:
        return torch.zeros([1, channels, *extra["latent_image"].shape[2:]])
    width, fmt, given = model.latent_channels, of_model(model), given.float()
    image = torch.cat([fmt.process_in(given[:, i:i + width]) for i in range(0, given.shape[1], width)], dim=1)
    if image.shape[1] == channels:
        return image
    if not 0 < channels - 4 <= image.shape[1]:
        raise SamplingError(f"this Wan model takes {channels} channels beside the latent; the conditioning's "
                            f"concat_latent_image has {image.shape[1]} (use the conditioning node made for it)")
    image = image[:, :channels - 4]
    mask = extra.get("concat_mask")
    mask = extra.get("denoise_mask") if mask is None else mask
    if mask is None:
        given_mask = torch.zeros_like(image[:, :4])
    else:
        mask = mask.float()
        mask = 1.0 - (mask if mask.shape[1] == 4 else mask.mean(dim=1, keepdim=True))
        if mask.shape[2] < image.shape[2]:  # frames the mask does not reach count as not given
            mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, image.shape[2] - mask.shape[2]))
        given_mask = mask.expand(image.shape[0], 4, *image.shape[2:])
    index = int(extra.get("concat_mask_index") or 0)
    return torch.cat([image[:, :index], given_mask, image[:, index:]], dim=1)


def build(state: dict, *, dtype, name: str) -> ModelHandle:
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    from genloom.diffusion.sampling import model_sampling

    if "head.modulation" not in state:  # a diffusers-keyed file
        state = to_original(state)
    config = config_from_shapes({k: tuple(v.shape) for k, v in state.items()})
    converted = to_diffusers(state)
    cls = WanVACETransformer3DModel if "vace_layers" in config else WanTransformer3DModel
    reference = converted.get("ref_conv.weight")  # Wan 2.2 Fun Control's reference-image layer

    def buffers(module) -> None:
        _rope(module)
        if reference is not None:
            _add_ref_conv(module, tuple(reference.shape))

    module = build_module(cls, config, converted, "Wan transformer", buffers=buffers)
    exact_keys(converted, module.state_dict().keys(), "Wan transformer")  # nothing left unused either
    channels = config["out_channels"]
    if channels not in (16, 48):
        raise CheckpointError(f"a Wan transformer with {channels} latent channels: Wan 2.1 and Wan 2.2 14B "
                              "have 16, Wan 2.2 5B 48")
    wan22 = channels == 48  # Wan 2.2 TI2V 5B: its own latent format and VAE (16x), per-frame timesteps
    return WanHandle(unet=module, latent_channels=channels, vae_scale_factor=16 if wan22 else 8, name=name,
                     prediction_type="flow", sampling=model_sampling.flow(shift=8.0),
                     latent_format=wan22_format() if wan22 else wan21_format(), per_frame_timesteps=wan22)


def _add_ref_conv(module, shape) -> None:
    """Wan 2.2 Fun's reference-image layer (a 2-D patch embedding diffusers' class lacks), on meta like
    the rest, filled from the file with it."""
    import torch

    width, channels, kh, kw = shape
    with torch.device("meta"):
        module.ref_conv = torch.nn.Conv2d(channels, width, kernel_size=(kh, kw), stride=(kh, kw))


def _rope(module) -> None:
    """The rotary tables are computed, not stored: build them on the CPU (the rest is on meta)."""
    rope = module.rope
    module.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)


def save_original(transformer, path, prefix: str = "") -> None:
    """Write a WanTransformer3DModel in the original layout (`prefix` e.g. "model.diffusion_model.")."""
    from safetensors.torch import save_file

    tensors = {prefix + k: v.contiguous() for k, v in to_original(transformer.state_dict()).items()}
    save_file(tensors, str(path))
