"""Builds MODEL/CLIP/VAE handles from diffusers folders and from component state dicts.

Loaded components are shared through the engine's ModelOwner (`owner.model_owner().loaded`): a second
loader node naming the same unchanged file gets the same modules (and so the same memory-manager
entries) instead of a second copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from .handles import ClipHandle, ModelHandle, VaeHandle
from .weights import read_state_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # diffusion/configs
TOKENIZER_FILES = CONFIGS / "clip_tokenizer"


@dataclass(frozen=True, eq=False)
class Bundle:
    model: ModelHandle | None
    clip: ClipHandle | None
    vae: VaeHandle | None


def load_dtype(stored):
    """Keep the stored precision, except half precision on a CPU run (slow and lossy there)."""
    import torch

    from genloom.engine import context

    wanted = (context.current().options or {}).get("dtype")
    if wanted:
        return getattr(torch, str(wanted))
    if context.current().device == "cpu" and stored in (torch.float16, torch.bfloat16):
        return torch.float32
    return stored


def kind_of(unet_config: dict, text_configs: list[dict]) -> str:
    if unet_config.get("addition_embed_type") == "text_time" and len(text_configs) == 2:
        return "sdxl"
    if unet_config.get("addition_embed_type") == "text_time" and len(text_configs) <= 1:
        return "sdxl_refiner"  # CLIP-G only, aesthetic-score time ids
    if unet_config.get("use_linear_projection") or (text_configs and text_configs[0].get("hidden_act") == "gelu"):
        return "sd2"
    return "sd1"


def make_tokenizer(folder: Path | None = None, pad_token: str | None = None, max_length: int = 77):
    """A CLIP tokenizer from a folder, or the shipped OpenAI CLIP vocabulary."""
    from transformers import CLIPTokenizer

    if folder is not None and any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    kwargs = {}
    if folder is not None and (folder / "tokenizer_config.json").is_file():
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        pad_token = pad_token or cfg.get("pad_token")
        max_length = cfg.get("model_max_length", max_length)
    if pad_token:
        kwargs["pad_token"] = pad_token
    return CLIPTokenizer(str(TOKENIZER_FILES / "vocab.json"), str(TOKENIZER_FILES / "merges.txt"),
                         model_max_length=max_length, **kwargs)


_HINT = ("; a model of non-standard size needs its diffusers folder or a single file written by "
         "genloom's save_single_file, which carries its configuration")


def build_module(cls, config: dict, state: dict, what: str, buffers=None):
    """Instantiate `cls` from `config` without random init, then take the weights from `state`.

    `buffers(module)` may set the computed buffers no file holds (rotary tables) for real, right after
    the module is built on the meta device."""
    import torch

    config = {k: v for k, v in config.items() if k not in ("_name_or_path",)}
    with torch.device("meta"):
        if hasattr(cls, "from_config") and not hasattr(cls, "config_class"):
            module = cls.from_config(config)
        else:
            module = cls(cls.config_class(**config))
    if buffers is not None:
        buffers(module)
    expected = set(module.state_dict().keys())
    state = {_expected_name(k, expected): v for k, v in state.items()}
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(f"the {what} weights do not fit its configuration ({len(missing)} missing, e.g. "
                         f"{missing[:3]}){_HINT}")
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    dtype = load_dtype(stored)
    try:
        module.load_state_dict({k: (v.to(dtype) if v.is_floating_point() else v)
                                for k, v in state.items() if k in expected}, strict=True, assign=True)
    except RuntimeError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CheckpointError(f"the {what} weights do not fit its configuration ({detail[:300]}){_HINT}") from None
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            if not name.endswith("position_ids"):
                raise CheckpointError(f"the {what} has an unset buffer {name}")
            owner = module.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape),
                                  persistent=False)
    return module.eval().requires_grad_(False)


def _expected_name(key: str, expected: set) -> str:
    """transformers nests CLIP weights under 'text_model.' in some classes and versions only."""
    if key in expected:
        return key
    if "text_model." + key in expected:
        return "text_model." + key
    return key.removeprefix("text_model.")


def handles_from_components(components: dict, configs: dict, tokenizers: list, name: str) -> Bundle:
    """configs: {'unet', 'vae', 'text_encoder', 'text_encoder_2'?, 'scheduler'} dicts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = vae = None
    encoders = []
    if "unet" in components:
        unet = build_module(UNet2DConditionModel, configs["unet"], components["unet"], "UNet")
    if "vae" in components:
        vae = build_module(AutoencoderKL, configs["vae"], components["vae"], "VAE")
    for part in ("text_encoder", "text_encoder_2"):
        if part in components:
            arch = (configs[part].get("architectures") or ["CLIPTextModel"])[0]
            cls = CLIPTextModelWithProjection if "Projection" in arch else CLIPTextModel
            encoders.append(build_module(cls, configs[part], components[part], part.replace("_", " ")))
    return assemble(unet, vae, encoders, tokenizers, configs.get("scheduler") or {}, name)


def assemble(unet, vae, encoders, tokenizers, scheduler_config: dict, name: str) -> Bundle:
    unet_cfg = dict(unet.config) if unet is not None else {}
    kind = kind_of(unet_cfg, [e.config.to_dict() for e in encoders]) if unet is not None else "sd1"
    model = clip = vae_handle = None
    if unet is not None:
        vae_scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        sched = dict(scheduler_config)
        from .unclip_model import UnclipHandle, is_unclip_unet

        handle = UnclipHandle if is_unclip_unet(unet) else ModelHandle  # SD2 unCLIP: image-embedding input
        model = handle(unet=unet, scheduler_config=sched, kind=kind,
                       prediction_type=sched.get("prediction_type") or "epsilon",
                       latent_channels=int(unet_cfg.get("out_channels", 4)), vae_scale_factor=vae_scale,
                       name=name)
    if encoders:
        clip = ClipHandle(tokenizers=tuple(tokenizers), text_encoders=tuple(encoders), kind=kind, name=name)
    if vae is not None:
        vae_handle = VaeHandle(vae=vae, name=name)
    return Bundle(model, clip, vae_handle)


def load_diffusers_folder(path: Path) -> Bundle:
    """A diffusers pipeline folder (model_index.json + component subfolders), offline.

    Components are built on the meta device and given the stored weights: no random init, which
    for a full-size UNet would cost longer than reading it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    index = json.loads((path / "model_index.json").read_text())

    def part(sub, cls, what):
        config = json.loads((path / sub / "config.json").read_text())
        return build_module(cls, config, _folder_weights(path / sub), what)

    unet = part("unet", UNet2DConditionModel, "UNet")
    vae = part("vae", AutoencoderKL, "VAE") if (path / "vae" / "config.json").is_file() else None
    encoders, tokenizers = [], []
    for sub, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if sub not in index or not (path / sub / "config.json").is_file():
            continue
        arch = index[sub][1] if isinstance(index[sub], list) else "CLIPTextModel"
        cls = CLIPTextModelWithProjection if "Projection" in str(arch) else CLIPTextModel
        encoders.append(part(sub, cls, sub.replace("_", " ")))
        tokenizers.append(make_tokenizer(path / tok))
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    return assemble(unet, vae, encoders, tokenizers, sched, path.name)


def _folder_weights(folder: Path) -> dict:
    """All weights of one component folder (sharded or not; .bin only through weights-only loading)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise CheckpointError(f"{folder.name}/ has no weights (.safetensors or .bin)")
    state = {}
    for file in files:
        state.update(read_state_dict(file)[0])
    return state
