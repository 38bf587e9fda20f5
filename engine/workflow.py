"""Reading and writing workflows in every format a user may hand us, detected from their shape.

Accepted: ComfyUI's API format, genloom's versioned envelope, ComfyUI's UI format (converted with the
registry's schemas), `{"prompt": ...}` / `{"workflow": ...}` wrappers, and PNG files whose text chunks
carry a workflow (as ComfyUI's SaveImage writes them), and MP4/WEBM files whose container tags carry
one (as ComfyUI's SaveVideo writes them).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import WorkflowFormatError
from .migrations import CURRENT_VERSION, MigrationError, migrate
from .pngtext import PNG_SIGNATURE, read_png_text
from .ui_import import UIImportError, ui_to_api
from .videofiles import looks_like_video, read_video_tags


@dataclass
class Workflow:
    graph: dict  # API format: id -> {"class_type", "inputs", "_meta"?}
    layout: dict | None = None  # the editor's UI workflow, when known
    metadata: dict = field(default_factory=dict)
    format: str = "api"  # what it was read from: api | envelope | ui | png | video


def save_workflow(workflow: Workflow) -> dict:
    """The genloom envelope for `workflow` (a fresh, JSON-ready dict)."""
    return {"schema_version": CURRENT_VERSION, "graph": copy.deepcopy(workflow.graph),
            "layout": copy.deepcopy(workflow.layout), "metadata": copy.deepcopy(workflow.metadata)}


def load_workflow(source: Any, registry=None) -> Workflow:
    """Read a workflow from a dict, a JSON string, a .json path, a PNG or a video path.

    `registry` is needed only when the input is in the UI format (to know each node's widgets).
    """
    if isinstance(source, Workflow):
        return source
    if isinstance(source, (bytes, bytearray)):
        if bytes(source[:8]) == PNG_SIGNATURE:
            return _from_png_chunks(read_png_text(bytes(source)), registry, "bytes")
        source = bytes(source).decode("utf-8")
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return from_data(_parse_json(source, "the given text"), registry)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), registry)
    if isinstance(source, dict):
        return from_data(source, registry)
    raise WorkflowFormatError(f"cannot read a workflow from a {type(source).__name__}")


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(f"{where} is not valid JSON: {exc}") from None


def _from_path(path: Path, registry) -> Workflow:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head == PNG_SIGNATURE:
                return _from_png_chunks(read_png_text(path), registry, str(path))
            if looks_like_video(head):
                return _from_video(path, registry)
            text = (head + fh.read()).decode("utf-8-sig")
    except FileNotFoundError:
        raise WorkflowFormatError(f"workflow file not found: {path}") from None
    except IsADirectoryError:
        raise WorkflowFormatError(f"workflow path is a folder: {path}") from None
    except UnicodeDecodeError:
        raise WorkflowFormatError(f"{path} is neither JSON text, a PNG image nor a video") from None
    return from_data(_parse_json(text, str(path)), registry)


def _from_video(path: Path, registry) -> Workflow:
    try:
        tags = read_video_tags(path)
    except ValueError as exc:
        raise WorkflowFormatError(f"{path}: {exc}") from None
    return _from_png_chunks(tags, registry, str(path), "video", "container tag")


def _from_png_chunks(chunks: dict, registry, where: str, fmt: str = "png", what: str = "text chunk") -> Workflow:
    """ComfyUI's SaveImage convention: prefer the editor's "workflow" chunk, else the "prompt" one."""
    if chunks.get("workflow"):
        layout = _parse_json(chunks["workflow"], f"{where}: the 'workflow' {what}")
        wf = from_data(layout, registry)
    elif chunks.get("prompt"):
        wf = from_data(_parse_json(chunks["prompt"], f"{where}: the 'prompt' {what}"), registry)
    else:
        raise WorkflowFormatError(f"{where}: the {fmt.upper()} carries no 'workflow' or 'prompt' {what}")
    wf.format = fmt
    return wf


def detect_format(data: Any) -> str:
    """'envelope', 'ui', 'api', 'prompt_wrapper' or 'workflow_wrapper'; WorkflowFormatError if none."""
    if not isinstance(data, dict):
        raise WorkflowFormatError(f"a workflow is a JSON object, got {type(data).__name__}")
    if "schema_version" in data:
        return "envelope"
    if isinstance(data.get("nodes"), list) and "links" in data:
        return "ui"
    if data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    if "prompt" in data and isinstance(data["prompt"], (dict, str)):
        return "prompt_wrapper"
    if "workflow" in data and isinstance(data["workflow"], (dict, str)):
        return "workflow_wrapper"
    if data and any(isinstance(v, dict) and "class_type" in v for v in data.values()):
        bad = [k for k, v in data.items() if not (isinstance(v, dict) and "class_type" in v)]
        raise WorkflowFormatError(f"API-format workflow with entries that are not nodes "
                                  f"(no class_type): {', '.join(map(str, bad[:10]))}")
    keys = ", ".join(map(str, list(data)[:10])) or "(empty)"
    raise WorkflowFormatError(
        "unrecognised workflow format: expected an API-format graph ({id: {class_type, inputs}}), "
        "a genloom envelope ({schema_version, graph, ...}) or a UI workflow ({nodes, links, ...}); "
        f"found keys: {keys}")


def _maybe_json(value: Any, where: str) -> Any:
    return _parse_json(value, where) if isinstance(value, str) else value


def from_data(data: Any, registry=None) -> Workflow:
    kind = detect_format(data)
    if kind == "envelope":
        try:
            envelope = migrate(data)
        except MigrationError as exc:
            raise WorkflowFormatError(str(exc)) from None
        from .envelope import parse_envelope

        if envelope.get("metadata") is None:
            envelope["metadata"] = {}
        parsed = parse_envelope(envelope)
        if parsed.graph and detect_format(parsed.graph) != "api":
            raise WorkflowFormatError("genloom envelope: 'graph' is not an API-format graph")
        return Workflow(parsed.graph, parsed.layout, parsed.metadata, "envelope")
    if kind == "ui":
        if registry is None:
            raise WorkflowFormatError("a UI-format workflow needs the node registry to be converted")
        try:
            graph = ui_to_api(data, registry)
        except (UIImportError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise WorkflowFormatError(f"cannot convert the UI workflow: {type(exc).__name__}: {exc}") from None
        return Workflow(graph, data, {}, "ui")
    if kind == "api":
        return Workflow(data, None, {}, "api")
    if kind == "prompt_wrapper":
        inner = _maybe_json(data["prompt"], "'prompt'")
        if not isinstance(inner, dict) or (inner and detect_format(inner) != "api"):
            raise WorkflowFormatError("'prompt' must hold an API-format graph")
        layout = ((data.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        if layout is None and isinstance(data.get("workflow"), dict):
            layout = data["workflow"]
        return Workflow(inner, layout if isinstance(layout, dict) else None, {}, "api")
    inner = _maybe_json(data["workflow"], "'workflow'")
    if detect_format(inner) not in ("ui", "api", "envelope"):
        raise WorkflowFormatError("'workflow' must hold a workflow")
    return from_data(inner, registry)
