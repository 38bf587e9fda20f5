"""Text for the text nodes: regular-expression matching and extraction with ComfyUI's modes and
flags, a key read from the first JSON object in some text, the text PreviewAny shows, and text files
written to the output folder."""

from __future__ import annotations

import json
import re
from pathlib import Path


CASE_MODES = ["UPPERCASE", "lowercase", "Capitalize", "Title Case"]
TRIM_MODES = ["Both", "Left", "Right"]
COMPARE_MODES = ["Starts With", "Ends With", "Equal"]
EXTRACT_MODES = ["First Match", "All Matches", "First Group", "All Groups"]
TEXT_FORMATS = ["txt", "csv", "md", "json"]


def regex_flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


def convert_case(text: str, mode: str) -> str:
    if mode == "UPPERCASE":
        return text.upper()
    if mode == "lowercase":
        return text.lower()
    if mode == "Capitalize":
        return text.capitalize()
    if mode == "Title Case":
        return text.title()
    return text


def trim(text: str, mode: str) -> str:
    return {"Both": text.strip, "Left": text.lstrip, "Right": text.rstrip}.get(mode, lambda: text)()


def compare(a: str, b: str, mode: str, case_sensitive: bool) -> bool:
    if not case_sensitive:
        a, b = a.lower(), b.lower()
    if mode == "Starts With":
        return a.startswith(b)
    if mode == "Ends With":
        return a.endswith(b)
    return a == b


def regex_matches(text: str, pattern: str, flags: int) -> bool:
    """Whether the pattern occurs anywhere; an invalid pattern matches nothing."""
    try:
        return re.search(pattern, text, flags) is not None
    except re.error:
        return False


def _group(match: re.Match, index: int) -> str | None:
    """Group `index` of a match, as ComfyUI reads it: None when the pattern has no such group or it
    did not take part in the match."""
    if len(match.groups()) >= index:
        return match.group(index)
    return None


def regex_extract(text: str, pattern: str, mode: str, flags: int, group_index: int) -> str:
    """ComfyUI's RegexExtract: the first/every match or group, several joined with newlines; an
    invalid pattern, or nothing found, gives the empty string."""
    try:
        if mode == "First Match":
            match = re.search(pattern, text, flags)
            return match.group(0) if match else ""
        if mode == "All Matches":
            found = re.findall(pattern, text, flags)
            return "\n".join(m[0] if isinstance(m, tuple) else m for m in found)
        if mode == "First Group":
            match = re.search(pattern, text, flags)
            return (_group(match, group_index) or "") if match else ""
        if mode == "All Groups":  # only matches of a pattern that has groups count
            picked = (_group(m, group_index) for m in re.finditer(pattern, text, flags) if m.groups())
            return "\n".join(p for p in picked if p is not None)
    except re.error:
        return ""
    return ""


def json_extract(text: str, key: str) -> str:
    """The value of `key` in the first JSON object found in `text` (Markdown fences and prose around
    it are skipped), as text; "" when there is none or the key is missing or null."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            data, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        value = data.get(key) if isinstance(data, dict) else None
        return "" if value is None else str(value)
    return ""


def preview_text(source) -> str:
    """What PreviewAny shows: text as it is, numbers and booleans with str(), anything else as
    indented JSON when it can be, else str() (tensors print with 6 edge items)."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (bool, int, float)):
        return str(source)
    try:
        return json.dumps(source, indent=4)
    except (TypeError, ValueError):
        pass
    try:
        import sys

        torch = sys.modules.get("torch")  # only when something already made a tensor
        if torch is not None and isinstance(source, torch.Tensor):
            torch.set_printoptions(edgeitems=6)
            try:
                return str(source)
            finally:
                torch.set_printoptions(profile="default")
        return str(source)
    except Exception:  # noqa: BLE001 - an object whose __str__ fails
        return "source exists, but could not be serialized."


def save_text(text: str, folder: Path, prefix: str, extension: str) -> dict:
    """Write `text` as `{prefix}_{counter:05}.{extension}` under `folder` (json is pretty-printed when
    it parses) and return the UI entry. A prefix may name a subfolder; leaving `folder` raises
    UnsafePath. The counter is one past the highest already used by this prefix and extension."""
    from .images import save_target

    target, subfolder, name = save_target(folder, prefix, "output")
    if extension == "json":
        try:
            text_out = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except json.JSONDecodeError:
            text_out = text
    else:
        text_out = text
    pattern = re.compile(re.escape(name) + r"_(\d+)\." + re.escape(extension) + "$")
    counter = 1 + max((int(m.group(1)) for m in map(pattern.match, (p.name for p in target.iterdir())) if m),
                      default=0)
    while True:  # exclusive create: two runs saving at once never overwrite each other
        filename = f"{name}_{counter:05}.{extension}"
        try:
            with open(target / filename, "x", encoding="utf-8") as fh:
                fh.write(text_out)
            break
        except FileExistsError:
            counter += 1
    return {"filename": filename, "subfolder": subfolder, "type": "output"}
