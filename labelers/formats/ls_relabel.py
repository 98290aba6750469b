"""Label Studio for the relabeler: single-Choices exports in, multi-choice suggestions out.

In: a JSON export whose tasks carry one chosen class each in a single Choices control (via
`labelers.formats.label_studio`). Out: one prediction per task with one `choices` result listing the
suggested label set (for a `<Choices choice="multiple">` control), so annotators accept or trim the extra
labels in Label Studio. The per-label scores ride in the result's `meta.scores` ({label: score}) and its
`score` is the lowest of them (the least certain suggestion decides how the task sorts).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .label_studio import LabelStudioExportError, read_label_studio_export
from .relabel_json import atomic_write_json


def read_single_choice_export(path: str | Path, control: str | None = None, image_key: str | None = None
                              ) -> tuple[list[str], list[str], str]:
    """Return (images, chosen class names, control name) of the labeled tasks in a Label Studio export.

    Tasks without a usable annotation are skipped. Raises LabelStudioExportError when no task has a
    Choices label, when there are several controls and `control` is not given, or when a task has more than
    one choice in the control (naming the task)."""
    tasks = read_label_studio_export(path, image_key)
    controls = sorted({name for task in tasks for name, chosen in task.labels.items() if chosen})
    if not controls:
        raise LabelStudioExportError(f"{path}: no task has a single-choice (Choices) label{_what_is_there(path)}")
    if control is None:
        if len(controls) > 1:
            raise LabelStudioExportError(f"{path}: several label controls ({', '.join(controls)}); name one")
        control = controls[0]
    elif control not in controls:
        raise LabelStudioExportError(f"{path}: no labels in control {control!r} (has: {', '.join(controls)})")
    images, labels = [], []
    for number, task in enumerate(tasks, start=1):
        chosen = task.labels.get(control) or []
        if not chosen:
            continue
        if len(chosen) > 1:
            raise LabelStudioExportError(f"{path}: task {number} (id {task.id}) has {len(chosen)} choices in "
                                         f"{control!r} ({', '.join(chosen)}); the relabeler needs one label per task")
        images.append(task.image)
        labels.append(chosen[0])
    return images, labels, control


def multichoice_result(labels: Sequence[str], scores: dict[str, float], from_name: str = "label",
                       to_name: str = "image") -> dict:
    """Return one Label Studio `choices` result choosing `labels`, each label's score in `meta.scores` and the
    lowest of them as the result's `score` (0.0 for no label); raises KeyError for a label without a score."""
    per_label = {c: round(float(scores[c]), 6) for c in labels}
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": list(labels)},
            "meta": {"scores": per_label}, "score": min(per_label.values()) if per_label else 0.0}


def _what_is_there(path: str | Path) -> str:
    """Return ", task N (id I) holds <type> results from <control>" for the first annotated task, or ""."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    for number, task in enumerate(raw if isinstance(raw, list) else [], start=1):
        results = [r for a in (task.get("annotations") or []) if isinstance(a, dict) and not a.get("was_cancelled")
                   for r in (a.get("result") or []) if isinstance(r, dict)]
        if results:
            kinds = sorted({f"{r.get('type')} from {r.get('from_name')!r}" for r in results})
            return (f"; task {number} (id {task.get('id')}) holds {', '.join(kinds)} results (the relabeler needs a "
                    f"<Choices> control with one choice per task)")
    return "; no task has an annotation"


def write_multichoice_predictions(path: str | Path, images: Sequence[str], label_sets: Sequence[Sequence[str]],
                                  scores: Sequence[dict[str, float]], from_name: str = "label",
                                  to_name: str = "image", image_key: str = "image",
                                  model_version: str = "labelloop-relabel") -> Path:
    """Write Label Studio tasks with one multi-choice prediction each (atomically); returns path.

    `scores[i]` maps each label of `label_sets[i]` to its confidence; raises ValueError naming the task
    when a label has no score or the lengths differ."""
    if not len(images) == len(label_sets) == len(scores):
        raise ValueError(f"{len(images)} images, {len(label_sets)} label sets and {len(scores)} score maps")
    tasks = []
    for number, (image, chosen, score) in enumerate(zip(images, label_sets, scores)):
        missing = [c for c in chosen if c not in score]
        if missing:
            raise ValueError(f"task {number} ({image}): no score for {', '.join(missing)}")
        result = multichoice_result(chosen, score, from_name, to_name)
        tasks.append({"data": {image_key: image},
                      "predictions": [{"model_version": model_version, "score": result["score"],
                                       "result": [result]}]})
    return atomic_write_json(path, tasks)


def read_multichoice_predictions(path: str | Path) -> list[tuple[str, list[str], dict[str, float]]]:
    """Return [(image, labels, {label: score})] from a file written by `write_multichoice_predictions`."""
    tasks = read_label_studio_export(path)
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for task, item in zip(tasks, raw):
        result = item["predictions"][0]["result"][0]
        out.append((task.image, list(result["value"]["choices"]), dict(result["meta"]["scores"])))
    return out
