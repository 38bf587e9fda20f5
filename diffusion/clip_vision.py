"""CLIP vision encoders (ComfyUI's CLIP_VISION / CLIP_VISION_OUTPUT) on transformers'
CLIPVisionModelWithProjection, and SigLIP vision towers (SiglipVisionModel: the image encoder of
Flux Redux, sigclip_vision_patch14_384) on the same path.

Files load in the layouts users have: transformers' keys (vision_model.*, visual_projection.weight,
as ComfyUI's clip_vision files and the released ViT-L/H/bigG models ship them) and open-clip's
(visual.conv1 ..., visual.transformer.resblocks.N ..., visual.proj, optionally under a prefix such as
a checkpoint's "embedder.model." or "clip_vision."). The configuration is read from the shapes; the
head count, which shapes cannot show, follows the released models (ViT-B 12, L/H/bigG 16, otherwise
64 channels a head) and the activation too (OpenAI's ViT-L quick_gelu, the LAION models gelu).

A SigLIP file is told apart by its embeddings (no class token, no pre-layernorm): its
configuration comes from the shapes too (So400m's 1152 width has 16 heads, gelu_pytorch_tanh,
layer norm eps 1e-6); it is normalised with mean = std = 0.5, and, as ComfyUI's, its image_embeds
are the whole post-layernormed sequence (last_hidden_state; the attention-pooling head is unused).

Encoding follows ComfyUI's clip_preprocess: a picture not already the model's size is resized
bicubically (antialiased) so its short side fits and centre-cropped ("center"), or squashed to the
square ("none"); values are quantised to 1/255 and normalised with CLIP's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genloom.diffusion.errors import CheckpointError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16, 1152: 16}
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
OPEN_CLIP_LAYER = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                   ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
OPEN_CLIP_PREFIXES = ("visual.", "embedder.model.visual.", "clip_vision.visual.", "model.visual.")


class ClipVisionOutput(dict):
    """What CLIPVisionEncode returns, readable as attributes and items as ComfyUI's Output is:
    last_hidden_state [B, T, D], penultimate_hidden_states [B, T, D] (the next-to-last layer's
    output), image_embeds [B, P] (the projected, post-normed class token)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


@dataclass(frozen=True, eq=False)
class ClipVisionHandle:
    model: Any  # CLIPVisionModelWithProjection or SiglipVisionModel
    name: str = ""

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def siglip(self) -> bool:
        return self.model.config.model_type == "siglip_vision_model"

    def encode_image(self, image, crop: bool = True) -> ClipVisionOutput:
        import torch

        from genloom.diffusion.models.owner import model_owner

        pixels = preprocess(image, self.image_size, crop, *((SIGLIP_MEAN, SIGLIP_STD) if self.siglip else ()))
        with torch.no_grad(), model_owner().memory.use(self.model, None) as model:
            param = next(model.parameters())
            out = model(pixel_values=pixels.to(param.device, param.dtype), output_hidden_states=True)
        cpu = lambda t: t.float().cpu()  # noqa: E731
        return ClipVisionOutput(last_hidden_state=cpu(out.last_hidden_state),
                                penultimate_hidden_states=cpu(out.hidden_states[-2]),
                                image_embeds=cpu(out.last_hidden_state if self.siglip else out.image_embeds))


def preprocess(image, size: int, crop: bool = True, mean=MEAN, std=STD):
    """IMAGE [B, H, W, C] 0..1 -> normalised pixel values [B, 3, size, size] (see the module doc)."""
    import torch
    import torch.nn.functional as F

    x = image[..., :3].movedim(-1, 1).float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        target = (round(scale * h), round(scale * w)) if crop else (size, size)
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top:top + size, left:left + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    return (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


def from_open_clip(state: dict, prefix: str) -> dict:
    """open-clip visual tower keys under `prefix` -> transformers CLIPVisionModelWithProjection keys."""
    import torch

    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out = {}
    simple = {"conv1.weight": "vision_model.embeddings.patch_embedding.weight",
              "class_embedding": "vision_model.embeddings.class_embedding",
              "positional_embedding": "vision_model.embeddings.position_embedding.weight"}
    for key, tensor in sub.items():
        if key in simple:
            out[simple[key]] = tensor
        elif key.startswith(("ln_pre.", "ln_post.")):
            name = "pre_layrnorm" if key.startswith("ln_pre.") else "post_layernorm"
            out[f"vision_model.{name}.{key.split('.')[-1]}"] = tensor
        elif key == "proj":
            out["visual_projection.weight"] = tensor.t().contiguous()
        elif key.startswith("transformer.resblocks."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            base = f"vision_model.encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.split("_")[-1]
                for p, chunk in zip("qkv", torch.chunk(tensor, 3, dim=0)):
                    out[f"{base}self_attn.{p}_proj.{kind}"] = chunk.contiguous()
                continue
            for a, b in OPEN_CLIP_LAYER:
                if rest.startswith(a + "."):
                    out[base + b + rest[len(a):]] = tensor
    return out


def vision_state(state: dict) -> dict:
    """A CLIP vision file's tensors in transformers' names (see the module doc)."""
    for prefix in ("", "clip_vision.", "image_encoder."):
        if f"{prefix}vision_model.embeddings.patch_embedding.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
                    and not k.endswith("position_ids")}
    for prefix in OPEN_CLIP_PREFIXES:
        if f"{prefix}conv1.weight" in state:
            return from_open_clip(state, prefix)
    raise CheckpointError("not a CLIP vision model (no vision_model.* or visual.* weights)")


def _tower_config(state: dict, class_tokens: int) -> dict:
    """What the shapes of a vision tower (transformers' names) say, CLIP's and SigLIP's alike."""
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, size = int(patch.shape[0]), int(patch.shape[-1])
    positions = int(state["vision_model.embeddings.position_embedding.weight"].shape[0]) - class_tokens
    layers = len({k.split(".")[3] for k in state if k.startswith("vision_model.encoder.layers.")})
    return {"hidden_size": hidden, "patch_size": size, "image_size": round(positions ** 0.5) * size,
            "num_hidden_layers": layers, "num_attention_heads": HEADS.get(hidden, max(1, hidden // 64)),
            "intermediate_size": int(state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            "num_channels": int(patch.shape[1])}


def config_from_state(state: dict) -> dict:
    config = _tower_config(state, class_tokens=1)
    projection = state.get("visual_projection.weight")
    return {**config, "projection_dim": int(projection.shape[0]) if projection is not None else config["hidden_size"],
            "hidden_act": "quick_gelu" if config["hidden_size"] == 1024 else "gelu", "layer_norm_eps": 1e-5}


def siglip_config(state: dict) -> dict:
    """A SigLIP vision tower's configuration from its shapes (no class token)."""
    return {**_tower_config(state, class_tokens=0), "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
            "vision_use_head": "vision_model.head.probe" in state}


def _siglip(state: dict, name: str) -> ClipVisionHandle:
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from genloom.diffusion.models.loading import build_module

    config = SiglipVisionConfig(**siglip_config(state))
    with torch.device("meta"):  # transformers' own names for the tower: with or without "vision_model."
        prefixed = any(k.startswith("vision_model.") for k in SiglipVisionModel(config).state_dict())
    if not prefixed:
        state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    model = build_module(SiglipVisionModel, config.to_dict(), state, "SigLIP vision model")
    return ClipVisionHandle(model=model, name=name)


def clip_vision_from_state(state: dict, name: str) -> ClipVisionHandle:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from genloom.diffusion.models.loading import build_module

    state = vision_state(state)
    if "vision_model.embeddings.class_embedding" not in state:
        return _siglip(state, name)
    config = CLIPVisionConfig(**config_from_state(state))
    model = build_module(CLIPVisionModelWithProjection, config.to_dict(), state, "CLIP vision model")
    return ClipVisionHandle(model=model, name=name)


@dataclass(frozen=True, eq=False)
class VisionBundle:
    """What the loaded-model cache keeps for one file (owner.LoadedModels holds its fields weakly)."""

    clip_vision: ClipVisionHandle


def load_clip_vision(path) -> VisionBundle:
    from pathlib import Path

    from genloom.diffusion.models.weights import read_state_dict

    state, _meta = read_state_dict(Path(path))
    return VisionBundle(clip_vision_from_state(state, Path(path).stem))
