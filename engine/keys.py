"""Cache keys: a short digest per node that changes whenever its result could.

A node's key hashes its type, version, fingerprint, constant inputs by name, and for each linked input
the key of the upstream node plus the slot it reads. Upstream keys enter as short hex digests, so a key
costs the same at the end of a 10,000-node chain as at its start (no nested tuples to rebuild or
compare). Lazy inputs are left out of this base key; the lazy inputs a run actually consumed are folded
in afterwards (`with_consumed`), so an unused branch never invalidates a node.
"""

from __future__ import annotations

import os
from hashlib import blake2b

from .graph import Link

DIGEST = 16


_PLAIN = frozenset((int, float, str, bool, type(None)))


class Unkeyable(Exception):
    """A constant whose repr does not pin its value (a tensor, a model): the node cannot be cached."""


def node_key(class_type: str, version: str, fingerprint, inputs: dict, nodes: dict, skip=()) -> str | None:
    """The base key, or None while an upstream key is still unknown.

    `nodes` maps node ids to objects whose `.key` is their key (None when not known yet); names in
    `skip` (the lazy inputs) are left out. Raises `Unkeyable` for constants other than JSON-like values (only an
    expansion can produce those).
    """
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
        else:
            if kind not in _PLAIN:
                _check_plain(value)
            parts.append((name, value))
    return blake2b(repr(parts).encode(), digest_size=DIGEST).hexdigest()


def _check_plain(value) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN:
            continue
        if kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        else:
            raise Unkeyable(kind.__name__)


def with_consumed(base: str, consumed: tuple) -> str:
    """The key downstream nodes see from a node with lazy inputs: base plus what it consumed."""
    return blake2b((base + repr(consumed)).encode(), digest_size=DIGEST).hexdigest()


def volatile_key() -> str:
    """A key no later run can match: for nodes that must always re-run (and everything below them)."""
    return os.urandom(DIGEST).hex()
