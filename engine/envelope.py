"""The genloom workflow envelope, declared once with pydantic: the loader validates against it (clear
messages naming the field) and tools can publish its JSON schema (`Envelope.model_json_schema()`).
Imported only when an envelope is read, so reading API or UI workflows never loads pydantic."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import WorkflowFormatError
from .migrations import CURRENT_VERSION


class Envelope(BaseModel):
    """What `save_workflow` writes and `load_workflow` reads (after migrations)."""

    model_config = ConfigDict(extra="allow")  # fields a newer tool added survive a round trip

    schema_version: int = Field(CURRENT_VERSION, description="format version; older ones are migrated")
    graph: dict[str, Any] = Field(description="the API-format graph: id -> {class_type, inputs}")
    layout: dict[str, Any] | None = Field(None, description="the editor's UI workflow, when known")
    metadata: dict[str, Any] = Field(default_factory=dict, description="name, description, author, ...")


def parse_envelope(data: dict) -> Envelope:
    """A migrated envelope dict -> Envelope; WorkflowFormatError naming the field that is wrong."""
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error["loc"])
            problems.append(f"'{where}': {error['msg']}")
        raise WorkflowFormatError("genloom envelope: " + "; ".join(problems)) from None
