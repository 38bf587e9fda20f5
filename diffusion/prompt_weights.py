"""Prompt weighting syntax, with ComfyUI's rules (pure Python, no torch).

- `(text)` multiplies the weight around it by 1.1; nesting multiplies again: `((text))` is 1.21.
- `(text:1.5)` sets the weight to 1.5 (it replaces, it does not multiply): the number is whatever
  follows the last colon inside the parentheses and must read as a Python float, otherwise the colon
  stays part of the text and the group counts as a plain `(...)`.
- `\\(` and `\\)` are literal parentheses. `[text]` and `BREAK` are plain text, as in ComfyUI.
- A `)` with no `(` before it is plain text, and so is everything after it at the top level (ComfyUI's
  nesting counter goes below zero and never closes a group again).
- `embedding:name` starts a textual inversion when it begins a weighted segment or follows a space
  or a newline; `embedding_words` splits a segment there.
"""

from __future__ import annotations

import re

EMBEDDING_PREFIX = "embedding:"
PAREN_WEIGHT = 1.1
_OPEN, _CLOSE = "\ue000", "\ue001"  # escaped parentheses while the groups are found
_EMBEDDING_SPLIT = re.compile(r"[ \n]" + re.escape(EMBEDDING_PREFIX))


def _groups(text: str) -> list[str]:
    """Top-level pieces: runs of plain text and whole `(...)` groups (unclosed ones stay open)."""
    pieces: list[str] = []
    buf: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0 and buf:
                pieces.append("".join(buf))
                buf = []
            buf.append(ch)
            depth += 1
        elif ch == ")":
            depth -= 1
            buf.append(ch)
            if depth == 0:
                pieces.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
    if buf:
        pieces.append("".join(buf))
    return pieces


def _weigh(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _groups(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * PAREN_WEIGHT
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass
        out.extend(_weigh(inner, inner_weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """[(segment, weight), ...] in prompt order; segments keep their spaces, escapes are resolved."""
    hidden = text.replace("\\)", _CLOSE).replace("\\(", _OPEN)
    return [(seg.replace(_CLOSE, ")").replace(_OPEN, "("), w) for seg, w in _weigh(hidden, 1.0)]


def embedding_words(segment: str) -> list[str]:
    """A segment cut before each `embedding:` that follows a space or newline (the separator goes);
    empty pieces are dropped. Pieces that start with `embedding:` name an embedding."""
    parts = _EMBEDDING_SPLIT.split(segment)
    pieces = parts[:1] + [EMBEDDING_PREFIX + p for p in parts[1:]]
    return [p for p in pieces if p]


def embedding_reference(piece: str) -> tuple[str, str]:
    """`embedding:name rest...` -> (name, rest): the name ends at the first whitespace, the rest is
    text again (its words joined by single spaces)."""
    words = piece[len(EMBEDDING_PREFIX):].strip("\n").split()
    return (words[0], " ".join(words[1:])) if words else ("", "")


def embedding_names(text: str) -> list[str]:
    """The embedding names a prompt refers to (for fingerprints), in order, without repeats."""
    names: list[str] = []
    for segment, _weight in parse_weights(text):
        for piece in embedding_words(segment):
            if piece.startswith(EMBEDDING_PREFIX):
                name = embedding_reference(piece)[0]
                for candidate in (name, name.strip(",")):
                    if candidate and candidate not in names:
                        names.append(candidate)
    return names
