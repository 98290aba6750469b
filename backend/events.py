"""Reading Label Studio's webhook payloads: which annotations an event adds, removes, and which task URLs it shows.

Singular events (ANNOTATION_CREATED/UPDATED) carry one `annotation` and one `task` dict; the bulk
ANNOTATIONS_CREATED carries lists; ANNOTATIONS_DELETED carries only `annotations: [{"id": ...}]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.schemas import PayloadError, whole_id
from backend.store import Annotation
from labelers.formats.label_studio import usable_annotation as usable  # one rule with the export reader

# Events that change the training data. START_TRAINING always trains; the others only with retrain=on_submit.
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED")
TRAIN_EVENTS = ANNOTATION_EVENTS + ("START_TRAINING",)


class EventError(PayloadError):
    """A webhook payload is missing what its action needs, or holds a malformed id; the message names the key."""


def _id(value: Any, what: str) -> int:
    try:
        return whole_id(value, what)
    except PayloadError as exc:
        raise EventError(str(exc)) from None


@dataclass
class AnnotationChanges:
    """What one annotation event means for the stored training data."""

    keep: list[Annotation] = field(default_factory=list)      # store or replace
    drop: list[int] = field(default_factory=list)             # annotation ids to forget
    task_urls: list[tuple[int, str | None]] = field(default_factory=list)  # (task id, media URL) seen


def as_list(data: dict[str, Any], key: str) -> list[Any]:
    """Return data[key] as a list (singular events carry one dict, plural events a list); raises EventError."""
    value = data.get(key)
    if value is None:
        raise EventError(f"the payload has no {key!r}")
    return value if isinstance(value, list) else [value]


def deleted_ids(data: dict[str, Any]) -> list[int]:
    """Return the annotation ids of an ANNOTATIONS_DELETED payload; raises EventError if one has no id."""
    ids = [a.get("id") if isinstance(a, dict) else None for a in as_list(data, "annotations")]
    if any(i is None for i in ids):
        raise EventError("ANNOTATIONS_DELETED: every item of 'annotations' needs an 'id'")
    return [_id(i, "ANNOTATIONS_DELETED: annotation id") for i in ids]


def annotation_changes(event: str, data: dict[str, Any], data_key: str) -> AnnotationChanges:
    """Return the annotations an ANNOTATION(S)_CREATED/UPDATED payload adds or (when skipped/emptied) drops,
    and the image URL (`task.data[data_key]`) of every task it includes. Raises EventError when malformed."""
    annotations = as_list(data, "annotation")
    task_items = data.get("task") or []  # optional: each annotation also names its task id
    tasks = {_id(t.get("id"), f"{event}: task id"): t
             for t in (task_items if isinstance(task_items, list) else [task_items]) if isinstance(t, dict)}
    changes = AnnotationChanges()  # filled completely before anything is stored: one bad item stores nothing
    for ann in annotations:
        if not isinstance(ann, dict) or ann.get("id") is None:
            raise EventError(f"{event}: 'annotation' needs objects with an 'id'")
        ann_id = _id(ann["id"], f"{event}: annotation id")
        task_id = ann.get("task")
        task_id = task_id.get("id") if isinstance(task_id, dict) else task_id
        if task_id is None and len(tasks) == 1:
            task_id = next(iter(tasks))
        if task_id is None:
            raise EventError(f"{event}: annotation {ann_id} names no task")
        task_id = _id(task_id, f"{event}: task id of annotation {ann_id}")
        if ann.get("result") is not None and not isinstance(ann["result"], list):
            raise EventError(f"{event}: annotation {ann_id}: 'result' must be a list of regions")
        task = tasks.get(task_id)
        if task is not None and isinstance(task.get("data"), dict):
            url = task["data"].get(data_key)
            changes.task_urls.append((task_id, url if isinstance(url, str) else None))
        if usable(ann):
            changes.keep.append(Annotation(ann_id, task_id, ann["result"]))
        else:
            changes.drop.append(ann_id)  # a skipped or emptied annotation no longer teaches anything
    return changes
