"""Single-file checkpoints in the original (LDM) layout: reading, detecting, loading and writing.

genloom's own single files carry what they need to load anywhere, in the safetensors metadata:
  "genloom.format": "1"
  "genloom.kind": "sd1" | "sd2" | "sdxl" | "sdxl_refiner"
  "genloom.configs": JSON {"unet": ..., "vae": ..., "text_encoder": ..., "text_encoder_2"?: ...,
                           "scheduler": ...}   (the diffusers config dicts)
  "genloom.tokenizers": JSON [{file name: text, ...}, ...] per tokenizer; only its settings
                        files when it uses the shipped CLIP vocabulary (diffusion/configs).
Other checkpoints are recognised by their key families (SD1: cond_stage_model.transformer, SD2:
cond_stage_model.model, SDXL: conditioner.embedders, the SDXL refiner: conditioner.embedders.0.model
alone) and loaded with the shipped configs in
diffusion/configs/<kind>/, with input/output/latent channels read from the weights. All-in-one
transformer checkpoints (SD3/SD3.5, Flux) load part by part: the diffusion model through its family
(families/), the text encoders as their own files would (text_encoders.py), the VAE from its shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

from genloom.diffusion.errors import CheckpointError

from . import keymaps
from .loading import CONFIGS, TOKENIZER_FILES, Bundle, handles_from_components, kind_of, make_tokenizer
from .weights import exact_keys, read_header, read_state_dict

TEXT_PARTS = ("text_encoder", "text_encoder_2")
# All-in-one transformer checkpoints (SD3/SD3.5, Flux): the diffusion model under
# model.diffusion_model.* (a family of families/), text encoders under text_encoders.<role>.transformer.*,
# the VAE under first_stage_model.*
TRANSFORMER_KEYS = ("model.diffusion_model.joint_blocks.", "model.diffusion_model.double_blocks.")


def detect_kind(state: dict) -> str:
    keys = state.keys()
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return "sdxl_refiner"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    if any(k.startswith(TRANSFORMER_KEYS) for k in keys):
        return "dit"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise CheckpointError("this checkpoint has a diffusion model but no known text encoder "
                              "(SD1/SD2/SDXL); only those architectures load from a single file")
    raise CheckpointError("not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)")


def checkpoint_problem(path: Path) -> str | None:
    """Why CheckpointLoaderSimple could not use this single file, judged from its header; None when
    it can (or when only loading can tell: pickled .ckpt files are not opened at validation)."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    try:
        shapes, meta = read_header(path)
    except CheckpointError as exc:
        return str(exc)
    if "genloom.configs" in meta:
        return None
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] not in (4, 9):
        return (f"a {conv_in[1]}-channel UNet input: genloom samples regular (4) and inpainting (9) "
                "UNets only")
    try:
        detect_kind(shapes)
    except CheckpointError as exc:
        return str(exc)
    return None


def shipped_configs(kind: str) -> dict:
    folder = CONFIGS / kind
    configs = {part: json.loads((folder / part / "config.json").read_text())
               for part in ("unet", "vae") + TEXT_PARTS if (folder / part / "config.json").is_file()}
    configs["scheduler"] = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return configs


def _fit_to_weights(configs: dict, state: dict) -> None:
    """Adjust the shipped configs to what the weights say (inpainting UNets, VAE latent size...)."""
    w = state.get("model.diffusion_model.input_blocks.0.0.weight")
    if w is not None:
        configs["unet"]["in_channels"] = int(w.shape[1])
        configs["unet"]["block_out_channels"][0] = int(w.shape[0])
    w = state.get("model.diffusion_model.out.2.weight")
    if w is not None:
        configs["unet"]["out_channels"] = int(w.shape[0])
    w = state.get("first_stage_model.quant_conv.weight")
    if w is not None:
        configs["vae"]["latent_channels"] = int(w.shape[0]) // 2
    w = state.get("model.diffusion_model.label_emb.0.0.weight")
    if w is not None and "addition_embed_type" not in configs["unet"]:  # SD2 unCLIP (unclip_model.py)
        configs["unet"].update(class_embed_type="projection", projection_class_embeddings_input_dim=int(w.shape[1]))


def _stored_tokenizers(meta: dict, kind: str, configs: dict) -> list:
    import tempfile

    if "genloom.tokenizers" not in meta:
        folder = CONFIGS / kind
        parts = ["tokenizer", "tokenizer_2"][: sum(p in configs for p in TEXT_PARTS)]
        return [make_tokenizer(folder / p) for p in parts]
    toks = []
    for files in json.loads(meta["genloom.tokenizers"]):
        with tempfile.TemporaryDirectory() as tmp:
            if "vocab.json" not in files and "tokenizer.json" not in files:
                for name in ("vocab.json", "merges.txt"):
                    files[name] = (TOKENIZER_FILES / name).read_text(encoding="utf-8")
            for name, text in files.items():
                (Path(tmp) / Path(name).name).write_text(text, encoding="utf-8")
            toks.append(make_tokenizer(Path(tmp)))
    return toks


def split_components(state: dict, kind: str, configs: dict) -> dict:
    """LDM single-file tensors -> diffusers state dicts per component (no "vae" when it has none)."""
    prefixes = keymaps.PREFIXES[kind]
    out = {"unet": keymaps.unmap_keys(state, keymaps.unet_map(configs["unet"]), prefixes["unet"], "unet")}
    if any(k.startswith(prefixes["vae"]) for k in state):
        out["vae"] = keymaps.unmap_keys(state, keymaps.vae_map(configs["vae"]), prefixes["vae"], "vae")
    for part in TEXT_PARTS:
        if part in prefixes and part in configs:
            layout, prefix = prefixes[part]
            out[part] = keymaps.text_from_ldm(state, layout, prefix, configs[part].get("num_hidden_layers"))
    return out


def load_single_file(path: Path) -> Bundle:
    state, meta = read_state_dict(path)
    return bundle_from_state(state, meta, Path(path).stem)


def bundle_from_state(state: dict, meta: dict, name: str) -> Bundle:
    """A single file's tensors and metadata -> its handles (what unCLIPCheckpointLoader shares with
    CheckpointLoaderSimple, reading the file once)."""
    if "genloom.configs" not in meta and detect_kind(state) == "dit":
        return load_transformer_checkpoint(state, name)
    if "genloom.configs" in meta:
        kind = meta.get("genloom.kind", "sd1")
        configs = json.loads(meta["genloom.configs"])
    else:
        kind = detect_kind(state)
        configs = shipped_configs(kind)
        _fit_to_weights(configs, state)
    tokenizers = _stored_tokenizers(meta, kind, configs)
    components = split_components(state, kind, configs)
    return handles_from_components(components, configs, tokenizers, name)


def load_transformer_checkpoint(state: dict, name: str) -> Bundle:
    """An all-in-one SD3/Flux file: each part loaded as its separate file would be."""
    from .families import build_from_state
    from .text_encoders import ROLES, clip_from_encoders, text_encoder_from_state

    model = build_from_state({k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}, name)
    encoders = []
    for role in ROLES:
        prefix = f"text_encoders.{role}.transformer."
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            encoders.append(text_encoder_from_state(part, f"{name} {role}", role))
    clip = clip_from_encoders(encoders, model.kind, name) if encoders else None
    vae = None
    if any(k.startswith("first_stage_model.") for k in state):
        vae = vae_from_state(state, name).vae
    return Bundle(model, clip, vae)


def vae_config_from_shapes(state: dict, name: str = "") -> dict:
    """A VAE's diffusers config read from its shapes, LDM or diffusers keys (the 16-channel SD3 and
    Flux VAEs; their scaling factors only say which: the MODEL's latent format is what sampling uses)."""
    ldm = "encoder.down.0.block.0.conv1.weight" in state
    down, block = ("encoder.down.", "block") if ldm else ("encoder.down_blocks.", "resnets")
    n = len({k.split(".")[2] for k in state if k.startswith(down)})
    flux = "flux" in name.lower() or name.lower() in ("ae", "flux_ae")
    quant = "quant_conv.weight" in state
    return {"_class_name": "AutoencoderKL", "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
            "latent_channels": int(state["encoder.conv_out.weight"].shape[0]) // 2,
            "block_out_channels": [int(state[f"{down}{i}.{block}.0.conv2.weight"].shape[0]) for i in range(n)],
            "layers_per_block": len({k.split(".")[4] for k in state if k.startswith(f"{down}0.{block}.")}),
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "act_fn": "silu", "norm_num_groups": 32, "sample_size": 1024,
            "use_quant_conv": quant, "use_post_quant_conv": "post_quant_conv.weight" in state,
            "scaling_factor": 0.3611 if flux else 1.5305, "shift_factor": 0.1159 if flux else 0.0609}


def load_vae_file(path: Path) -> Bundle:
    state, meta = read_state_dict(path)
    if "genloom.configs" in meta:
        config = json.loads(meta["genloom.configs"])["vae"]
        return handles_from_components({"vae": _vae_state(state, config)}, {"vae": config}, [], Path(path).stem)
    return vae_from_state(state, Path(path).stem)


def _vae_state(state: dict, config: dict) -> dict:
    if any(k.startswith("first_stage_model.") for k in state):
        state = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")}
    if not any(".down_blocks." in k or ".up_blocks." in k for k in state):
        state = keymaps.unmap_keys(state, keymaps.vae_map(config), "", "vae")
    return state


def vae_from_state(state: dict, name: str) -> Bundle:
    """A standalone VAE (or a checkpoint's first_stage_model.*): LDM or diffusers keys.

    Shapes cannot tell an SDXL VAE from an SD one, only their scaling factor differs: without
    genloom metadata, a file whose name contains "xl" gets SDXL's (0.13025), others SD's (0.18215).
    16-channel VAEs (SD3's, Flux's `ae`) get their config from their shapes, every key accounted for."""
    state = {k[len("first_stage_model."):]: v for k, v in state.items() if k.startswith("first_stage_model.")} \
        or state
    from . import flux2_vae, wan_vae

    if wan_vae.detect(state):  # the Wan 2.1 VAE layout: Wan's, and Qwen-Image's (the same network)
        return Bundle(None, None, wan_vae.build(state, name))
    if flux2_vae.detect(state):  # Flux.2's VAE: its batch-norm latent statistics inside
        return Bundle(None, None, flux2_vae.build(state, name))
    conv_out = state.get("encoder.conv_out.weight")
    if conv_out is not None and int(conv_out.shape[0]) // 2 == 16:
        config = vae_config_from_shapes(state, name)
        converted = state
        if "encoder.down.0.block.0.conv1.weight" in state:
            table = keymaps.vae_map(config)
            converted = keymaps.unmap_keys(state, table, "", "vae")
            known = set(keymaps.map_keys(converted, table, "", "vae"))
            converted = {**converted, **{k: v for k, v in state.items() if k not in known}}
        exact_keys(converted, _vae_expected(config), f"VAE {name}")
        return handles_from_components({"vae": converted}, {"vae": config}, [], name)
    config = shipped_configs("sdxl" if "xl" in name.lower() else "sd1")["vae"]
    w = state.get("quant_conv.weight")
    if w is not None:
        config["latent_channels"] = int(w.shape[0]) // 2
    state = _vae_state(state, config)
    if not state:
        raise CheckpointError(f"{name} holds no VAE weights")
    return handles_from_components({"vae": state}, {"vae": config}, [], name)


def _vae_expected(config: dict) -> set:
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return set(AutoencoderKL.from_config(config).state_dict())


# -- writing ------------------------------------------------------------------------------------

def _tokenizer_files(folder: Path) -> dict:
    """The tokenizer's text files; just its settings when it uses the shipped CLIP vocabulary."""
    files = {f.name: f.read_text(encoding="utf-8") for f in sorted(folder.glob("*"))
             if f.is_file() and f.suffix in (".json", ".txt")}
    tok = make_tokenizer(folder)
    shipped = json.loads((TOKENIZER_FILES / "vocab.json").read_text(encoding="utf-8"))
    if tok.get_vocab() == shipped:
        return {k: v for k, v in files.items() if k in ("tokenizer_config.json", "special_tokens_map.json")}
    return files


def save_single_file(diffusers_dir, out_path, dtype=None) -> Path:
    """Write a diffusers SD1/SD2/SDXL folder as one original-layout .safetensors file.

    The file loads in tools that expect LDM keys and, through its metadata, in genloom with no
    external config whatever its size. `dtype` (e.g. torch.float16) casts floating tensors."""
    from safetensors.torch import load_file, save_file

    src, out_path = Path(diffusers_dir), Path(out_path)
    index = json.loads((src / "model_index.json").read_text())
    configs = {"unet": json.loads((src / "unet" / "config.json").read_text()),
               "vae": json.loads((src / "vae" / "config.json").read_text())}
    for part in TEXT_PARTS:
        if (src / part / "config.json").is_file() and part in index:
            configs[part] = json.loads((src / part / "config.json").read_text())
    sched = src / "scheduler" / "scheduler_config.json"
    configs["scheduler"] = json.loads(sched.read_text()) if sched.is_file() else {}
    kind = kind_of(configs["unet"], [configs[p] for p in TEXT_PARTS if p in configs])
    prefixes = keymaps.PREFIXES[kind]

    def weights(part):
        files = sorted((src / part).glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{src / part} has no .safetensors weights")
        merged = {}
        for f in files:
            merged.update(load_file(str(f)))
        return merged

    tensors = {}
    tensors.update(keymaps.map_keys(weights("unet"), keymaps.unet_map(configs["unet"]), prefixes["unet"], "unet"))
    tensors.update(keymaps.map_keys(weights("vae"), keymaps.vae_map(configs["vae"]), prefixes["vae"], "vae"))
    tokenizers = []
    for part, tok in zip(TEXT_PARTS, ("tokenizer", "tokenizer_2")):
        if part not in configs:
            continue
        layout, prefix = prefixes[part]
        tensors.update(keymaps.text_to_ldm(weights(part), layout, prefix))
        tokenizers.append(_tokenizer_files(src / tok))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"genloom.format": "1", "genloom.kind": kind, "genloom.configs": json.dumps(configs),
            "genloom.tokenizers": json.dumps(tokenizers)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(out_path)
    return out_path
