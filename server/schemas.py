"""The request and response bodies of the HTTP API, declared once as pydantic models.

The same declarations check what arrives (a bad field gets a 400 naming it and what was wrong, in
the server's usual error shape) and make the OpenAPI document (openapi.py). Request models are
lenient where ComfyUI's server is: flags count by truthiness, unknown fields are ignored, the
workflow's own values are never coerced. Response models describe what the views (views.py) build;
the tests check real answers against them, so the document cannot drift from the server.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, RootModel,
                      StringConstraints, ValidationError, WithJsonSchema)
from pydantic_core import PydanticCustomError

from .errors import BadRequest
from .services import JOB_SORTS, STATUSES

MAX_PROMPT_ID = 128
MAX_COUNT = 2**62  # counts and offsets: far beyond any store, within SQLite's 64-bit integers


def _encodable(value: str) -> str:
    """JSON's \\ud800 escapes decode to lone surrogates, which no database or file system takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("lone_surrogate", "must be valid Unicode text (a lone surrogate)") from None
    return value


# A flag ComfyUI reads as `if body.get(name)`: any JSON value, counted by its truthiness.
Flag = Annotated[bool, BeforeValidator(bool)]
Id = Annotated[str, AfterValidator(_encodable)]
IdList = list[Id]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class Body(BaseModel):
    """A request body or query. `expected` is the message when the whole body has the wrong shape;
    `error_type` is the 400's error type, `field_error_types` overrides it per top-level field."""

    model_config = ConfigDict(extra="ignore")
    expected: ClassVar[str] = "the body must be a JSON object"
    error_type: ClassVar[str] = "invalid_request"
    field_error_types: ClassVar[dict[str, str]] = {}


def _problem(error) -> str:
    where = ".".join(str(p) for p in error["loc"])
    given = error.get("input")
    shown = ""
    if isinstance(given, (str, int, float)) and error["type"] != "missing":
        text = repr(given)
        shown = f" (got {text if len(text) <= 60 else text[:57] + '...'})"
    return f"{where}: {error['msg']}{shown}" if where else error["msg"]


def parse(model, data):
    """`data` checked against `model` (a Body, or a RootModel with the same class attributes); a
    BadRequest naming every field that is wrong otherwise."""
    if not isinstance(data, dict):
        raise BadRequest(model.expected, model.error_type)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else ""
        raise BadRequest("; ".join(_problem(e) for e in errors[:5]),
                         model.field_error_types.get(first, model.error_type)) from None


def parse_query(model: type[Body], query) -> Body:
    """Query parameters (first value of each; an empty value counts as absent)."""
    return parse(model, {k: v for k in query.keys() if (v := query.get(k)) not in (None, "")})


# --- requests ---

def _api_prompt(value):
    if not isinstance(value, dict):
        raise PydanticCustomError("api_prompt", "{message}", {"message": (
            "must be an API-format workflow object {node_id: {class_type, inputs}}, not a path or a UI graph")})
    return value


class PromptNode(BaseModel):
    """One node of an API-format workflow."""

    model_config = ConfigDict(extra="allow")
    class_type: str
    inputs: dict[str, Any] = {}


class PromptBody(Body):
    """POST /prompt. `prompt` is the API format only (never a path or a UI graph)."""

    expected: ClassVar[str] = "the body must be a JSON object with a 'prompt'"
    field_error_types: ClassVar[dict[str, str]] = {"prompt": "invalid_prompt"}
    prompt: Annotated[dict[str, PromptNode], BeforeValidator(_api_prompt)]
    client_id: Id | None = None
    prompt_id: Annotated[Annotated[Id, StringConstraints(max_length=MAX_PROMPT_ID)] | None,
                         BeforeValidator(lambda v: v or None)] = Field(None, description="default: a new uuid")
    front: Flag = Field(False, description="queue before every pending prompt")
    extra_data: dict[str, Any] | None = None
    partial_execution_targets: IdList | None = Field(None, min_length=1, description="run only these output nodes")


class ClearOrDelete(Body):
    """POST /queue (pending prompts) and POST /history (finished ones)."""

    expected: ClassVar[str] = "expected {clear: true} or {delete: [ids]}"
    clear: Flag = False
    delete: IdList | None = None


class InterruptBody(Body):
    expected: ClassVar[str] = "expected {prompt_id?}"
    prompt_id: Id | None = Field(None, description="interrupt only if this prompt is the running one")


class FreeBody(Body):
    expected: ClassVar[str] = "expected {unload_models?, free_memory?}"
    unload_models: Flag = False
    free_memory: Flag = False


class CancelJobsBody(Body):
    expected: ClassVar[str] = "expected {job_ids: [ids]}"
    job_ids: IdList


class LogsSubscribeBody(Body):
    expected: ClassVar[str] = "expected {clientId, enabled}"
    clientId: Id  # noqa: N815 - the editor's spelling
    enabled: Flag = False


class SettingsBody(RootModel[dict[str, Any]]):
    """POST /settings: {setting id: value}."""

    expected: ClassVar[str] = "settings must be a JSON object {id: value}"
    error_type: ClassVar[str] = "invalid_settings"
    field_error_types: ClassVar[dict[str, str]] = {}


class SettingValue(RootModel[Any]):
    """POST /settings/{id}: the setting's new value, any JSON."""


def _add_image_part(schema: dict) -> None:
    schema["properties"]["image"] = {"type": "string", "contentMediaType": "application/octet-stream",
                                     "description": "the image file (PNG, JPEG, WEBP, GIF, BMP or TIFF)"}
    schema.setdefault("required", []).append("image")


class UploadForm(Body):
    """The multipart fields of POST /upload/image and /upload/mask (besides the `image` file)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_add_image_part)
    error_type: ClassVar[str] = "invalid_upload"
    type: Annotated[str, BeforeValidator(lambda v: v or "input")] = "input"
    subfolder: Id = ""
    overwrite: Annotated[bool, BeforeValidator(lambda v: str(v).lower() in ("true", "1"))] = False
    original_ref: str | None = Field(None, description="mask uploads: JSON {filename, subfolder, type}")


class HistoryQuery(Body):
    error_type: ClassVar[str] = "invalid_query"
    max_items: Count | None = Field(None, description="without offset: the newest max_items")
    offset: int = Field(-1, ge=-1, le=MAX_COUNT)


def _comma_list(value):
    return ([s for s in value.split(",") if s] or None) if isinstance(value, str) else value


class JobsQuery(Body):
    error_type: ClassVar[str] = "invalid_query"
    status: Annotated[list[Literal[STATUSES]] | None, BeforeValidator(_comma_list), WithJsonSchema(
        {"type": "string", "description": f"comma-separated, of {', '.join(STATUSES)}"})] = None
    sort_by: Literal[JOB_SORTS] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    limit: int | None = Field(None, ge=1, le=MAX_COUNT)
    offset: Count = 0


PREVIEW_FORMATS = ("webp", "jpeg", "png")


def _preview(value):
    """'format;quality' -> (format, quality); quality 1..100, 90 when left out."""
    if value is None or isinstance(value, tuple):
        return value
    fmt, _, quality = str(value).partition(";")
    fmt = fmt.strip().lower()
    if fmt not in PREVIEW_FORMATS:
        raise PydanticCustomError("preview_format", "the format must be one of {formats}",
                                  {"formats": ", ".join(PREVIEW_FORMATS)})
    quality = quality.strip()
    if quality and not (quality.isdigit() and len(quality) <= 3 and 1 <= int(quality) <= 100):
        raise PydanticCustomError("preview_quality", "the quality must be an integer from 1 to 100")
    return fmt, int(quality) if quality else 90


class ViewQuery(Body):
    error_type: ClassVar[str] = "invalid_query"
    filename: Id = ""
    subfolder: Id = ""
    type: str | None = Field(None, description="input, output (default) or temp")
    preview: Annotated[tuple[str, int] | None, BeforeValidator(_preview), WithJsonSchema(
        {"type": "string", "description": "format;quality, e.g. webp;90"})] = None
    channel: Literal["rgb", "a", "rgba"] | None = Field(None, description="rgb, a or rgba (default)")


# --- responses ---

class ErrorDetail(BaseModel):
    type: str
    message: str
    details: str = ""
    extra_info: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    """Every refused request, unless its route says otherwise."""

    error: ErrorDetail


class PromptRejected(BaseModel):
    """A refused POST /prompt, in ComfyUI's validation shapes."""

    error: dict[str, Any]
    node_errors: dict[str, Any]


class PromptAccepted(BaseModel):
    prompt_id: str
    number: int
    node_errors: dict[str, Any]


class ExecInfo(BaseModel):
    queue_remaining: int


class PromptStatus(BaseModel):
    exec_info: ExecInfo


QueueItem = Annotated[list[Any], Field(description="[number, prompt_id, prompt, extra_data, outputs_to_execute]")]


class QueueResponse(BaseModel):
    queue_running: list[QueueItem]
    queue_pending: list[QueueItem]


class HistoryStatus(BaseModel):
    status_str: Literal["success", "error"]
    completed: bool
    messages: list[Any]


class HistoryEntry(BaseModel):
    prompt: QueueItem
    outputs: dict[str, Any]
    status: HistoryStatus
    meta: dict[str, Any]


class HistoryResponse(RootModel[dict[str, HistoryEntry]]):
    """Finished prompts by id, in finishing order."""


class ExecutionErrorInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    node_id: str
    node_type: str
    exception_message: str
    exception_type: str
    traceback: list[str]


class JobSummary(BaseModel):
    id: str
    status: Literal[STATUSES]
    priority: int
    create_time: int
    execution_start_time: int | None
    execution_end_time: int | None
    preview_output: dict[str, Any] | None
    outputs_count: int
    previewable_outputs_count: int
    execution_error: ExecutionErrorInfo | None
    workflow_id: str | None


class Pagination(BaseModel):
    offset: int
    limit: int
    total: int
    has_more: bool


class JobsPage(BaseModel):
    jobs: list[JobSummary]
    pagination: Pagination


class JobDetail(JobSummary):
    workflow: dict[str, Any]
    outputs: dict[str, Any]
    update_time: int
    execution_meta: dict[str, Any]
    execution_status: HistoryStatus | None = None


class JobCancelled(BaseModel):
    id: str
    cancelled: bool


class JobsCancelled(BaseModel):
    cancelled: IdList


class UploadResult(BaseModel):
    name: str
    subfolder: str
    type: str


class Device(BaseModel):
    name: str
    type: str
    index: int | None
    vram_total: int
    vram_free: int
    torch_vram_total: int
    torch_vram_free: int


class SystemStats(BaseModel):
    system: dict[str, Any]
    devices: list[Device]
