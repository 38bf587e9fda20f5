"""ComfyUI's `nodes` module for node packs: MAX_RESOLUTION, common_ksampler and the core nodes as
V1-shaped classes (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...) that packs subclass or call with
ComfyUI's method names and argument orders: `CLIPTextEncode().encode(clip, text)`,
`KSampler().sample(model, seed, ...)`, `VAEDecode().decode(vae, samples)`.

The classes are generated from genloom's own built-in nodes (the ones the engine runs), so a call
does what the node does in a workflow. `COMFY_METHODS` holds ComfyUI's facts: each core node's
FUNCTION name and argument order where it differs from the node's input order, and the arguments
ComfyUI's method takes besides its inputs (with their defaults). A built-in node ComfyUI does not
have keeps its input order and is called through `execute`.
"""

from __future__ import annotations

from genloom.engine import context
from genloom.engine.node import NodeOutput

MAX_RESOLUTION = 16384

# node -> (FUNCTION, argument order or None for the input order, {ComfyUI-only argument: default})
COMFY_METHODS: dict[str, tuple] = {
    "CLIPTextEncode": ("encode", ("clip", "text"), {}),
    "CLIPTextEncodeSDXL": ("encode", None, {}),
    "CLIPSetLastLayer": ("set_last_layer", None, {}),
    "ConditioningCombine": ("combine", None, {}),
    "ConditioningAverage": ("addWeighted", None, {}),
    "ConditioningConcat": ("concat", None, {}),
    "ConditioningSetArea": ("append", None, {}),
    "ConditioningSetAreaPercentage": ("append", None, {}),
    "ConditioningSetAreaStrength": ("append", None, {}),
    "ConditioningSetMask": ("append", ("conditioning", "mask", "set_cond_area", "strength"), {}),
    "ConditioningZeroOut": ("zero_out", None, {}),
    "ConditioningSetTimestepRange": ("set_range", None, {}),
    "CheckpointLoaderSimple": ("load_checkpoint", None, {}),
    "DiffusersLoader": ("load_checkpoint", None, {"output_vae": True, "output_clip": True}),
    "VAELoader": ("load_vae", None, {}),
    "LoraLoader": ("load_lora", None, {}),
    "LoraLoaderModelOnly": ("load_lora_model_only", None, {}),
    "KSampler": ("sample", None, {}),
    "KSamplerAdvanced": ("sample", None, {"denoise": 1.0}),
    "EmptyLatentImage": ("generate", None, {}),
    "VAEDecode": ("decode", ("vae", "samples"), {}),
    "VAEEncode": ("encode", ("vae", "pixels"), {}),
    "VAEDecodeTiled": ("decode", ("vae", "samples", "tile_size", "overlap", "temporal_size",
                                  "temporal_overlap"), {}),
    "VAEEncodeForInpaint": ("encode", ("vae", "pixels", "mask", "grow_mask_by"), {}),
    "SetLatentNoiseMask": ("set_mask", None, {}),
    "LatentUpscale": ("upscale", None, {}),
    "LatentUpscaleBy": ("upscale", None, {}),
    "LatentFromBatch": ("frombatch", None, {}),
    "RepeatLatentBatch": ("repeat", None, {}),
    "LatentComposite": ("composite", ("samples_to", "samples_from", "x", "y", "composite_method",
                                      "feather"), {"composite_method": "normal"}),
    "LatentBlend": ("blend", None, {"blend_mode": "normal"}),
    "LatentCrop": ("crop", None, {}),
    "LatentFlip": ("flip", None, {}),
    "LatentRotate": ("rotate", None, {}),
    "LoadImage": ("load_image", None, {}),
    "LoadImageMask": ("load_image", None, {}),
    "SaveImage": ("save_images", None, {}),
    "PreviewImage": ("save_images", None, {}),
    "ImageScale": ("upscale", None, {}),
    "ImageScaleBy": ("upscale", None, {}),
    "ImageInvert": ("invert", None, {}),
    "ImageBatch": ("batch", None, {}),
    "ImagePadForOutpaint": ("expand_image", None, {}),
    "EmptyImage": ("generate", None, {}),
    "ImageCrop": ("crop", None, {}),
    "ImageBlend": ("blend_images", None, {}),
    "ImageBlur": ("blur", None, {}),
    "ImageSharpen": ("sharpen", None, {}),
    "ImageQuantize": ("quantize", None, {}),
    "ImageScaleToTotalPixels": ("upscale", None, {}),
    "ImageCompositeMasked": ("composite", None, {}),
    "ImageToMask": ("image_to_mask", None, {}),
    "ImageColorToMask": ("image_to_mask", None, {}),
    "MaskToImage": ("mask_to_image", None, {}),
    "SolidMask": ("solid", None, {}),
    "InvertMask": ("invert", None, {}),
    "CropMask": ("crop", None, {}),
    "MaskComposite": ("combine", None, {}),
    "FeatherMask": ("feather", None, {}),
    "GrowMask": ("expand_mask", None, {}),
    "ThresholdMask": ("image_to_mask", None, {}),
    "LatentCompositeMasked": ("composite", None, {}),
    "LatentAdd": ("op", None, {}),
    "LatentSubtract": ("op", None, {}),
    "LatentMultiply": ("op", None, {}),
    "LatentInterpolate": ("op", None, {}),
    "LatentBatch": ("batch", None, {}),
    "LatentBatchSeedBehavior": ("op", None, {}),
    "ImageFromBatch": ("frombatch", None, {}),
    "RepeatImageBatch": ("repeat", None, {}),
    "SplitImageWithAlpha": ("split_image_with_alpha", None, {}),
    "JoinImageWithAlpha": ("join_image_with_alpha", None, {}),
    "PorterDuffImageComposite": ("composite", None, {}),
    "UpscaleModelLoader": ("load_model", None, {}),
    "ImageUpscaleWithModel": ("upscale", None, {}),
    "SamplerCustom": ("sample", None, {}),
    "SamplerCustomAdvanced": ("sample", None, {}),
    "KSamplerSelect": ("get_sampler", None, {}),
    "BasicScheduler": ("get_sigmas", None, {}),
    "KarrasScheduler": ("get_sigmas", None, {}),
    "ExponentialScheduler": ("get_sigmas", None, {}),
    "PolyexponentialScheduler": ("get_sigmas", None, {}),
    "SDTurboScheduler": ("get_sigmas", None, {}),
    "SplitSigmas": ("get_sigmas", None, {}),
    "SplitSigmasDenoise": ("get_sigmas", None, {}),
    "FlipSigmas": ("get_sigmas", None, {}),
    "CFGGuider": ("get_guider", None, {}),
    "BasicGuider": ("get_guider", None, {}),
    "RandomNoise": ("get_noise", None, {}),
    "DisableNoise": ("get_noise", None, {}),
    "ModelSamplingDiscrete": ("patch", None, {}),
    "ModelSamplingContinuousEDM": ("patch", None, {}),
    "ModelSamplingSD3": ("patch", None, {}),
    "ModelSamplingAuraFlow": ("patch", None, {}),
    "ModelSamplingFlux": ("patch", None, {}),
    "ModelSamplingStableCascade": ("patch", None, {}),
}


def _input_types(schema) -> dict:
    """A fresh INPUT_TYPES dict of the node (a subclass may change it)."""
    out: dict = {"required": {}}
    for spec in schema.inputs:
        exported = spec.export()
        out.setdefault(spec.section, {})[spec.name] = exported if spec.section == "hidden" \
            else tuple(exported)
    return out


def _v1_result(result):
    """genloom's return shapes -> ComfyUI's: a tuple, or {"ui", "result"} for output nodes."""
    if isinstance(result, NodeOutput):
        if result.ui is None and result.expand is None:
            return tuple(result.outputs)
        out = {"result": tuple(result.outputs)} if result.outputs else {}
        if result.ui is not None:
            out["ui"] = result.ui
        if result.expand is not None:
            out["expand"] = result.expand
        return out
    return result if isinstance(result, tuple) else (result,)


def _method(schema, order: tuple, comfy_only: dict):
    """The V1 method: ComfyUI's positional order and keywords -> the native node's run()."""
    names = set(order) | {spec.name for spec in schema.inputs}
    defaults = {spec.name: spec.default for spec in schema.inputs
                if spec.section == "required" and spec.default is not None}

    def call(self, *args, **kwargs):
        if len(args) > len(order):
            raise TypeError(f"{schema.name}.{schema.function}() takes {len(order)} arguments")
        values = dict(zip(order, args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{schema.name}: unexpected argument {key!r}")
            values[key] = value
        for key, default in comfy_only.items():  # ComfyUI's own extras: genloom's node has them fixed
            if key in values and values.pop(key) != default:
                raise NotImplementedError(f"{schema.name}: {key} other than {default!r} is not "
                                          "supported by genloom")
        for key, default in defaults.items():
            values.setdefault(key, default)
        return _v1_result(schema.factory().run(**values))

    return call


def _v1_class(schema):
    function, order, comfy_only = COMFY_METHODS.get(schema.name, ("execute", None, {}))
    if order is None:
        order = tuple(spec.name for spec in schema.inputs) + tuple(comfy_only)

    def input_types(cls):
        return _input_types(schema)

    attrs = {
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.type for o in schema.outputs),
        "RETURN_NAMES": tuple(o.label for o in schema.outputs),
        "OUTPUT_IS_LIST": tuple(o.is_list for o in schema.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in schema.outputs),
        "FUNCTION": function,
        "CATEGORY": schema.category,
        "DESCRIPTION": schema.description,
        "OUTPUT_NODE": schema.output_node,
        "INPUT_IS_LIST": schema.input_is_list,
        "NOT_IDEMPOTENT": schema.not_idempotent,
        function: _method(schema, order, comfy_only),
        "__module__": __name__,
        "__doc__": schema.description,
    }
    if schema.fingerprint is not None:
        attrs["IS_CHANGED"] = classmethod(lambda cls, *a, **kw: schema.fingerprint(*a, **kw))
    return type(schema.name, (), attrs)


def _builtin_schemas() -> list:
    from genloom.engine.plugins import build_registry
    from genloom.nodes import PACKS

    return list(build_registry(PACKS, (), entry_points_too=False).nodes.values())


NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _schema in _builtin_schemas():
    if not _schema.name.isidentifier():
        continue
    NODE_CLASS_MAPPINGS[_schema.name] = _v1_class(_schema)
    NODE_DISPLAY_NAME_MAPPINGS[_schema.name] = _schema.display_name
globals().update(NODE_CLASS_MAPPINGS)
del _schema

EXTENSION_WEB_DIRS: dict = {}
LOADED_MODULE_DIRS: dict = {}


def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                    denoise=1.0, disable_noise=False, start_step=None, last_step=None,
                    force_full_denoise=False):
    """ComfyUI's shared KSampler body: (LATENT,) sampled from `latent` (noise mask and batch
    indices honoured)."""
    from genloom.diffusion.sampling.loop import sample

    out = sample(model, positive, negative, latent, seed=int(seed), steps=int(steps), cfg=float(cfg),
                 sampler_name=sampler_name, scheduler=scheduler, denoise=float(denoise),
                 start_step=int(start_step or 0), end_step=last_step, add_noise=not disable_noise,
                 force_full_denoise=bool(force_full_denoise))
    return (out,)


def before_node_execution() -> None:
    """Stops the running node when the user interrupted the run."""
    context.current().check_interrupt()


def interrupt_processing(value: bool = True) -> None:
    from .comfy.model_management import interrupt_current_processing

    interrupt_current_processing(value)
