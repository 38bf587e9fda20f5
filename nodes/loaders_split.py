"""Loaders for models published as separate files (ComfyUI's UNETLoader, CLIPLoader, DualCLIPLoader,
TripleCLIPLoader): a diffusion model from diffusion_models/ (or unet/), text encoders from
text_encoders/ (or clip/), each file in its authors' key layout."""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.errors import NodeInputError
from genloom.engine.node import Combo, Node, Out

from .loaders import _load, _resolve, model_names, model_stamp

_TE = "text_encoders"
_DEVICE = Combo("device", ["default", "cpu"], "default", optional=True, advanced=True,
                tooltip="Where the text encoders run; cpu keeps them off the GPU.")
# The `type` values genloom can load (ComfyUI offers more; those are left out rather than loaded wrong).
CLIP_TYPES = ["stable_diffusion", "sd3", "lumina2", "wan", "qwen_image", "flux2"]  # in ComfyUI's order
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux"]


def _clip(names: list[tuple[str, str]], clip_type: str, device: str = "default"):
    """One CLIP handle from (input name, file name) pairs, shared through the loaded-model cache."""
    from genloom.diffusion.models.loading import Bundle
    from genloom.diffusion.models.text_encoders import load_clip_files
    from genloom.engine.folders import path_stamp

    paths = [_resolve(inp, _TE, name) for inp, name in names]
    others = "|".join(f"{p}:{path_stamp(p)}" for p in paths[1:])
    where = "cpu" if device == "cpu" else None
    return _load(names[0][0], paths[0], lambda: Bundle(None, load_clip_files(paths, clip_type, where), None),
                 tag=f"clip|{clip_type}|{device}|{others}").clip


def _problem(kind: str, check):
    """A COMBO check: what the loader would refuse in a listed file, said at validation."""
    def problem(name) -> str | None:
        try:
            path = context.current().folders.model_path(kind, str(name))
        except (OSError, ValueError):
            return None  # not there: the COMBO check already said so
        return check(path)
    return problem


def _unet_problem(path):
    from genloom.diffusion.models.families import file_problem

    return file_problem(path)


def _text_encoder_problem(path):
    from genloom.diffusion.models.text_encoders import file_problem

    return file_problem(path)


def _te_name(name: str):
    return Combo(name, model_names(_TE), check=_problem(_TE, _text_encoder_problem))


def _stamps(*names) -> str:
    return "|".join(model_stamp(_TE, n) for n in names)


class UNETLoader(Node):
    """Loads a diffusion model on its own (SD3/SD3.5 MMDiT, Flux.1, Qwen-Image, Z-Image...) from
    diffusion_models/ or unet/."""

    category = "advanced/loaders"
    display_name = "Load Diffusion Model"
    inputs = [Combo("unet_name", model_names("diffusion_models"), tooltip="The diffusion model file.",
                    check=_problem("diffusion_models", _unet_problem)),
              Combo("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], "default",
                    tooltip="fp8 keeps the Linear weights in 8 bits (cast per layer when used).")]
    outputs = [Out("MODEL")]

    @classmethod
    def fingerprint(cls, unet_name, **_):
        return model_stamp("diffusion_models", unet_name)

    def run(self, unet_name, weight_dtype="default"):
        from genloom.diffusion.models.families import load_diffusion_model
        from genloom.diffusion.models.loading import Bundle

        path = _resolve("unet_name", "diffusion_models", unet_name)
        return (_load("unet_name", path, lambda: Bundle(load_diffusion_model(path, weight_dtype), None, None),
                      tag=f"unet|{weight_dtype}").model,)


class CLIPLoader(Node):
    """Loads one text-encoder file: CLIP-L for stable_diffusion; CLIP-L, CLIP-G or T5 XXL alone for sd3
    (the missing encoders give zeros, as in ComfyUI); the Qwen2.5-VL language model for qwen_image, Qwen3
    for lumina2 (Z-Image), with Qwen's tokenizer from text_encoders/qwen25_tokenizer/."""

    category = "advanced/loaders"
    display_name = "Load CLIP"
    inputs = [_te_name("clip_name"), Combo("type", CLIP_TYPES, "stable_diffusion"), _DEVICE]
    outputs = [Out("CLIP")]

    @classmethod
    def fingerprint(cls, clip_name, **_):
        return _stamps(clip_name)

    def run(self, clip_name, type="stable_diffusion", device="default"):  # noqa: A002 - ComfyUI's name
        return (_clip([("clip_name", clip_name)], type, device),)


class DualCLIPLoader(Node):
    """Loads two text-encoder files: sdxl (CLIP-L + CLIP-G), sd3 (any two of CLIP-L, CLIP-G, T5),
    flux (CLIP-L + T5)."""

    category = "advanced/loaders"
    display_name = "DualCLIPLoader"
    inputs = [_te_name("clip_name1"), _te_name("clip_name2"), Combo("type", DUAL_CLIP_TYPES, "sdxl"), _DEVICE]
    outputs = [Out("CLIP")]

    @classmethod
    def fingerprint(cls, clip_name1, clip_name2, **_):
        return _stamps(clip_name1, clip_name2)

    def run(self, clip_name1, clip_name2, type="sdxl", device="default"):  # noqa: A002
        return (_clip([("clip_name1", clip_name1), ("clip_name2", clip_name2)], type, device),)


class TripleCLIPLoader(Node):
    """Loads SD3's three text encoders: CLIP-L, CLIP-G and T5 XXL (in any order)."""

    category = "advanced/loaders"
    display_name = "TripleCLIPLoader"
    description = "[Recipes]\n\nsd3: clip-l, clip-g, t5"
    inputs = [_te_name("clip_name1"), _te_name("clip_name2"), _te_name("clip_name3")]
    outputs = [Out("CLIP")]

    @classmethod
    def fingerprint(cls, clip_name1, clip_name2, clip_name3):
        return _stamps(clip_name1, clip_name2, clip_name3)

    def run(self, clip_name1, clip_name2, clip_name3):
        return (_clip([("clip_name1", clip_name1), ("clip_name2", clip_name2), ("clip_name3", clip_name3)],
                      "sd3"),)


class QuadrupleCLIPLoader(Node):
    """HiDream's four text encoders (CLIP-L, CLIP-G, T5 XXL, Llama 3.1 8B), as ComfyUI declares the node.
    genloom cannot load HiDream yet: validation says so by name instead of "unknown node type"."""

    category = "advanced/loaders"
    display_name = "QuadrupleCLIPLoader"
    description = "[Recipes]\n\nhidream: long clip-l, long clip-g, t5xxl, llama_8b_3.1_instruct"
    inputs = [_te_name("clip_name1"), _te_name("clip_name2"), _te_name("clip_name3"), _te_name("clip_name4")]
    outputs = [Out("CLIP")]
    REFUSAL = ("HiDream's text encoders (the only use of QuadrupleCLIPLoader) cannot be loaded by genloom "
               "yet; see docs/models.md for the families it loads")

    @classmethod
    def validate(cls, clip_name1, clip_name2, clip_name3, clip_name4):
        return cls.REFUSAL

    def run(self, clip_name1, clip_name2, clip_name3, clip_name4):
        raise NodeInputError("clip_name4", self.REFUSAL)


NODES = [UNETLoader, CLIPLoader, DualCLIPLoader, TripleCLIPLoader, QuadrupleCLIPLoader]
