"""How annotators treat our suggestions: kept, removed and added labels (multi-choice) or boxes (rectangles).

When the backend serves a relabel suggestion or box pre-annotations for a task, it remembers what it suggested
(per project and task, in the store's key-value state, so every worker process sees it). When an annotation of
that task arrives, the annotation is compared with the suggestion once per annotation id (an update replaces
that annotation's count), and /metrics sums the counts per project:

- multi-choice: kept = suggested labels still chosen, removed = suggested labels unticked, added = labels
  chosen that were not suggested;
- boxes: a suggested box is kept when the annotation has a box of the same label overlapping it with
  IoU >= BOX_MATCH_IOU (each annotated box matches at most one suggested box); unmatched suggested boxes are
  removed, unmatched annotated boxes added.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

SUGGESTION_PREFIX = "suggestion.task."     # + task id -> the suggestion served for that task
REVIEW_PREFIX = "suggestion.review."       # + annotation id -> that annotation's counts
BOX_MATCH_IOU = 0.5                        # the usual detection match (PASCAL VOC's AP50)


def choices_suggestion(from_name: str, labels: Sequence[str], model_version: str) -> dict[str, Any]:
    """Return the record of a multi-choice suggestion (what `review` compares annotations with)."""
    return {"kind": "choices", "from_name": from_name, "labels": list(labels), "model_version": model_version}


def boxes_suggestion(from_name: str, boxes: Sequence[dict[str, Any]], model_version: str) -> dict[str, Any]:
    """Return the record of box pre-annotations; `boxes` are rectanglelabels result regions (percent)."""
    kept = [{"label": b["value"]["rectanglelabels"][0], "x": b["value"]["x"], "y": b["value"]["y"],
             "width": b["value"]["width"], "height": b["value"]["height"]} for b in boxes]
    return {"kind": "boxes", "from_name": from_name, "boxes": kept, "model_version": model_version}


def box_iou(a: dict[str, float], b: dict[str, float]) -> float:
    """Return the IoU of two boxes given as {"x", "y", "width", "height"} (any one unit, e.g. percent)."""
    iw = max(0.0, min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"]))
    ih = max(0.0, min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]))
    inter = iw * ih
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def compare(suggestion: dict[str, Any], result: list[dict[str, Any]] | None) -> dict[str, int]:
    """Return {"kept", "removed", "added"} for an annotation `result` against `suggestion`."""
    regions = [r for r in result or [] if isinstance(r, dict) and r.get("from_name") == suggestion["from_name"]]
    if suggestion["kind"] == "choices":
        chosen = {c for r in regions for c in (r.get("value") or {}).get("choices") or []}
        suggested = set(suggestion["labels"])
        return {"kept": len(suggested & chosen), "removed": len(suggested - chosen), "added": len(chosen - suggested)}
    annotated = []
    for r in regions:
        value = r.get("value") or {}
        labels = value.get("rectanglelabels") or []
        if labels and all(isinstance(value.get(k), (int, float)) for k in ("x", "y", "width", "height")):
            annotated.append({"label": labels[0], **{k: float(value[k]) for k in ("x", "y", "width", "height")}})
    free = list(range(len(annotated)))
    kept = 0
    for box in suggestion["boxes"]:  # greedy: each suggested box takes its best free same-label match
        candidates = [(box_iou(box, annotated[j]), j) for j in free if annotated[j]["label"] == box["label"]]
        best = max(candidates, default=(0.0, None))
        if best[1] is not None and best[0] >= BOX_MATCH_IOU:
            kept += 1
            free.remove(best[1])
    return {"kept": kept, "removed": len(suggestion["boxes"]) - kept, "added": len(free)}


class SuggestionLedger:
    """Remembers served suggestions and counts what annotations kept of them (state in the store)."""

    def __init__(self, store):
        self.store = store

    def remember(self, project: str, suggestions: dict[int, dict[str, Any]]) -> None:
        """Record `suggestions` ({task id: record}) as the latest served for those tasks."""
        for task_id, record in suggestions.items():
            self.store.kv_set(project, f"{SUGGESTION_PREFIX}{int(task_id)}", json.dumps(record))

    def suggestion(self, project: str, task_id: int) -> dict[str, Any] | None:
        raw = self.store.kv_get(project, f"{SUGGESTION_PREFIX}{int(task_id)}")
        return json.loads(raw) if raw else None

    def review(self, project: str, annotations: Iterable) -> int:
        """Count each annotation (a store.Annotation) of a task that had a suggestion; returns how many were
        counted. An annotation counted before is counted again in place (its old counts are replaced)."""
        counted = 0
        for annotation in annotations:
            suggestion = self.suggestion(project, annotation.task_id)
            if suggestion is None:
                continue
            counts = compare(suggestion, annotation.result)
            counts.update(kind=suggestion["kind"], task=int(annotation.task_id),
                          model_version=suggestion.get("model_version"))
            self.store.kv_set(project, f"{REVIEW_PREFIX}{int(annotation.id)}", json.dumps(counts))
            counted += 1
        return counted

    def summary(self, project: str) -> dict[str, Any] | None:
        """Return {"annotations", "kept", "removed", "added", "kept_share"} summed over the project's reviewed
        annotations (kept_share = kept / suggested, None when nothing was suggested), or None before the first."""
        reviews = [json.loads(v) for v in self.store.kv_items(project, REVIEW_PREFIX).values()]
        if not reviews:
            return None
        totals = {key: sum(r[key] for r in reviews) for key in ("kept", "removed", "added")}
        suggested = totals["kept"] + totals["removed"]
        return {"kind": reviews[-1]["kind"], "annotations": len(reviews), **totals,
                "kept_share": round(totals["kept"] / suggested, 4) if suggested else None}
