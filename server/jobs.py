"""The shapes the history and jobs endpoints return, built from stored prompt rows.

The editor parses jobs strictly (a zod schema): an execution_error must carry string node_id,
node_type, exception_message, exception_type and a list traceback, so errors the server made up
itself (a crash, a shutdown) are normalised to that shape here.
"""

from __future__ import annotations

from .security import BadRequest
from .store import STATUSES, PromptRow, status_messages

_MEDIA = ("images", "video", "audio")


def history_entry(row: PromptRow) -> dict:
    return {"prompt": row.queue_item(), "outputs": row.outputs, "status": status_messages(row),
            "meta": row.meta}


def parse_jobs_query(query) -> tuple[list[str] | None, str, bool, int | None, int]:
    statuses = [s for s in query.get("status", "").split(",") if s] or None
    for s in statuses or ():
        if s not in STATUSES:
            raise BadRequest(f"unknown status {s!r}; use {', '.join(STATUSES)}", "invalid_query")
    sort_by = query.get("sort_by", "created_at")
    if sort_by not in ("created_at", "execution_duration"):
        raise BadRequest("sort_by must be created_at or execution_duration", "invalid_query")
    order = query.get("sort_order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("sort_order must be asc or desc", "invalid_query")
    limit = query_int(query, "limit")
    offset = query_int(query, "offset", 0)
    return statuses, sort_by, order == "desc", limit, offset


def query_int(query, name: str, default=None, minimum: int = 0):
    """An integer query parameter (`default` when absent or empty); a 400 naming it otherwise."""
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw!r}", "invalid_query") from None
    if value < minimum:
        raise BadRequest(f"{name} must be >= {minimum}", "invalid_query")
    return value


def _previews(row: PromptRow) -> list[dict]:
    found = []
    for node, ui in row.outputs.items():
        if not isinstance(ui, dict):
            continue
        for media in _MEDIA:
            for item in ui.get(media) or ():
                if isinstance(item, dict) and item.get("filename"):
                    found.append({**item, "nodeId": str(node), "mediaType": media})
    return found


def _count(row: PromptRow) -> int:
    return sum(len(v) for ui in row.outputs.values() if isinstance(ui, dict)
               for v in ui.values() if isinstance(v, list))


def _execution_error(row: PromptRow) -> dict | None:
    err = row.error
    if row.status != "failed" or not err:
        return None
    tb = err.get("traceback") or []
    return {**err,
            "node_id": str(err.get("node_id") or ""), "node_type": str(err.get("node_type") or ""),
            "exception_message": str(err.get("exception_message") or err.get("message") or "failed"),
            "exception_type": str(err.get("exception_type") or err.get("type") or "Error"),
            "traceback": [str(t) for t in tb] if isinstance(tb, list) else str(tb).splitlines()}


def _workflow_id(row: PromptRow) -> str | None:
    workflow = ((row.extra_data.get("extra_pnginfo") or {}).get("workflow") or {})
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return wid if isinstance(wid, str) else None


def job_summary(row: PromptRow) -> dict:
    previews = _previews(row)
    saved = [p for p in previews if p.get("type") == "output"]
    return {"id": row.id, "status": row.status, "priority": row.number, "create_time": row.create_time,
            "execution_start_time": row.start_time, "execution_end_time": row.end_time,
            "preview_output": (saved or previews or [None])[0], "outputs_count": _count(row),
            "previewable_outputs_count": len(previews), "execution_error": _execution_error(row),
            "workflow_id": _workflow_id(row)}


def job_detail(row: PromptRow) -> dict:
    detail = {**job_summary(row),
              "workflow": {"prompt": row.prompt, "extra_data": row.extra_data},
              "outputs": row.outputs,
              "update_time": row.end_time or row.start_time or row.create_time,
              "execution_meta": row.meta}
    if row.end_time is not None:
        detail["execution_status"] = status_messages(row)
    return detail
