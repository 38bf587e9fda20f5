"""Node results kept between runs, under one of four policies chosen by a short spec string.

    "default"              keep what the last workflow used, drop the rest after each run
    "lru:N"                the N most recently used entries
    "ram:BYTES[,vram:BYTES]"  byte budgets (e.g. "ram:4GB,vram:2GB"), least recently used out first
    "none"                 nothing is kept

Entries are keyed by the node's cache key (engine/keys.py). Cached values are shared with later nodes,
so an in-place edit would silently poison them: every torch tensor's `_version` counter is recorded when
an entry is stored, and an entry whose tensors moved on is dropped instead of served.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

from .sizes import parse_size

# Values that hold no tensors and whose size is not worth walking for.
_LEAVES = (int, float, bool, str, type(None), complex)
_WALK_DEPTH = 8  # containers nest a few levels (CONDITIONING: slot list > list > pair > dict > tensor)


@dataclass(slots=True)
class Entry:
    """One node's stored result. `consumed` names the lazy inputs it used, with their upstream keys."""

    outputs: list  # one list per output slot
    ui: dict | None = None
    consumed: tuple = ()
    children: tuple = ()  # keys of the nodes its expansion made: kept alive while it is used
    versions: tuple = ()  # (tensor, _version) pairs at store time
    ram: int = 0
    vram: int = 0

    def intact(self) -> bool:
        for tensor, version in self.versions:
            if tensor._version != version:
                return False
        return True


def _torch_tensor_type():
    torch = sys.modules.get("torch")  # no tensor can exist before torch was imported by someone
    return torch.Tensor if torch is not None else None


def tensors_in(value, tensor_type) -> list:
    """Tensors reachable through lists, tuples and dicts (not through arbitrary objects)."""
    found = []
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, tensor_type):
            found.append(item)
        elif depth < _WALK_DEPTH and isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item if not isinstance(v, _LEAVES))
        elif depth < _WALK_DEPTH and isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if not isinstance(v, _LEAVES))
    return found


def estimate_size(value) -> tuple[int, int]:
    """(RAM bytes, GPU bytes) held by a value: tensors, ndarrays, bytes, containers, modules, objects.

    Shared objects are counted once; arbitrary objects are walked through their attributes, so a model
    wrapper counts the weights it holds.
    """
    tensor_type = _torch_tensor_type()
    module_type = sys.modules["torch"].nn.Module if tensor_type is not None else None
    ram = vram = 0
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _LEAVES):
            ram += sys.getsizeof(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if tensor_type is not None and isinstance(item, tensor_type):
            nbytes = item.element_size() * item.nelement()
            if item.device.type == "cpu" or item.device.type == "meta":
                ram += nbytes
            else:
                vram += nbytes
        elif hasattr(item, "nbytes") and hasattr(item, "dtype"):  # numpy arrays
            ram += int(item.nbytes)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            ram += len(item)
        elif depth >= _WALK_DEPTH:
            ram += sys.getsizeof(item)
        elif isinstance(item, (list, tuple, set, frozenset)):
            ram += sys.getsizeof(item)
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            ram += sys.getsizeof(item)
            stack.extend((v, depth + 1) for v in item.values())
        elif module_type is not None and isinstance(item, module_type):
            stack.extend((t, depth + 1) for t in item.parameters())
            stack.extend((t, depth + 1) for t in item.buffers())
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            ram += sys.getsizeof(item)
            stack.extend((v, depth + 1) for v in vars(item).values())
        else:
            ram += sys.getsizeof(item)
    return ram, vram


class Cache:
    """The "default" policy, and the base the budgeted ones refine.

    Recency order is kept in an OrderedDict; `end_run(keys)` is called with the keys of everything the
    finished workflow consists of.
    """

    spec = "default"

    def __init__(self):
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key) -> bool:
        return key in self.entries

    def peek(self, key) -> Entry | None:
        """The entry without touching its recency or checking it (for planning only)."""
        return self.entries.get(key)

    def get(self, key) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.versions and not entry.intact():
            del self.entries[key]
            self._forget(entry)
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key, outputs: list, ui: dict | None = None, consumed: tuple = (), children: tuple = ()) -> None:
        entry = Entry(outputs, ui, consumed, children)
        tensor_type = _torch_tensor_type()
        if tensor_type is not None:
            entry.versions = tuple((t, t._version) for t in tensors_in(outputs, tensor_type))
        if not self._admit(entry):
            return
        old = self.entries.pop(key, None)
        if old is not None:
            self._forget(old)
        self.entries[key] = entry
        self._evict()

    def end_run(self, keys) -> None:
        stale = [k for k in self.entries if k not in keys]
        for k in stale:
            self._forget(self.entries.pop(k))

    def clear(self) -> None:
        self.entries.clear()

    def stats(self) -> dict:
        return {"policy": self.spec, "entries": len(self.entries)}

    # Budget hooks: the default policy has no budget.
    def _admit(self, entry: Entry) -> bool:
        return True

    def _forget(self, entry: Entry) -> None:
        pass

    def _evict(self) -> None:
        pass


class NoCache(Cache):
    spec = "none"

    def put(self, key, outputs, ui=None, consumed=(), children=()) -> None:
        pass


class LRUCache(Cache):
    def __init__(self, size: int):
        super().__init__()
        if size < 1:
            raise ValueError("lru:N needs N >= 1")
        self.size = size
        self.spec = f"lru:{size}"

    def end_run(self, keys) -> None:
        pass

    def _evict(self) -> None:
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class BudgetCache(Cache):
    """Byte budgets for RAM and (optionally) GPU memory; an entry larger than a budget is not kept."""

    def __init__(self, ram: int, vram: int | None = None):
        super().__init__()
        self.ram_budget, self.vram_budget = ram, vram
        self.ram = self.vram = 0
        self.spec = f"ram:{ram}" + (f",vram:{vram}" if vram is not None else "")

    def end_run(self, keys) -> None:
        pass

    def clear(self) -> None:
        super().clear()
        self.ram = self.vram = 0

    def stats(self) -> dict:
        return {**super().stats(), "ram_bytes": self.ram, "vram_bytes": self.vram}

    def _admit(self, entry: Entry) -> bool:
        entry.ram, entry.vram = estimate_size(entry.outputs)
        if entry.ui:
            entry.ram += estimate_size(entry.ui)[0]
        if entry.ram > self.ram_budget:
            return False
        if self.vram_budget is not None and entry.vram > self.vram_budget:
            return False
        self.ram += entry.ram
        self.vram += entry.vram
        return True

    def _forget(self, entry: Entry) -> None:
        self.ram -= entry.ram
        self.vram -= entry.vram

    def _evict(self) -> None:
        entries = self.entries
        while entries and (self.ram > self.ram_budget
                           or (self.vram_budget is not None and self.vram > self.vram_budget)):
            self._forget(entries.popitem(last=False)[1])


def make_cache(spec: str | Cache | None = "default") -> Cache:
    """Build a cache from its spec string (the CLI's --cache value)."""
    if isinstance(spec, Cache):
        return spec
    text = (spec or "none").strip().lower()
    if text == "default":
        return Cache()
    if text in ("none", "off", "0"):
        return NoCache()
    if text.startswith("lru:"):
        try:
            return LRUCache(int(text[4:]))
        except ValueError as exc:
            raise ValueError(f"bad cache spec {spec!r}: {exc}") from None
    if text.startswith(("ram:", "vram:")):
        budgets: dict[str, int] = {}
        for part in text.split(","):
            kind, _, size = part.partition(":")
            if kind not in ("ram", "vram") or kind in budgets:
                raise ValueError(f"bad cache spec {spec!r}: expected ram:BYTES[,vram:BYTES]")
            budgets[kind] = parse_size(size)
        if "ram" not in budgets:
            raise ValueError(f"bad cache spec {spec!r}: a vram budget needs a ram budget too")
        return BudgetCache(budgets["ram"], budgets.get("vram"))
    raise ValueError(f"unknown cache spec {spec!r}: use default, none, lru:N or ram:BYTES[,vram:BYTES]")
