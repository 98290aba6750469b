"""Label Studio JSON export (``Export -> JSON``): tasks with their image reference and chosen labels.

Each task becomes an ``LSTask`` holding the task id, the image reference (``data[<image key>]``) and,
per control name (``from_name``), the labels chosen in its non-cancelled annotations, in order and
without repeats. Cancelled (skipped) annotations are ignored. Choices and Taxonomy results are read;
a Taxonomy path is joined with ``TAXONOMY_SEPARATOR``. Local-storage / uploaded-file references
are mapped back to files by ``resolve_image_path``.

This module is the one reader of Label Studio annotation results: the backend (``backend.labels``,
``backend.events``) uses ``usable_annotation`` and ``labels_by_control`` too, so an export and a webhook
give the same labels for the same annotation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

TAXONOMY_SEPARATOR = " / "  # joins a taxonomy path ["Animal", "Cat"] into one class name "Animal / Cat"
# The folder /data/local-files/?d=<path> is relative to: upstream ML backends' name, then Label Studio's own.
LOCAL_FILES_ROOT_ENV = ("LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")


def local_files_root_from_env(env=None) -> str | None:
    """Return the local-files document root named by the first of ``LOCAL_FILES_ROOT_ENV`` that is set
    (in ``env``, default ``os.environ``), or None."""
    env = os.environ if env is None else env
    return next((env[name] for name in LOCAL_FILES_ROOT_ENV if env.get(name)), None)


class LabelStudioExportError(ValueError):
    """The file is not a Label Studio JSON export, or a task lacks its image reference."""


@dataclass
class LSTask:
    """One exported task: ``labels`` maps control name -> chosen labels (non-cancelled annotations)."""

    id: int | str | None
    image: str
    labels: dict[str, list[str]] = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def usable_annotation(annotation: dict) -> bool:
    """Return True for an annotation worth learning from: not skipped (``was_cancelled``), non-empty result."""
    return not annotation.get("was_cancelled") and bool(annotation.get("result"))


def region_labels(region: dict) -> list[str]:
    """Return the labels one result region chooses: its ``choices``, or its ``taxonomy`` paths joined with
    ``TAXONOMY_SEPARATOR``. Other region types and malformed values give []."""
    value = region.get("value") if isinstance(region, dict) else None
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("choices"), list):
        return [str(c) for c in value["choices"] if c is not None]
    if isinstance(value.get("taxonomy"), list):
        return [TAXONOMY_SEPARATOR.join(map(str, path)) for path in value["taxonomy"]
                if isinstance(path, list) and path]
    return []


def labels_by_control(result: list | None) -> dict[str, list[str]]:
    """Return control name (``from_name``) -> labels chosen in an annotation ``result``, in order, no repeats.

    Regions without a ``from_name`` or that are not objects are skipped."""
    labels: dict[str, list[str]] = {}
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, dict) or not isinstance(region.get("from_name"), str):
            continue
        chosen = labels.setdefault(region["from_name"], [])
        chosen.extend(c for c in region_labels(region) if c not in chosen)
    return labels


def _image_of(task: dict, number: int, path: Path, image_key: str | None) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise LabelStudioExportError(f"{path}: task {number} has no 'data' object")
    if image_key:
        if image_key not in data:
            raise LabelStudioExportError(f"{path}: task {number} (id {task.get('id')}) has no data key "
                                         f"{image_key!r}; keys: {', '.join(data)}")
        return str(data[image_key])
    for key in ("image", "img", "url", "image_url"):
        if isinstance(data.get(key), str):
            return data[key]
    strings = [v for v in data.values() if isinstance(v, str)]
    if len(strings) == 1:
        return strings[0]
    raise LabelStudioExportError(f"{path}: task {number} (id {task.get('id')}): cannot tell which data key holds "
                                 f"the image ({', '.join(data) or 'no keys'}); pass the image key explicitly")


def read_label_studio_export(path: str | Path, image_key: str | None = None) -> list[LSTask]:
    """Return the tasks of the JSON export at ``path`` in file order.

    ``image_key`` names the data field holding the image (default: ``image``, or the only string
    field). Raises FileNotFoundError, or LabelStudioExportError naming the file and task when the
    JSON is not a list of tasks or a task has no image reference.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LabelStudioExportError(f"{path}: not valid JSON ({err})") from None
    if isinstance(payload, dict) and "tasks" in payload:
        payload = payload["tasks"]
    if not isinstance(payload, list):
        raise LabelStudioExportError(f"{path}: a Label Studio JSON export is a list of tasks")
    tasks = []
    for number, task in enumerate(payload, start=1):
        if not isinstance(task, dict):
            raise LabelStudioExportError(f"{path}: task {number} is not an object")
        labels: dict[str, list[str]] = {}
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or not usable_annotation(annotation):
                continue
            for name, chosen in labels_by_control(annotation["result"]).items():
                known = labels.setdefault(name, [])
                known.extend(c for c in chosen if c not in known)
        tasks.append(LSTask(task.get("id"), _image_of(task, number, path, image_key), labels,
                            task.get("data") or {}))
    return tasks


def write_label_studio_tasks(path: str | Path, tasks: list[LSTask], image_key: str = "image",
                             to_name: str = "image") -> Path:
    """Write ``tasks`` as a Label Studio import file (tasks with one annotation of Choices results).

    Tasks without labels are written without annotations. Returns the path. Importing this file into a
    project whose config has Choices controls named like ``tasks[i].labels`` keys restores the labels.
    """
    out = []
    for task in tasks:
        item: dict = {"data": {**task.data, image_key: task.image}}
        results = [{"from_name": name, "to_name": to_name, "type": "choices", "value": {"choices": list(chosen)}}
                   for name, chosen in task.labels.items() if chosen]
        if results:
            item["annotations"] = [{"result": results, "was_cancelled": False}]
        out.append(item)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return path


def resolve_image_path(reference: str, roots: list[str | Path]) -> Path | None:
    """Return the local file a task's image reference points to under one of ``roots``, or None.

    Understands Label Studio local-files URLs (``/data/local-files/?d=sub/dir/a.jpg``), uploads
    (``/data/upload/3/1a2b3c-a.jpg``: the part after the first "-" is the original name), plain
    relative or absolute paths, and falls back to matching the file name.
    """
    parsed = urlparse(reference)
    candidates: list[str] = []
    if "d" in parse_qs(parsed.query):
        candidates.append(unquote(parse_qs(parsed.query)["d"][0]))
    path_part = unquote(parsed.path if parsed.scheme or parsed.query else reference)
    candidates.append(path_part)
    name = Path(path_part).name
    candidates.append(name)
    if parsed.path.startswith("/data/upload/") and "-" in name:
        candidates.append(name.split("-", 1)[1])
    for candidate in candidates:
        as_path = Path(candidate)
        if as_path.is_absolute() and as_path.is_file():
            return as_path
        for root in roots:
            full = Path(root) / candidate.lstrip("/")
            if full.is_file():
                return full
            # local-files paths are relative to LOCAL_FILES_DOCUMENT_ROOT, which may sit above root
            if len(as_path.parts) > 1:
                for start in range(1, len(as_path.parts)):
                    tail = Path(root) / Path(*as_path.parts[start:])
                    if tail.is_file():
                        return tail
    return None
