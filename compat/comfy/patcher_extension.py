"""ComfyUI's `comfy.patcher_extension` for node packs: WrappersMP / CallbacksMP names, the wrapper
chain (WrapperExecutor) and the helpers that file wrappers and callbacks in model_options, all
genloom's own (genloom.diffusion.models.patcher_extension), which its sampler calls."""

from genloom.diffusion.models.patcher_extension import (CallbacksMP, PatcherInjection, WrapperExecutor,
                                                        WrappersMP, add_callback, add_callback_with_key,
                                                        add_wrapper, add_wrapper_with_key, copy_nested_dicts,
                                                        get_all_callbacks, get_all_wrappers,
                                                        get_callbacks_with_key, get_wrappers_with_key,
                                                        merge_nested_dicts)

__all__ = ["CallbacksMP", "PatcherInjection", "WrapperExecutor", "WrappersMP", "add_callback",
           "add_callback_with_key", "add_wrapper", "add_wrapper_with_key", "copy_nested_dicts",
           "get_all_callbacks", "get_all_wrappers", "get_callbacks_with_key", "get_wrappers_with_key",
           "merge_nested_dicts"]
