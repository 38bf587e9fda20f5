"""ComfyUI's `comfy` package for node packs. Submodules load when first used: `import comfy` followed
by `comfy.utils.X` works, and packs that never touch `comfy.sd` never pay for torch."""

import importlib


def __getattr__(name):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'comfy' has no attribute {name!r}") from None
