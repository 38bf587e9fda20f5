"""Keeps model components on the accelerator only while there is room for them.

Every component (a UNet, a text encoder, a VAE) has its home on the CPU, where its base weights
always stay. `use(module, device)` moves it to a device pool for the step that needs it and pins it
there; when the step ends it stays resident (so the next step is free) until another component needs
the room: then the least recently used unpinned components are offloaded first. Offloading does not
copy anything back: the CPU tensors were kept, so it only swaps them in again. That also makes a
float16 device copy of a float32 model lossless. Pools have byte budgets; see docs/memory.md.

Each engine has its own manager, held by its ModelOwner (owner.py): `model_owner().memory`.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from genloom.diffusion.errors import OutOfMemory
from genloom.engine import context
from genloom.engine.sizes import parse_optional_size

HOME = "cpu"
MOVES_KEPT = 256  # the latest moves, for diagnosis and tests; older ones are forgotten


def module_bytes(module, dtype=None) -> int:
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        size = tensor.element_size() if dtype is None or not tensor.is_floating_point() \
            else tensor.new_empty((), dtype=dtype).element_size()
        total += tensor.numel() * size
    return total


@dataclass
class _Entry:
    ref: Any  # weakref to the module
    name: str
    device: str
    dtype: Any
    nbytes: int
    master: dict = field(default_factory=dict)  # name -> the CPU tensor to swap back in
    pins: int = 0


def _same_device(a: str, b: str) -> bool:
    import torch

    da, db = torch.device(a), torch.device(b)
    if da.type != db.type:
        return False
    if da.type == "cuda":
        return (da.index or torch.cuda.current_device()) == (db.index or torch.cuda.current_device())
    return True


def _tensors(module):
    for mod_name, mod in module.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for name, param in mod._parameters.items():
            if param is not None:
                yield prefix + name, mod, "_parameters", name, param
        for name, buf in mod._buffers.items():
            if buf is not None:
                yield prefix + name, mod, "_buffers", name, buf


def _swap_in(module, master: dict) -> None:
    for full, mod, kind, name, tensor in list(_tensors(module)):
        if full in master:
            if kind == "_parameters":
                tensor.data = master[full]
            else:
                mod._buffers[name] = master[full]


class MemoryManager:
    """LRU of resident components per device pool, with byte budgets.

    `budgets` maps a device name ("cuda", "cuda:1", even "cpu" in tests) to bytes; a device without
    one gets an automatic budget (for CUDA: `vram_budget` from the engine options, else a share of
    the card). `offload`: "auto" (LRU within the budget), "always" (low VRAM: leave the device as soon
    as a step ends), "never" (keep everything resident, no budget)."""

    def __init__(self, budgets: dict | None = None, offload: str | None = None):
        self.budgets = dict(budgets or {})
        self.offload_mode = offload
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()  # oldest use first
        self._lock = threading.RLock()
        # (name, "load"/"offload"), newest last; bounded, so a long-running server does not grow it
        self.moves: deque[tuple[str, str]] = deque(maxlen=MOVES_KEPT)

    # -- settings --------------------------------------------------------------------------
    def _options(self) -> dict:
        return context.current().options or {}

    def mode(self) -> str:
        mode = self.offload_mode or self._options().get("offload") or "auto"
        if mode in (True, "lowvram", "low_vram", "cpu"):
            return "always"
        if mode in (False, "none", "gpu"):
            return "never"
        return str(mode)

    def budget(self, device: str) -> int | None:
        for key in (device, device.split(":")[0]):
            if key in self.budgets:
                return self.budgets[key]
        if device.split(":")[0] == HOME:
            return None  # the home pool is not budgeted unless a test asks for it
        opt = parse_optional_size(self._options().get("vram_budget"))
        if opt is not None:
            return opt
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info(torch.device(device))
            return int(total * 0.8)  # the rest is for activations of the step itself
        return None

    # -- queries ---------------------------------------------------------------------------
    def resident(self, device: str | None = None) -> list[str]:
        """Names of resident components, least recently used first."""
        with self._lock:
            self._prune()
            return [e.name for e in self._entries.values()
                    if device is None or _same_device(e.device, device)]

    def used_bytes(self, device: str) -> int:
        with self._lock:
            self._prune()
            return sum(e.nbytes for e in self._entries.values() if _same_device(e.device, device))

    def _prune(self) -> None:
        for key in [k for k, e in self._entries.items() if e.ref() is None]:
            del self._entries[key]

    # -- moves -----------------------------------------------------------------------------
    @contextmanager
    def use(self, module, device: str | None = None, dtype=None, name: str | None = None):
        """Yield `module` on `device` (cast to `dtype` if given), pinned until the block ends."""
        if device is None:
            device = context.current().device
        device = str(device)
        with self._lock:
            entry = self._load(module, device, dtype, name or type(module).__name__)
            entry.pins += 1
        try:
            yield module
        finally:
            with self._lock:
                entry.pins -= 1
                if entry.pins == 0 and self.mode() == "always":
                    self._offload(id(module))
                else:
                    self._make_room(entry.device, 0)  # pinned overflow is let go once free

    def _load(self, module, device, dtype, name) -> _Entry:
        self._prune()
        key = id(module)
        entry = self._entries.get(key)
        if entry is not None and _same_device(entry.device, device) and dtype in (None, entry.dtype):
            self._entries.move_to_end(key)
            return entry
        if entry is not None:
            if entry.pins:
                raise RuntimeError(f"{name} is in use on {entry.device}; cannot move it to {device}")
            self._offload(key)
        nbytes = module_bytes(module, dtype)
        self._make_room(device, nbytes)
        try:
            entry = self._move(module, device, dtype, name, nbytes)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.free_all(device)
            try:
                entry = self._move(module, device, dtype, name, nbytes)
            except Exception as exc2:
                if not is_out_of_memory(exc2):
                    raise
                raise OutOfMemory(
                    f"not enough memory on {device} to load {name} ({nbytes / 2**20:.0f} MiB) even "
                    "after offloading every other model; set the 'offload' option to 'always', use a "
                    "lower resolution or a smaller model") from exc2
        self._entries[key] = entry
        return entry

    def _move(self, module, device, dtype, name, nbytes) -> _Entry:
        # Parameters are moved by swapping their .data, so keep the data tensors, not the Parameters.
        master = {full: tensor.data if kind == "_parameters" else tensor
                  for full, _m, kind, _n, tensor in _tensors(module)}
        try:
            module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        except BaseException:
            _swap_in(module, master)
            release_cache()
            raise
        self.moves.append((name, "load"))
        return _Entry(weakref.ref(module), name, device, dtype, nbytes, master)

    def _make_room(self, device: str, nbytes: int) -> None:
        if self.mode() == "never":
            return
        budget = self.budget(device)
        if budget is None:
            return
        for key, entry in list(self._entries.items()):
            if self.used_bytes(device) + nbytes <= budget:
                return
            if entry.pins == 0 and _same_device(entry.device, device):
                self._offload(key)

    def _offload(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        module = entry.ref()
        if module is not None:
            _swap_in(module, entry.master)
            self.moves.append((entry.name, "offload"))
        entry.master.clear()
        release_cache()

    def free_all(self, device: str | None = None) -> None:
        """Offload every unpinned component (of one device, or all); ModelOwner.free() calls this."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.pins == 0 and (device is None or _same_device(entry.device, device)):
                    self._offload(key)
        gc.collect()
        release_cache()

    def retry_on_oom(self, fn: Callable[[], Any], what: str = "this step"):
        """Run `fn`; on out-of-memory offload everything unpinned and run it once more."""
        try:
            return fn()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        self.free_all()
        try:
            return fn()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise OutOfMemory(f"out of GPU memory during {what}, even after offloading all other models; "
                              "set the 'offload' option to 'always' or lower the resolution or batch "
                              "size") from exc


def is_out_of_memory(exc: BaseException) -> bool:
    """The one test for "the device ran out of memory" (the manager, retries and tiling use it)."""
    import torch

    # torch.cuda.OutOfMemoryError: the top-level torch.OutOfMemoryError alias is newer than torch 2.4
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def release_cache() -> None:
    """Hand cached, unused CUDA blocks back to the driver."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
