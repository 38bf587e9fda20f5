"""MODEL as ComfyUI's node packs use it: the ModelPatcher methods, over genloom's frozen handles.

ComfyUI's packs patch a model in place on a clone: `m = model.clone(); m.set_model_attn2_patch(fn);
return (m,)`. genloom's ModelHandle is immutable, so `handle.clone()` returns a `ModelPatcher`: a
mutable facade holding the handle, its own model_options dict and its own weight patches. Everything
else is read through to a handle built from that state (`.handle`), so a facade flows into genloom's
samplers and nodes like any MODEL, and what the pack registered is honoured there:

  sampler_cfg_function, sampler_pre/post_cfg_function   the denoiser (sampling/denoiser.py)
  model_function_wrapper                                guidance (`network_call` below)
  transformer_options patches / patches_replace         attention processors (attention.py)
  add_patches (weight diffs, "set", merged models)      `KeyPatches` through lora.patched()
  add_wrapper_with_key / add_callback_with_key          their call sites (patcher_extension.py)

The handle answers the same reads (clone, get_model_object, model.model_sampling, load_device, ...);
its mutating methods say to clone first, since a handle is shared by every node that received it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .attention import call_options
from .patcher_extension import ExtensionMethods


def copy_options(options: dict) -> dict:
    """A copy of model_options whose dicts and lists of patches are the copy's own (the functions
    and objects in them are shared), as a ComfyUI clone's are."""
    out = dict(options or {})
    for key in ("sampler_post_cfg_function", "sampler_pre_cfg_function"):
        if key in out:
            out[key] = list(out[key])
    to = dict(out.get("transformer_options") or {})
    for key in ("patches", "patches_replace"):
        if key in to:
            to[key] = {name: (dict(v) if isinstance(v, dict) else list(v)) for name, v in to[key].items()}
    for key in ("wrappers", "callbacks"):  # {type: {key: [fn, ...]}}
        if key in to:
            to[key] = {kind: {k: list(fns) for k, fns in table.items()} for kind, table in to[key].items()}
    out["transformer_options"] = to
    return out


class SamplingView:
    """model_sampling as ComfyUI's packs call it: sigma tensors of shape [B] broadcast over x."""

    def __init__(self, ms):
        self._ms = ms

    def __getattr__(self, name):  # sigmas, sigma_min/max, timestep, sigma, percent_to_sigma ...
        if name == "_ms":
            raise AttributeError(name)
        return getattr(self._ms, name)

    @staticmethod
    def _shaped(sigma, x):
        if getattr(sigma, "ndim", 0) >= 1:
            return sigma.reshape(sigma.shape[:1] + (1,) * (x.ndim - 1)).to(x.dtype)
        return sigma

    def calculate_input(self, sigma, noise):
        return self._ms.calculate_input(self._shaped(sigma, noise), noise)

    def calculate_denoised(self, sigma, model_output, model_input):
        return self._ms.calculate_denoised(self._shaped(sigma, model_input), model_output, model_input)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return self._ms.noise_scaling(self._shaped(sigma, noise), noise, latent_image, max_denoise)

    def inverse_noise_scaling(self, sigma, latent):
        return self._ms.inverse_noise_scaling(self._shaped(sigma, latent), latent)


class BaseModelView:
    """`model.model` of a ModelPatcher: the network and what describes it."""

    def __init__(self, handle):
        self._handle = handle

    @property
    def model_sampling(self):
        from genloom.diffusion.sampling.model_sampling import of_model

        return SamplingView(of_model(self._handle))

    @property
    def latent_format(self):
        from genloom.diffusion.sampling.latent_formats import of_model

        return LatentFormatView(of_model(self._handle))

    @property
    def diffusion_model(self):
        return self._handle.unet

    @property
    def model_type(self) -> str:
        ms = self.model_sampling
        return {"eps": "EPS", "v_prediction": "V_PREDICTION", "const": "FLOW", "edm": "EDM",
                "x0": "X0"}.get(ms.prediction, "EPS")

    @property
    def model_config(self):
        return _Config(self._handle)

    def get_dtype(self):
        return _param_dtype(self._handle.unet)

    def memory_required(self, input_shape) -> int:
        return 0  # genloom's memory manager budgets by module size


class _Config:
    """`model.model.model_config`: the UNet's config and the latent format."""

    def __init__(self, handle):
        self.unet_config = dict(getattr(handle.unet, "config", {}) or {})
        self.latent_format = BaseModelView(handle).latent_format


class LatentFormatView:
    """A latent format with ComfyUI's attribute names (scale_factor, latent_channels, ...)."""

    def __init__(self, fmt):
        self._fmt = fmt
        self.scale_factor = fmt.scale
        self.shift_factor = fmt.shift
        self.latent_channels = fmt.channels
        self.latent_dimensions = 2

    def process_in(self, latent):
        return self._fmt.process_in(latent)

    def process_out(self, latent):
        return self._fmt.process_out(latent)


def _param_dtype(module):
    return next(module.parameters()).dtype


class ComfyModelMethods(ExtensionMethods):
    """The ModelPatcher surface both a ModelHandle and a ModelPatcher answer (mixed into each).

    Subclasses provide `unet`, `model_options`, `patches` and `_options_to_change()`."""

    def _options_to_change(self) -> dict:
        raise TypeError("this MODEL is shared by every node that receives it: call model.clone() and "
                        "patch the clone (m = model.clone(); m.set_...(); return (m,))")

    def clone(self) -> "ModelPatcher":
        return ModelPatcher(self.handle)

    @property
    def handle(self):
        return self

    @property
    def model(self) -> BaseModelView:
        return BaseModelView(self.handle)

    @property
    def load_device(self):
        import torch

        from genloom.engine import context

        return torch.device(context.current().device)

    @property
    def offload_device(self):
        import torch

        return torch.device("cpu")

    @property
    def current_device(self):
        return next(self.unet.parameters()).device

    def model_dtype(self):
        return _param_dtype(self.unet)

    def model_size(self) -> int:
        from .memory import module_bytes

        return module_bytes(self.unet)

    @property
    def size(self) -> int:
        return self.model_size()

    def is_clone(self, other) -> bool:
        return getattr(other, "unet", None) is self.unet

    def clone_has_same_weights(self, other) -> bool:
        return self.is_clone(other) and tuple(getattr(other, "patches", ())) == tuple(self.patches)

    def get_model_object(self, name: str):
        """ComfyUI's attribute path into the model: "model_sampling", "diffusion_model", "latent_format"."""
        obj: Any = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def get_key_patches(self, filter_prefix: str | None = None) -> dict:
        """{state-dict key: [(weight,), *patches]} as ComfyUI's merge nodes read it: keys in the LDM
        layout under "diffusion_model." (diffusers names where the UNet has no LDM layout); the
        patches are this model's weight patches (LoRAs as weight diffs)."""
        return key_patches(self.handle, filter_prefix)

    # ---- patching (a ModelPatcher's own; on a shared handle they raise) --------------------
    def _transformer_options(self) -> dict:
        return self._options_to_change().setdefault("transformer_options", {})

    def set_model_sampler_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        options = self._options_to_change()
        options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            options["disable_cfg1_optimization"] = True

    def _append(self, key: str, fn, disable_cfg1_optimization: bool) -> None:
        options = self._options_to_change()
        options[key] = list(options.get(key, [])) + [fn]
        if disable_cfg1_optimization:
            options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self._append("sampler_post_cfg_function", fn, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self._append("sampler_pre_cfg_function", fn, disable_cfg1_optimization)

    def set_model_unet_function_wrapper(self, fn) -> None:
        self._options_to_change()["model_function_wrapper"] = fn

    def set_model_patch(self, patch, name: str) -> None:
        patches = self._transformer_options().setdefault("patches", {})
        patches[name] = list(patches.get(name, [])) + [patch]

    def set_model_patch_replace(self, patch, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        table = self._transformer_options().setdefault("patches_replace", {}).setdefault(name, {})
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        table[key] = patch

    def set_model_attn1_patch(self, patch) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_output_patch(self, patch) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    # UNet block patches, run at ComfyUI's LDM block places (block_patches.py)
    def set_model_input_block_patch(self, patch) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Weight patches {key: diff tensor | (diff,) | ("diff", (diff,)) | ("set", (weight,)) |
        [(weight,), *patches] (get_key_patches' form)}; keys in the LDM layout (with or without
        "diffusion_model.") or diffusers names. weight = weight * strength_model + strength_patch *
        diff, in the order patches were added. Returns the keys that name a weight of the model."""
        raise TypeError("call model.clone() first, then add_patches on the clone")


class ModelPatcher(ComfyModelMethods):
    """A clone a pack patches in place; reads go to the handle its state makes (`handle`)."""

    def __init__(self, handle, model_options: dict | None = None, patches: tuple = ()):
        base = handle.handle if isinstance(handle, ModelPatcher) else handle
        self._base = base
        self.model_options = copy_options(base.model_options if model_options is None else model_options)
        self._patches = list(patches)

    @property
    def patches(self) -> tuple:
        return tuple(self._base.patches) + tuple(self._patches)

    @property
    def handle(self):
        """The frozen MODEL this facade stands for now."""
        return replace(self._base, model_options=copy_options(self.model_options), patches=self.patches)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_base", "_patches", "model_options"):
            raise AttributeError(name)
        return getattr(self.handle, name)

    def _options_to_change(self) -> dict:
        return self.model_options

    def clone(self) -> "ModelPatcher":
        from .patcher_extension import CallbacksMP

        twin = ModelPatcher(self._base, self.model_options, tuple(self._patches))
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLONE):
            callback(self, twin)
        return twin

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        kp = KeyPatches(dict(patches), float(strength_patch), float(strength_model))
        known = kp.keys_in(self._base.unet)
        if known:
            self._patches.append((kp, 1.0))
        return known

    def model_patches_to(self, device) -> None:
        """ComfyUI moves patch objects to the device; genloom's patches move with their tensors."""


# ---- weight patches -----------------------------------------------------------------------------

def _param_names(unet) -> dict:
    """{key as packs spell it: diffusers parameter name} for the LDM spelling (with and without
    "diffusion_model.") and the diffusers one."""
    from genloom.diffusion.models import keymaps

    try:
        table = keymaps.unet_map(dict(unet.config))
    except (ValueError, KeyError, TypeError):
        table = {}
    names = {}
    for name, _param in unet.named_parameters():
        names[name] = name
        ldm = keymaps._translate(name, table) if table else None
        if ldm:
            names[ldm] = names["diffusion_model." + ldm] = name
    return names


def text_param_names(encoder) -> dict:
    """{key as ComfyUI spells it after "clip_l.transformer." (transformers' CLIPTextModel names,
    "text_model." included) or as the module does: parameter name}."""
    names = {}
    for name, _param in encoder.named_parameters():
        names[name] = name
        if not name.startswith(("text_model.", "text_projection")):
            names["text_model." + name] = name
    return names


def _ldm_names(unet) -> dict:
    """{diffusers parameter name: "diffusion_model." + LDM key (or the diffusers name)}."""
    out = {}
    for key, name in _param_names(unet).items():
        if key.startswith("diffusion_model."):
            out[name] = key
        else:
            out.setdefault(name, key)
    return out


class KeyPatches:
    """Weight patches added through add_patches, applied by lora.patched() like a LoRA: `deltas()`
    reads the weights as earlier patches left them, so patches compose in order as in ComfyUI."""

    stamp = None  # never cached: the deltas depend on the weights they are applied to

    def __init__(self, patches: dict, strength_patch: float, strength_model: float, target: str = "unet"):
        self.patches, self.strength_patch, self.strength_model = patches, strength_patch, strength_model
        self.target, self.name = target, "patches"
        self.has_unet, self.has_text = target == "unet", target != "unet"

    def _names(self, module) -> dict:
        return _param_names(module) if self.target == "unet" else text_param_names(module)

    def keys_in(self, module) -> list:
        names = self._names(module)
        return [k for k in self.patches if k in names]

    def matched(self, target: str, module) -> int:
        return len(self.keys_in(module)) if target == self.target else 0

    def deltas(self, target: str, module) -> dict:
        import torch

        if target != self.target:
            return {}
        names = self._names(module)
        params = dict(module.named_parameters())
        out = {}
        for key, value in self.patches.items():
            name = names.get(key)
            if name is None:
                continue
            weight = params[name].data.float()
            new = resolve_patch(value, weight, module)
            delta = weight * (self.strength_model - 1.0)
            if new[0] == "set":
                delta = new[1].to(weight.device, torch.float32) - weight
            else:
                diff = new[1].to(weight.device, torch.float32)
                if diff.shape != weight.shape:
                    continue  # ComfyUI skips a patch of another shape too
                delta = delta + self.strength_patch * diff
            out[name] = delta
        return out


def resolve_patch(value, weight, module=None) -> tuple:
    """("diff", tensor) or ("set", tensor) from one of ComfyUI's patch values."""
    import torch

    if isinstance(value, torch.Tensor):
        return ("diff", value)
    if isinstance(value, list):  # [(weight,), (strength_patch, patch, strength_model, offset, fn), ...]
        merged = value[0][0].float().clone()
        for entry in value[1:]:
            sp, patch, sm = entry[0], entry[1], entry[2]
            kind, tensor = resolve_patch(patch, merged)
            merged = merged * sm
            merged = tensor.float().clone() if kind == "set" else merged + sp * tensor.float()
        return ("diff", merged)
    if isinstance(value, tuple) and len(value) == 1:
        return ("diff", value[0])
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("diff", "set"):
        return (value[0], value[1][0])
    raise TypeError(f"patch of type {value[0] if isinstance(value, tuple) else type(value).__name__!r} "
                    "is not supported by genloom (diff and set are)")


def key_patches(handle, filter_prefix: str | None = None) -> dict:
    from .lora import scaled_deltas

    unet = handle.unet
    names = _ldm_names(unet)
    extra: dict = {}
    for patch, strength in handle.patches:
        if isinstance(patch, KeyPatches):
            params = _param_names(unet)
            for key, value in patch.patches.items():
                if key in params:
                    extra.setdefault(params[key], []).append(
                        (patch.strength_patch, value, patch.strength_model, None, None))
        else:
            for name, delta in scaled_deltas(patch, strength, "unet", unet).items():
                extra.setdefault(name, []).append((1.0, (delta,), 1.0, None, None))
    out = {}
    for name, param in unet.named_parameters():
        key = names.get(name, name)
        if filter_prefix is None or key.startswith(filter_prefix):
            out[key] = [(param.data,)] + extra.get(name, [])
    return out


# ---- model_function_wrapper and the APPLY_MODEL / DIFFUSION_MODEL wrappers -----------------------

def network_call(model, unet, x, t, emb, extras: dict, cond_or_uncond: list, sigma: float | None, ms):
    """One batched network call with ComfyUI's per-call transformer options, through the pack's
    model_function_wrapper and its APPLY_MODEL / DIFFUSION_MODEL wrappers when it set them.

    DIFFUSION_MODEL wrappers stand around the network itself (the scaled input, the model's
    timesteps, its output). ComfyUI calls model_function_wrapper(apply_model, {"input", "timestep",
    "c", "cond_or_uncond"}) and APPLY_MODEL wrappers with the unscaled latent and sigma as the
    timestep, and apply_model returns the denoised latent. genloom's guidance works in network-output
    space on the scaled input, so for those the input is unscaled (calculate_input is a scaling) and
    the denoised result mapped back (calculate_denoised is affine in the output)."""
    import torch

    from .patcher_extension import WrappersMP, wrapped

    options = getattr(model, "model_options", None) or {}
    if ms is None:
        from genloom.diffusion.sampling.model_sampling import of_model

        ms = of_model(model)
    if sigma is None:
        sigma = float(ms.sigma(torch.as_tensor(float(t))))
    sigmas = torch.full((x.shape[0],), float(sigma), device=x.device)
    to = dict(options.get("transformer_options") or {})
    to.update(cond_or_uncond=list(cond_or_uncond), sigmas=sigmas, original_shape=list(x.shape))

    def network(x_in, timesteps, context=None, y=None, control=None, transformer_options=None, **rest):
        inputs = {k: rest.get(k, v) for k, v in extras.items() if k != "control"}
        if "control" in extras:
            inputs["control"] = control
        with call_options(transformer_options if transformer_options is not None else to):
            return model.predict(unet, x_in, timesteps, emb if context is None else context, inputs)

    diffusion_model = wrapped(WrappersMP.DIFFUSION_MODEL, network, unet, options)
    wrapper = options.get("model_function_wrapper")
    apply_wrappers = bool((to.get("wrappers") or {}).get(WrappersMP.APPLY_MODEL))
    if wrapper is None and not apply_wrappers:
        return diffusion_model(x, t, emb, None, extras.get("control"), to)

    def _apply_model(input_x, timestep, c_concat=None, c_crossattn=None, control=None,
                     transformer_options=None, **rest):
        s = torch.as_tensor(timestep, dtype=torch.float32, device=input_x.device).reshape(-1)
        shaped = s.reshape(-1, *([1] * (input_x.ndim - 1)))
        xc = ms.calculate_input(shaped, input_x.float())
        if c_concat is not None:
            rest["c_concat"] = c_concat
        out = diffusion_model(xc.to(x.dtype), ms.timestep(s.cpu()).to(input_x.device), c_crossattn, None,
                              control, transformer_options if transformer_options is not None else to, **rest)
        return ms.calculate_denoised(shaped, out.float(), input_x.float())

    apply_model = wrapped(WrappersMP.APPLY_MODEL, _apply_model, getattr(model, "model", None), options)
    scale = float(ms.calculate_input(float(sigma), torch.ones(())))
    x_raw = x.float() / scale
    c = {"c_crossattn": emb, "transformer_options": to, **extras}
    if wrapper is None:
        denoised = apply_model(x_raw, sigmas, **c)
    else:
        denoised = wrapper(apply_model, {"input": x_raw, "timestep": sigmas, "c": c,
                                         "cond_or_uncond": list(cond_or_uncond)})
    base = ms.calculate_denoised(float(sigma), torch.zeros_like(x_raw), x_raw)
    slope = float(ms.calculate_denoised(float(sigma), torch.ones(()), torch.zeros(()))) - \
        float(ms.calculate_denoised(float(sigma), torch.zeros(()), torch.zeros(())))
    return (denoised.float() - base) / slope
