"""Wrappers and callbacks packs register on a MODEL (ComfyUI's comfy.patcher_extension).

A wrapper stands around one of the sampler's calls: `wrapper(executor, *args, **kwargs)` does what it
likes and calls `executor(*args, **kwargs)` for the next wrapper, the last one reaching the real
call; `executor.class_obj` is the object the call belongs to (the guider, the sampler, the model).
They live where ComfyUI keeps them during sampling, model_options["transformer_options"]["wrappers"]
as {wrapper type: {key: [fn, ...]}} (callbacks alike under "callbacks"), so they travel with a
MODEL's clones and reach every call site through the model options genloom's sampler already reads:

  OUTER_SAMPLE     sigma_loop.sample_sigmas   (noise, latent_image, sampler, sigmas, denoise_mask,
                                               callback, disable_pbar, seed) -> raw latent samples
  SAMPLER_SAMPLE   sigma_loop, the algorithm  (guider, sigmas, extra_args, callback, noise,
                                               latent_image, denoise_mask, disable_pbar) -> samples
  CALC_COND_BATCH  denoiser.Denoiser          (model, conds, x_in, timestep, model_options)
                                               -> [denoised per conditioning set]
  APPLY_MODEL      patcher.network_call       (x, t, c_concat, c_crossattn, control,
                                               transformer_options, **kw) -> denoised
  DIFFUSION_MODEL  patcher.network_call       (x, timesteps, context, y, control,
                                               transformer_options, **kw) -> network output

Callbacks called: ON_CLONE (clone), ON_PRE_RUN and ON_CLEANUP (around each sampling run).
"""

from __future__ import annotations

from typing import Any, Callable


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_APPLY_HOOKS = "on_apply_hooks"
    ON_REGISTER_ALL_HOOK_PATCHES = "on_register_all_hook_patches"
    ON_INJECT_MODEL = "on_inject_model"
    ON_EJECT_MODEL = "on_eject_model"

    @classmethod
    def init_callbacks(cls) -> dict:
        return {}


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    SAMPLER_SAMPLE = "sampler_sample"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

    @classmethod
    def init_wrappers(cls) -> dict:
        return {}


def _options(options: dict, is_model_options: bool, create: bool) -> dict:
    """The transformer options inside model options (created on demand when registering)."""
    if not is_model_options:
        return options
    if create:
        return options.setdefault("transformer_options", {})
    return options.get("transformer_options") or {}


def _add(kind: str, name: str, key, fn, options: dict, is_model_options: bool) -> None:
    table = _options(options, is_model_options, True).setdefault(kind, {})
    table.setdefault(name, {}).setdefault(key, []).append(fn)


def _with_key(kind: str, name: str, key, options: dict, is_model_options: bool) -> list:
    return list(((_options(options, is_model_options, False).get(kind) or {}).get(name) or {}).get(key, []))


def _all(kind: str, name: str, options: dict, is_model_options: bool) -> list:
    out: list = []
    for fns in ((_options(options or {}, is_model_options, False).get(kind) or {}).get(name) or {}).values():
        out.extend(fns)
    return out


def add_wrapper_with_key(wrapper_type: str, key, wrapper: Callable, transformer_options: dict,
                         is_model_options: bool = False) -> None:
    _add("wrappers", wrapper_type, key, wrapper, transformer_options, is_model_options)


def add_wrapper(wrapper_type: str, wrapper: Callable, transformer_options: dict,
                is_model_options: bool = False) -> None:
    add_wrapper_with_key(wrapper_type, None, wrapper, transformer_options, is_model_options)


def get_wrappers_with_key(wrapper_type: str, key, transformer_options: dict,
                          is_model_options: bool = False) -> list:
    return _with_key("wrappers", wrapper_type, key, transformer_options, is_model_options)


def get_all_wrappers(wrapper_type: str, transformer_options: dict, is_model_options: bool = False) -> list:
    return _all("wrappers", wrapper_type, transformer_options, is_model_options)


def add_callback_with_key(call_type: str, key, callback: Callable, transformer_options: dict,
                          is_model_options: bool = False) -> None:
    _add("callbacks", call_type, key, callback, transformer_options, is_model_options)


def add_callback(call_type: str, callback: Callable, transformer_options: dict,
                 is_model_options: bool = False) -> None:
    add_callback_with_key(call_type, None, callback, transformer_options, is_model_options)


def get_callbacks_with_key(call_type: str, key, transformer_options: dict,
                           is_model_options: bool = False) -> list:
    return _with_key("callbacks", call_type, key, transformer_options, is_model_options)


def get_all_callbacks(call_type: str, transformer_options: dict, is_model_options: bool = False) -> list:
    return _all("callbacks", call_type, transformer_options, is_model_options)


class WrapperExecutor:
    """One position in a chain of wrappers around `original`: calling it runs the next wrapper, or
    `original` after the last one."""

    def __init__(self, original: Callable, class_obj: Any, wrappers: list, idx: int):
        self.original, self.class_obj = original, class_obj
        self.wrappers, self.idx = list(wrappers), idx
        self.is_last = idx == len(self.wrappers)

    def __call__(self, *args, **kwargs):
        if self.idx + 1 > len(self.wrappers):
            raise RuntimeError("a wrapper called its executor after the end of the chain")
        return WrapperExecutor(self.original, self.class_obj, self.wrappers, self.idx + 1).execute(*args, **kwargs)

    def execute(self, *args, **kwargs):
        """Start the chain here (the call site does this; a wrapper calls its executor instead)."""
        if self.is_last:
            return self.original(*args, **kwargs)
        return self.wrappers[self.idx](self, *args, **kwargs)

    @classmethod
    def new_executor(cls, original: Callable, wrappers: list, idx: int = 0) -> "WrapperExecutor":
        return cls(original, None, wrappers, idx)

    @classmethod
    def new_class_executor(cls, original: Callable, class_obj: Any, wrappers: list,
                           idx: int = 0) -> "WrapperExecutor":
        return cls(original, class_obj, wrappers, idx)


def wrapped(wrapper_type: str, original: Callable, class_obj: Any, model_options: dict | None) -> Callable:
    """`original`, or the chain of the model options' wrappers of that type around it."""
    wrappers = get_all_wrappers(wrapper_type, model_options or {}, is_model_options=True)
    if not wrappers:
        return original
    return WrapperExecutor.new_class_executor(original, class_obj, wrappers).execute


def run_callbacks(call_type: str, model_options: dict | None, *args) -> None:
    for callback in get_all_callbacks(call_type, model_options or {}, is_model_options=True):
        callback(*args)


class PatcherInjection:
    """ComfyUI's (inject, eject) pair; genloom never injects into a model, so these are kept only."""

    def __init__(self, inject: Callable, eject: Callable):
        self.inject, self.eject = inject, eject


def copy_nested_dicts(data: dict) -> dict:
    """A copy whose nested dicts and lists are the copy's own (their items shared)."""
    out = dict(data)
    for key, value in data.items():
        if isinstance(value, dict):
            out[key] = copy_nested_dicts(value)
        elif isinstance(value, list):
            out[key] = list(value)
    return out


def merge_nested_dicts(first: dict, second: dict, copy_dict1: bool = True) -> dict:
    """`first` with `second` merged in: dicts merged recursively, lists extended, the rest replaced."""
    merged = copy_nested_dicts(first) if copy_dict1 else first
    for key, value in second.items():
        if isinstance(value, dict):
            merged[key] = merge_nested_dicts(value, merged.setdefault(key, {}))
        elif isinstance(value, list):
            merged.setdefault(key, []).extend(value)
        else:
            merged[key] = value
    return merged


class ExtensionMethods:
    """The ModelPatcher's wrapper and callback methods (mixed into patcher.ComfyModelMethods, which
    provides `model_options`, `_options_to_change()` and `_transformer_options()`)."""

    @property
    def wrappers(self) -> dict:
        """{wrapper type: {key: [fn, ...]}}: model_options["transformer_options"]["wrappers"]."""
        return self._table("wrappers")

    @property
    def callbacks(self) -> dict:
        return self._table("callbacks")

    def _table(self, kind: str) -> dict:
        try:
            return self._transformer_options().setdefault(kind, {})
        except TypeError:  # a shared handle: a copy to read
            return copy_nested_dicts(self.model_options.get("transformer_options") or {}).get(kind, {})

    def add_wrapper_with_key(self, wrapper_type: str, key, wrapper) -> None:
        self._options_to_change()  # a shared handle refuses here
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def add_wrapper(self, wrapper_type: str, wrapper) -> None:
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def remove_wrappers_with_key(self, wrapper_type: str, key) -> None:
        self._options_to_change()
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_wrappers(self, wrapper_type: str, key) -> list:
        return self.wrappers.get(wrapper_type, {}).get(key, [])

    def get_all_wrappers(self, wrapper_type: str) -> list:
        return [fn for fns in self.wrappers.get(wrapper_type, {}).values() for fn in fns]

    def add_callback_with_key(self, call_type: str, key, callback) -> None:
        self._options_to_change()
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def add_callback(self, call_type: str, callback) -> None:
        self.add_callback_with_key(call_type, None, callback)

    def remove_callbacks_with_key(self, call_type: str, key) -> None:
        self._options_to_change()
        self.callbacks.get(call_type, {}).pop(key, None)

    def get_callbacks(self, call_type: str, key) -> list:
        return self.callbacks.get(call_type, {}).get(key, [])

    def get_all_callbacks(self, call_type: str) -> list:
        return [fn for fns in self.callbacks.get(call_type, {}).values() for fn in fns]

