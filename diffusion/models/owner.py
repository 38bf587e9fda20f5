"""The owner of one engine's model state: the memory manager, what the loaders loaded, and the LoRA
tables and deltas. The engine holds one owner in its `Resources`; library and nodes reach it through
the run context with `model_owner()`, so two engines in one process never share or fight over models,
and `Engine.free()` (the server's POST /free) reaches `ModelOwner.free()` through `Resources.free()`.

Nothing here is a module-level cache: every table below belongs to an owner and dies with it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from genloom.engine import context
from genloom.engine.folders import path_stamp
from genloom.engine.sizes import parse_optional_size

from .memory import MemoryManager

RESOURCE_NAME = "models"  # the owner's name in the engine's Resources
ALIAS_TABLES_KEPT = 32  # LoRA alias tables (one per module and target) kept, least recently used out
LORA_CACHE_DEFAULT = 1 << 30  # bytes of LoRA deltas kept unless the engine option `lora_cache` says


class LoadedModels:
    """What the loaders loaded, per (file, on-disk stamp, tag): a second loader naming the same
    unchanged file gets the same modules while any node output still holds them, and editing the
    file gives a fresh load. Only weak references are kept, so this never keeps a model alive."""

    def __init__(self):
        self._loads: dict[tuple, tuple] = {}  # key -> (bundle class, weak refs to its fields' values)
        self._lock = threading.Lock()

    def get(self, path: Path, build: Callable[[], Any], tag: str = ""):
        """The bundle `build()` made for this file before, if all its handles are alive; else a new one.
        `tag` keeps loads of one file that build different bundles apart."""
        path = Path(path)
        key = (str(path.resolve()), path_stamp(path), tag)
        with self._lock:
            self._prune()
            found = self._loads.get(key)
            if found is not None:
                kind, refs = found
                values = [None if r is None else r() for r in refs]
                if all(v is not None for v, r in zip(values, refs) if r is not None):
                    return kind(*values)
        bundle = build()
        values = [getattr(bundle, f.name) for f in fields(bundle)]
        with self._lock:
            self._loads[key] = (type(bundle), tuple(None if v is None else weakref.ref(v) for v in values))
        return bundle

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._loads)

    def _prune(self) -> None:
        for key in [k for k, (_kind, refs) in self._loads.items()
                    if all(r() is None for r in refs if r is not None)]:
            del self._loads[key]


class ModuleCache:
    """Values computed for a live module (LoRA alias tables, LoRA deltas), least recently used out
    first once there are more than `max_entries` of them or their bytes exceed `budget()`. Entries
    hold their module weakly and go when it does; a value larger than the budget is not kept."""

    def __init__(self, max_entries: int | None = None, budget: Callable[[], int | None] | None = None,
                 size: Callable[[Any], int] = lambda value: 0):
        self.max_entries = max_entries
        self._budget, self._size = budget, size
        self._entries: "OrderedDict[tuple, tuple]" = OrderedDict()  # (id(module), key) -> (ref, value, bytes)
        self.nbytes = 0
        self.computed = 0  # values computed so far: a hit computes nothing
        self._lock = threading.Lock()

    def get(self, module, key, compute: Callable[[], Any]):
        full = (id(module), key)
        with self._lock:
            hit = self._entries.get(full)
            if hit is not None and hit[0]() is module:
                self._entries.move_to_end(full)
                return hit[1]
        value = compute()
        nbytes = self._size(value)
        with self._lock:
            self.computed += 1
            self._drop(full)
            budget = self._budget() if self._budget is not None else None
            if budget is None or nbytes <= budget:
                self._entries[full] = (weakref.ref(module), value, nbytes)
                self.nbytes += nbytes
                self._evict(budget)
        return value

    def _evict(self, budget: int | None) -> None:
        for full in [k for k, (ref, _v, _n) in self._entries.items() if ref() is None]:
            self._drop(full)
        while self._entries and ((self.max_entries is not None and len(self._entries) > self.max_entries)
                                 or (budget is not None and self.nbytes > budget)):
            self._drop(next(iter(self._entries)))

    def _drop(self, full: tuple) -> None:
        entry = self._entries.pop(full, None)
        if entry is not None:
            self.nbytes -= entry[2]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)


def _lora_budget() -> int:
    value = parse_optional_size((context.current().options or {}).get("lora_cache"))
    return LORA_CACHE_DEFAULT if value is None else value


def _tensors_bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class ModelOwner:
    """Owns every piece of model state of one engine.

    memory        the MemoryManager every `use()` goes through (UNets, text encoders, VAEs, upscale
                  and style networks)
    loaded        LoadedModels: loaded bundles shared per file
    lora_aliases  the spellings a LoRA file may use for each layer, per module (bounded)
    lora_deltas   LoRA weight deltas per (LoRA file stamp, strength, target, module), on the CPU,
                  within the `lora_cache` byte budget (default 1 GiB)"""

    def __init__(self):
        self.memory = MemoryManager()
        self.loaded = LoadedModels()
        self.lora_aliases = ModuleCache(max_entries=ALIAS_TABLES_KEPT)
        self.lora_deltas = ModuleCache(budget=_lora_budget, size=_tensors_bytes)

    def free(self) -> None:
        """Offload every model and drop the LoRA deltas (Resources.free() calls this)."""
        self.lora_deltas.clear()
        self.memory.free_all()


def model_owner() -> ModelOwner:
    """The running engine's owner; outside any engine, the default context's."""
    return context.current().resources.get(RESOURCE_NAME, ModelOwner)


@contextmanager
def interruptible(module):
    """While inside, every top-level block of `module` (each member of an nn.ModuleList that is a
    direct child: a UNet's down/up blocks, a transformer's blocks; or a child of a direct child that is
    not a list itself: a VAE's encoder.down_blocks and decoder.up_blocks) checks the running prompt's
    interrupt flag before it runs, so /interrupt lands within one block even inside a single long
    forward pass. The blocks' own lists are left alone: a hook on every resnet and attention cost ~5%
    of a tiny model's step."""
    import torch

    ctx = context.current()

    def check(_module, _args):
        ctx.check_interrupt()

    def lists(parent):
        return [child for child in parent.children() if isinstance(child, torch.nn.ModuleList)]

    top = [child for child in module.children() if not isinstance(child, torch.nn.ModuleList)]
    hooks = [block.register_forward_pre_hook(check)
             for blocks in lists(module) + [nested for child in top for nested in lists(child)]
             for block in blocks]
    try:
        yield module
    finally:
        for hook in hooks:
            hook.remove()
