"""The JSON shapes of the status, queue, history and jobs endpoints, built from prompt records.

Presentation lives here, apart from storage, so the shapes ComfyUI clients parse are written in one
place whatever backend holds the records. The editor parses jobs strictly (a zod schema): an
execution_error must carry string node_id, node_type, exception_message, exception_type and a list
traceback, so errors the server made up itself (a crash, a shutdown) are normalised to that shape here.
"""

from __future__ import annotations

from .services import PromptRecord

_MEDIA = ("images", "video", "audio")


def status_payload(remaining: int) -> dict:
    """The websocket `status` event's data; GET /prompt answers its inner `status`."""
    return {"status": {"exec_info": {"queue_remaining": remaining}}}


def queue_item(record: PromptRecord) -> list:
    """ComfyUI's queue/history tuple: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    return [record.number, record.id, record.prompt, record.extra_data, record.outputs_to_execute]


def queue_view(running: list[PromptRecord], pending: list[PromptRecord]) -> dict:
    return {"queue_running": [queue_item(r) for r in running], "queue_pending": [queue_item(r) for r in pending]}


def status_messages(record: PromptRecord) -> dict:
    """ComfyUI's history `status` block."""
    return {"status_str": "success" if record.status == "completed" else "error",
            "completed": record.status == "completed", "messages": record.messages}


def history_entry(record: PromptRecord) -> dict:
    return {"prompt": queue_item(record), "outputs": record.outputs, "status": status_messages(record),
            "meta": record.meta}


def history_view(records: list[PromptRecord]) -> dict:
    return {r.id: history_entry(r) for r in records}


def _previews(record: PromptRecord) -> list[dict]:
    found = []
    for node, ui in record.outputs.items():
        if not isinstance(ui, dict):
            continue
        for media in _MEDIA:
            for item in ui.get(media) or ():
                if isinstance(item, dict) and item.get("filename"):
                    found.append({**item, "nodeId": str(node), "mediaType": media})
    return found


def _count(record: PromptRecord) -> int:
    return sum(len(v) for ui in record.outputs.values() if isinstance(ui, dict)
               for k, v in ui.items() if isinstance(v, list) and k != "animated")  # a flag, not items


def _execution_error(record: PromptRecord) -> dict | None:
    err = record.error
    if record.status != "failed" or not err:
        return None
    tb = err.get("traceback") or []
    return {**err,
            "node_id": str(err.get("node_id") or ""), "node_type": str(err.get("node_type") or ""),
            "exception_message": str(err.get("exception_message") or err.get("message") or "failed"),
            "exception_type": str(err.get("exception_type") or err.get("type") or "Error"),
            "traceback": [str(t) for t in tb] if isinstance(tb, list) else str(tb).splitlines()}


def _workflow_id(record: PromptRecord) -> str | None:
    workflow = ((record.extra_data.get("extra_pnginfo") or {}).get("workflow") or {})
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return wid if isinstance(wid, str) else None


def job_summary(record: PromptRecord) -> dict:
    previews = _previews(record)
    saved = [p for p in previews if p.get("type") == "output"]
    return {"id": record.id, "status": record.status, "priority": record.number,
            "create_time": record.create_time, "execution_start_time": record.start_time,
            "execution_end_time": record.end_time, "preview_output": (saved or previews or [None])[0],
            "outputs_count": _count(record), "previewable_outputs_count": len(previews),
            "execution_error": _execution_error(record), "workflow_id": _workflow_id(record)}


def jobs_page(records: list[PromptRecord], total: int, limit: int | None, offset: int) -> dict:
    return {"jobs": [job_summary(r) for r in records],
            "pagination": {"offset": offset, "limit": limit if limit is not None else total, "total": total,
                           "has_more": offset + len(records) < total}}


def job_detail(record: PromptRecord) -> dict:
    detail = {**job_summary(record),
              "workflow": {"prompt": record.prompt, "extra_data": record.extra_data},
              "outputs": record.outputs,
              "update_time": record.end_time or record.start_time or record.create_time,
              "execution_meta": record.meta}
    if record.end_time is not None:
        detail["execution_status"] = status_messages(record)
    return detail
