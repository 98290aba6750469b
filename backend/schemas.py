"""Request and response bodies of the Label Studio ML backend protocol (Label Studio 1.2x), validated by pydantic.

Requests allow extra keys: Label Studio adds fields between versions and we must not reject them.
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_ID = 2 ** 63 - 1  # Label Studio ids are SQL integers; larger numbers cannot be stored


class PayloadError(ValueError):
    """A request body holds an unusable value (answered 422); the message names the key."""


def whole_id(value: Any, what: str = "id") -> int:
    """Return a Label Studio id (a whole number, or a string of digits) as an int.

    Raises PayloadError naming `what` for anything else: booleans, fractions, negative or oversized numbers,
    other strings, objects."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,19}", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        shown = repr(value) if len(repr(value)) <= 40 else f"a {type(value).__name__}"
        raise PayloadError(f"{what} must be a whole number, got {shown}")
    return value


def _id_field(value: Any) -> int:
    # A one-argument wrapper: given whole_id itself, pydantic would pass its ValidationInfo as `what`.
    return whole_id(value)


LabelStudioId = Annotated[int, BeforeValidator(_id_field)]


def _as_list(value: Any) -> Any:
    """Singular webhook events carry one object where bulk ones carry a list: validate both as a list."""
    return [value] if isinstance(value, dict) else value


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_Open):
    project: str | LabelStudioId = Field(description='"<id>.<created unix ts>" as Label Studio sends it, or an id')
    label_config: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx/5xx): what went wrong, and the status code again."""

    detail: str
    status: int


class SetupResponse(BaseModel):
    model_version: str


class PredictParams(_Open):
    login: str | None = None
    password: str | None = Field(default=None, repr=False)
    context: dict[str, Any] | list[Any] | None = None


class PredictRequest(_Open):
    tasks: list[dict[str, Any]] = Field(min_length=1)
    project: str | LabelStudioId | None = None
    label_config: str | None = None
    params: PredictParams | None = None


class PredictionValue(BaseModel):
    """One prediction for one task (upstream's PredictionValue)."""

    result: list[dict[str, Any]]
    score: float | None = None
    model_version: str | None = None


class ModelResponse(BaseModel):
    """What `LabelloopModel.predict` returns: one item per task, in task order. An item is a prediction, or
    an empty list for a task not predicted in time (Label Studio stores nothing for it and asks again)."""

    model_version: str | None = None
    predictions: list[PredictionValue | list[PredictionValue]]


class PredictResponse(BaseModel):
    results: list[PredictionValue | list[PredictionValue]]


class TaskRef(_Open):
    id: LabelStudioId


def _task_id(value: Any) -> Any:
    """An annotation names its task by id, or (in some payloads) by the task object."""
    return value.get("id") if isinstance(value, dict) else value


class AnnotationRef(_Open):
    id: LabelStudioId
    task: Annotated[LabelStudioId | None, BeforeValidator(_task_id)] = None
    result: list[dict[str, Any]] | None = None


class ProjectRef(_Open):
    id: LabelStudioId | None = None
    label_config: str | None = None


class WebhookEvent(_Open):
    """A Label Studio webhook payload: the action, and the shapes of the keys labelloop reads (ids are whole
    numbers, results lists). Other keys pass through untouched."""

    action: str = Field(min_length=1)
    project: ProjectRef | None = None
    annotation: Annotated[list[AnnotationRef] | None, BeforeValidator(_as_list)] = None
    annotations: Annotated[list[TaskRef] | None, BeforeValidator(_as_list)] = None  # deletions: ids only
    task: Annotated[list[TaskRef] | None, BeforeValidator(_as_list)] = None
    tasks: Annotated[list[TaskRef] | None, BeforeValidator(_as_list)] = None

    @field_validator("project", mode="before")
    @classmethod
    def _bare_project_id(cls, value: Any) -> Any:
        """A bare "<id>.<ts>" or id becomes {"id": <id>} (raises PayloadError for "abc")."""
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return {"id": project_id(value)}
        return value


class WebhookResponse(BaseModel):
    status: str
    action: str
    project: str | None = None
    detail: str | None = None


def project_id(value: Any) -> str | None:
    """Return the Label Studio project id from "<id>.<ts>", an int, or a project dict; None if absent.

    Raises PayloadError when an id is there but is not a whole number (e.g. "abc", {"id": {...}})."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = value.split(".", 1)[0]  # "<id>.<created unix ts>", as /setup sends it
    return str(whole_id(value, "project id"))
