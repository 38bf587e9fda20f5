"""Loader nodes: checkpoints, diffusers folders, VAEs, LoRAs and CLIP skip."""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.errors import ModelLoadError, NodeInputError
from genloom.engine.folders import UnsafePath
from genloom.engine.node import Combo, Float, Input, Int, Node, Out


def model_names(kind: str):
    """A COMBO's options: the models of one kind in the model folders."""
    return lambda: context.current().folders.list_models(kind)


def _resolve(input_name: str, kind: str, name: str):
    """A model path from a combo value, only ever inside the model folders."""
    if not isinstance(name, str) or not name:
        raise NodeInputError(input_name, f"needs a {kind} model name")
    try:
        return context.current().folders.model_path(kind, name)
    except UnsafePath as exc:
        raise NodeInputError(input_name, str(exc)) from None
    except FileNotFoundError:
        raise NodeInputError(input_name, f"no {kind} model named {name!r}") from None


def _checkpoint_problem(name) -> str | None:
    """Validation's look inside a listed checkpoint: what the loader would refuse, said before the run."""
    from genloom.diffusion.models.single_file import checkpoint_problem

    try:
        path = context.current().folders.model_path("checkpoints", str(name))
    except (OSError, ValueError):
        return None  # not there: the COMBO check already said so
    return checkpoint_problem(path)


def model_stamp(kind: str, name: str) -> str:
    """A loader's fingerprint: changes whenever the model's file does."""
    return context.current().folders.model_stamp(kind, name)


def load_model_file(input_name: str, kind: str, name: str, load):
    """`load(path)` for the model file a combo names; a file it cannot read (a CheckpointError of the
    library) is a ModelLoadError naming the input."""
    from genloom.diffusion.errors import CheckpointError

    path = _resolve(input_name, kind, name)
    try:
        return load(path)
    except CheckpointError as exc:
        raise ModelLoadError(input_name, str(exc)) from exc


def _load(input_name: str, path, build, tag: str = ""):
    """`build()` through the engine's loaded-model cache; `tag` keeps loads of one file that build
    different bundles (a whole checkpoint, or only its VAE) apart."""
    from genloom.diffusion.models.owner import model_owner

    try:
        return model_owner().loaded.get(path, build, tag)
    except (ValueError, OSError) as exc:
        raise ModelLoadError(input_name, f"cannot load {path.name}: {exc}") from exc


class CheckpointLoaderSimple(Node):
    """Loads a checkpoint (SD1.x, SD2.x, SDXL, or an all-in-one SD3/SD3.5 file) with its text encoder and VAE."""

    category = "loaders"
    display_name = "Load Checkpoint"
    inputs = [Combo("ckpt_name", model_names("checkpoints"), tooltip="The checkpoint file to load.",
                    check=_checkpoint_problem)]
    outputs = [Out("MODEL", tooltip="The model that denoises latents."),
               Out("CLIP", tooltip="The text encoder that turns prompts into conditioning."),
               Out("VAE", tooltip="The autoencoder between images and latents.")]

    @classmethod
    def fingerprint(cls, ckpt_name):
        return model_stamp("checkpoints", ckpt_name)

    def run(self, ckpt_name):
        from genloom.diffusion.models.single_file import load_single_file

        path = _resolve("ckpt_name", "checkpoints", ckpt_name)
        b = _load("ckpt_name", path, lambda: load_single_file(path))
        return (b.model, b.clip, b.vae)


class DiffusersLoader(Node):
    """Loads a diffusers pipeline folder (SD1.x, SD2.x, SDXL layout) from models/diffusers."""

    category = "loaders"
    display_name = "Load Diffusers Model"
    inputs = [Combo("model_name", model_names("diffusers"), tooltip="The diffusers model folder to load.")]
    outputs = [Out("MODEL"), Out("CLIP"), Out("VAE")]

    @classmethod
    def fingerprint(cls, model_name):
        return model_stamp("diffusers", model_name)

    def run(self, model_name):
        from genloom.diffusion.models.loading import load_diffusers_folder

        path = _resolve("model_name", "diffusers", model_name)
        if not (path / "model_index.json").is_file():
            raise NodeInputError("model_name", f"{model_name!r} has no model_index.json")
        b = _load("model_name", path, lambda: load_diffusers_folder(path))
        return (b.model, b.clip, b.vae)


class VAELoader(Node):
    """Loads a standalone VAE to use instead of a checkpoint's own."""

    category = "loaders"
    display_name = "Load VAE"
    inputs = [Combo("vae_name", model_names("vae"), tooltip="The VAE file to load.")]
    outputs = [Out("VAE")]

    @classmethod
    def fingerprint(cls, vae_name):
        return model_stamp("vae", vae_name)

    def run(self, vae_name):
        from genloom.diffusion.models.single_file import load_vae_file

        path = _resolve("vae_name", "vae", vae_name)
        return (_load("vae_name", path, lambda: load_vae_file(path), tag="vae").vae,)


def _lora(lora_name: str):
    from genloom.diffusion.models.lora import load_lora

    path = _resolve("lora_name", "loras", lora_name)
    try:
        return load_lora(path)
    except (ValueError, OSError) as exc:
        raise ModelLoadError("lora_name", f"cannot load {path.name}: {exc}") from exc


def _check_matches(lora, model, clip) -> None:
    """A LoRA for another architecture would silently do nothing: say so instead."""
    found = model.unet is not None and lora.matched("unet", model.unet)
    if clip is not None:
        for i, enc in enumerate(clip.text_encoders):
            found = found or lora.matched("text_encoder" if i == 0 else "text_encoder_2", enc)
    if not found:
        raise NodeInputError("lora_name", f"{lora.name} changes no layer of this model "
                                          "(made for another architecture?)")


_STRENGTH = dict(min=-100.0, max=100.0, step=0.01)


class LoraLoader(Node):
    """Adds a LoRA to a model and its text encoder without changing the loaded base model."""

    category = "loaders"
    display_name = "Load LoRA"
    inputs = [Input("model", "MODEL", tooltip="The diffusion model the LoRA is applied to."),
              Input("clip", "CLIP", tooltip="The text encoder the LoRA is applied to."),
              Combo("lora_name", model_names("loras"), tooltip="The LoRA file."),
              Float("strength_model", 1.0, tooltip="How strongly to change the diffusion model.", **_STRENGTH),
              Float("strength_clip", 1.0, tooltip="How strongly to change the text encoder.", **_STRENGTH)]
    outputs = [Out("MODEL"), Out("CLIP")]

    @classmethod
    def fingerprint(cls, lora_name, **_):
        return model_stamp("loras", lora_name)

    def run(self, model, clip, lora_name, strength_model, strength_clip):
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        lora = _lora(lora_name)
        _check_matches(lora, model, clip)
        return (model.with_lora(lora, strength_model), clip.with_lora(lora, strength_clip))


class LoraLoaderModelOnly(Node):
    """Adds a LoRA to the diffusion model only."""

    category = "loaders"
    inputs = [Input("model", "MODEL"),
              Combo("lora_name", model_names("loras"), tooltip="The LoRA file."),
              Float("strength_model", 1.0, tooltip="How strongly to change the diffusion model.", **_STRENGTH)]
    outputs = [Out("MODEL")]

    @classmethod
    def fingerprint(cls, lora_name, **_):
        return model_stamp("loras", lora_name)

    def run(self, model, lora_name, strength_model):
        if strength_model == 0:
            return (model,)
        lora = _lora(lora_name)
        _check_matches(lora, model, None)
        return (model.with_lora(lora, strength_model),)


class CLIPSetLastLayer(Node):
    """Stops the text encoder early ("CLIP skip"): -1 uses the last layer, -2 the one before..."""

    category = "conditioning"
    inputs = [Input("clip", "CLIP"),
              Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1, tooltip="The last layer to use.")]
    outputs = [Out("CLIP")]

    def run(self, clip, stop_at_clip_layer):
        layers = min(e.config.num_hidden_layers for e in clip.text_encoders)
        if -stop_at_clip_layer > layers:
            raise NodeInputError("stop_at_clip_layer", f"{stop_at_clip_layer} is beyond this text "
                                                       f"encoder's {layers} layers")
        return (clip.with_stop_at_layer(stop_at_clip_layer),)


NODES = [CheckpointLoaderSimple, DiffusersLoader, VAELoader, LoraLoader, LoraLoaderModelOnly, CLIPSetLastLayer]
