"""Request and response bodies of the Label Studio ML backend protocol (Label Studio 1.2x), validated by pydantic.

Requests allow extra keys: Label Studio adds fields between versions and we must not reject them.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_Open):
    project: str | int = Field(description='"<id>.<created unix ts>" as Label Studio sends it, or a bare id')
    label_config: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = Field(default=None, repr=False)
    extra_params: dict[str, Any] | None = None


class SetupResponse(BaseModel):
    model_version: str


class PredictParams(_Open):
    login: str | None = None
    password: str | None = Field(default=None, repr=False)
    context: dict[str, Any] | list[Any] | None = None


class PredictRequest(_Open):
    tasks: list[dict[str, Any]] = Field(min_length=1)
    project: str | int | None = None
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


class WebhookEvent(_Open):
    action: str = Field(min_length=1)


class WebhookResponse(BaseModel):
    status: str
    action: str
    project: str | None = None
    detail: str | None = None


def project_id(value: Any) -> str | None:
    """Return the Label Studio project id from "<id>.<ts>", an int, or a project dict; None if absent."""
    if isinstance(value, dict):
        value = value.get("id")
    if value is None or value == "":
        return None
    text = str(value).split(".", 1)[0].strip()
    return text or None
