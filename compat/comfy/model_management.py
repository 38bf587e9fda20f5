"""ComfyUI's `comfy.model_management` over genloom's device choice and memory owner
(diffusion/models/owner.py): packs ask it for devices and dtypes, free memory, load models, and
check for interrupts; every answer comes from the running engine."""

from __future__ import annotations

import enum

from genloom.diffusion.models.owner import model_owner
from genloom.engine.errors import Interrupted

from .._services import bound_engine, in_run, run_context


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1
    MPS = 2


InterruptProcessingException = Interrupted


def _oom_types():
    import torch

    return getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def __getattr__(name):
    """Read live: OOM_EXCEPTION (torch's out-of-memory error), cpu_state, vram_state."""
    if name == "OOM_EXCEPTION":
        return _oom_types()
    if name == "cpu_state":
        return CPUState.CPU if _device_name() == "cpu" else CPUState.GPU
    if name == "vram_state":
        return VRAMState.DISABLED if _device_name() == "cpu" else VRAMState.NORMAL_VRAM
    raise AttributeError(f"module 'comfy.model_management' has no attribute {name!r}")


def _device_name() -> str:
    if in_run():
        return run_context().device
    engine = bound_engine()
    if engine is not None and getattr(engine, "device", "auto") != "auto":
        return engine.device
    return run_context().device


def get_torch_device():
    import torch

    return torch.device(_device_name())


def intermediate_device():
    import torch

    return torch.device("cpu")  # genloom keeps node outputs on the CPU between nodes


def unet_offload_device():
    import torch

    return torch.device("cpu")


text_encoder_offload_device = vae_offload_device = unet_offload_device


def text_encoder_device():
    return get_torch_device()


vae_device = unet_inital_load_device = text_encoder_device


def is_device_cpu(device) -> bool:
    return getattr(device, "type", str(device)) == "cpu"


def is_device_mps(device) -> bool:
    return getattr(device, "type", str(device)) == "mps"


def is_device_cuda(device) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def _cpu_memory(field: str) -> int:
    """Bytes of system memory (Linux /proc/meminfo; elsewhere the physical total)."""
    import os

    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def get_free_memory(dev=None, torch_free_too: bool = False):
    """Free bytes on `dev` (the run's device by default): the device's own count, within genloom's
    byte budget for it when one is set; with torch_free_too, (free, free)."""
    import torch

    dev = dev if dev is not None else get_torch_device()
    kind = getattr(dev, "type", str(dev))
    if kind == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
    else:
        free = _cpu_memory("MemAvailable")
    memory = model_owner().memory
    budget = memory.budget(str(dev))
    if budget is not None:
        free = min(free, max(0, budget - memory.used_bytes(str(dev))))
    return (free, free) if torch_free_too else free


def get_total_memory(dev=None, torch_total_too: bool = False):
    import torch

    dev = dev if dev is not None else get_torch_device()
    if getattr(dev, "type", str(dev)) == "cuda":
        total = torch.cuda.mem_get_info(dev)[1]
    else:
        total = _cpu_memory("MemTotal")
    return (total, total) if torch_total_too else total


def soft_empty_cache(force: bool = False) -> None:
    from genloom.diffusion.models.memory import release_cache

    release_cache()


def unload_all_models() -> None:
    """Offload every model the engine holds on a device (genloom's one free path for models)."""
    model_owner().memory.free_all()


def free_memory(memory_required, device, keep_loaded=()) -> None:
    model_owner().memory.free_all(str(device))


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    """genloom moves a model to the device when it is used (its memory manager pins it for the step),
    so loading ahead is only a request: models that know how to load themselves are asked to."""
    for model in models:
        load = getattr(model, "genloom_load", None)
        if load is not None:
            load(get_torch_device())


def load_model_gpu(model) -> None:
    load_models_gpu([model])


def loaded_models(only_currently_used: bool = False) -> list:
    return model_owner().memory.resident()


def _dtype_ok(device, kind: str) -> bool:
    import torch

    device = device if device is not None else get_torch_device()
    if getattr(device, "type", str(device)) != "cuda":
        return False
    if kind == "bf16":
        return torch.cuda.is_bf16_supported()
    return True


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return _dtype_ok(device, "fp16")


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return _dtype_ok(device, "bf16")


def unet_dtype(device=None, model_params=0, supported_dtypes=None, weight_dtype=None):
    import torch

    return torch.float16 if should_use_fp16(device) else torch.float32


def vae_dtype(device=None, allowed_dtypes=()):
    import torch

    return torch.float32


def text_encoder_dtype(device=None):
    return unet_dtype(device)


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=()):
    return None


def processing_interrupted() -> bool:
    return run_context().interrupt_flag.is_set()


def interrupt_current_processing(value: bool = True) -> None:
    """Interrupt the running prompt (what the editor's cancel does); False clears the request."""
    flag = run_context().interrupt_flag if in_run() else None
    if flag is None:
        engine = bound_engine()
        if engine is None:
            return
        if value:
            engine.interrupt()
        return
    flag.set() if value else flag.clear()


def throw_exception_if_processing_interrupted() -> None:
    run_context().check_interrupt()


def cast_to_device(tensor, device, dtype, copy: bool = False):
    return tensor.to(device=device, dtype=dtype, copy=copy)


def xformers_enabled() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def get_autocast_device(dev):
    return getattr(dev, "type", "cuda")


def device_supports_non_blocking(device) -> bool:
    return is_device_cuda(device)


def module_size(module) -> int:
    from genloom.diffusion.models.memory import module_bytes

    return module_bytes(module)
