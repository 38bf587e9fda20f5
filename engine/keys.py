"""Cache keys: a short digest per node that changes whenever its result could.

A node's key hashes its type, version, fingerprint, constant inputs by name, and for each linked input
the key of the upstream node plus the slot it reads. Upstream keys enter as short hex digests, so a key
costs the same at the end of a 10,000-node chain as at its start (no nested tuples to rebuild or
compare). Lazy inputs are left out of this base key; the lazy inputs a run actually consumed are folded
in afterwards (`with_consumed`), so an unused branch never invalidates a node.

Values enter by type, never through a bare `repr()` of arbitrary objects: JSON-like values (whose repr
is exact and unambiguous) take a fast path; anything else — a fingerprint that is a numpy array, a tensor
an expansion passes on, a mapping — is digested by `value_digest` (arrays and tensors by content,
mappings in sorted order, with a depth and size limit). A value that cannot be digested raises
`Unkeyable`, and the node is then re-run every time: a key may miss, it must never collide.
"""

from __future__ import annotations

import math
import os
import sys
from hashlib import blake2b

from .graph import Link

DIGEST = 16
MAX_DEPTH = 32  # nesting deeper than this is not keyed (the node re-runs)

_PLAIN = frozenset((int, float, str, bool, type(None)))


class Unkeyable(Exception):
    """A value that cannot be pinned by a digest: the node cannot be cached."""


def node_key(class_type: str, version: str, fingerprint, inputs: dict, nodes: dict, skip=()) -> str | None:
    """The base key, or None while an upstream key is still unknown.

    `nodes` maps node ids to objects whose `.key` is their key (None when not known yet); names in
    `skip` (the lazy inputs) are left out. Raises `Unkeyable` for values `value_digest` cannot pin.
    """
    if type(fingerprint) not in _PLAIN:
        fingerprint = ("digest", value_digest(fingerprint))
    parts = [class_type, version, fingerprint]
    for name, value in inputs.items():  # schema order, fixed by validation
        if skip and name in skip:
            continue
        kind = type(value)
        if kind is Link:
            upstream = nodes[value.node].key
            if upstream is None:
                return None
            parts.append((name, upstream, value.slot))
        elif kind in _PLAIN or _is_plain(value):
            parts.append((name, value))
        else:
            parts.append((name, "digest", value_digest(value)))
    return blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=DIGEST).hexdigest()


def _is_plain(value) -> bool:
    """Lists/tuples/dicts of JSON-like values, whose repr pins them exactly (and fast)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind in _PLAIN:
            continue
        if depth >= MAX_DEPTH:
            return False
        if kind is dict:
            for k, v in item.items():
                if type(k) not in _PLAIN:
                    return False
                stack.append((v, depth + 1))
        elif kind is list or kind is tuple:
            stack.extend((v, depth + 1) for v in item)
        else:
            return False
    return True


def value_digest(value) -> str:
    """A content digest of `value` that differs whenever two values differ (by type, then content).

    Raises Unkeyable for objects it cannot read faithfully (models, open files, arbitrary classes)."""
    h = blake2b(digest_size=DIGEST)
    _feed(h, value, 0)
    return h.hexdigest()


def _feed(h, value, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Unkeyable(f"nested deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None:
        h.update(b"N")
    elif kind is bool:
        h.update(b"T" if value else b"F")
    elif kind is int:
        text = str(value).encode()
        h.update(b"i%d:" % len(text) + text)
    elif kind is float:
        # Every NaN is the same value to a user; float.hex pins the rest exactly (-0.0 included).
        text = b"nan" if math.isnan(value) else float.hex(value).encode()
        h.update(b"f%d:" % len(text) + text)
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(data) + data)
    elif kind is bytes or kind is bytearray:
        h.update(b"b%d:" % len(value) + bytes(value))
    elif kind is list or kind is tuple:
        h.update((b"l" if kind is list else b"t") + b"%d:" % len(value))
        for item in value:
            _feed(h, item, depth + 1)
    elif kind is dict:
        # Sorted by each key's own digest: independent of insertion order and of comparable keys.
        items = sorted((value_digest_at(k, depth + 1), v) for k, v in value.items())
        h.update(b"d%d:" % len(items))
        for key_digest, item in items:
            h.update(key_digest.encode())
            _feed(h, item, depth + 1)
    elif kind is frozenset or kind is set:
        members = sorted(value_digest_at(v, depth + 1) for v in value)
        h.update(b"S%d:" % len(members) + "".join(members).encode())
    elif _is_ndarray(value):
        _feed_array(h, value)
    elif _is_tensor(value):
        _feed_tensor(h, value)
    else:
        raise Unkeyable(f"cannot key a value of type {kind.__name__}")


def value_digest_at(value, depth: int) -> str:
    h = blake2b(digest_size=DIGEST)
    _feed(h, value, depth)
    return h.hexdigest()


def _is_ndarray(value) -> bool:
    numpy = sys.modules.get("numpy")  # no array exists before numpy was imported by someone
    return numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic))


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _feed_array(h, array) -> None:
    import numpy

    array = numpy.asarray(array)
    if array.dtype.hasobject:
        h.update(b"O%d:" % array.size)
        for item in array.ravel().tolist():
            _feed(h, item, 1)
        return
    header = f"a{array.dtype.str}{array.shape}".encode()
    h.update(b"%d:" % len(header) + header)
    h.update(numpy.ascontiguousarray(array).data)


def _feed_tensor(h, tensor) -> None:
    import torch

    tensor = tensor.detach()
    if tensor.is_sparse or tensor.layout != torch.strided or tensor.is_meta:
        raise Unkeyable("cannot key a sparse or meta tensor")
    header = f"T{tensor.dtype}{tuple(tensor.shape)}".encode()
    h.update(b"%d:" % len(header) + header)
    flat = tensor.cpu().contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")


def with_consumed(base: str, consumed: tuple) -> str:
    """The key downstream nodes see from a node with lazy inputs: base plus what it consumed."""
    return blake2b((base + repr(consumed)).encode(), digest_size=DIGEST).hexdigest()


def volatile_key() -> str:
    """A key no later run can match: for nodes that must always re-run (and everything below them)."""
    return os.urandom(DIGEST).hex()
