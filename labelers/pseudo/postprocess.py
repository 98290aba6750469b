"""CoT-PL's post-processing scripts as options on records: exclusion lists, a frequency cut,
cross-category NMS (one object, one label), and the detector's class-weight vector.

Each function takes records (labelers.pseudo.run) and returns new ones; inputs are not modified.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np


def _matches(name: str, keywords: Iterable[str], substring: bool) -> bool:
    if substring:  # CoT-PL's rule: "man" also hits "woman"
        return any(keyword in name for keyword in keywords)
    return any(re.search(rf"\b{re.escape(keyword)}\b", name) for keyword in keywords)


def exclude_categories(records: Sequence[dict], names: Iterable[str] = (), keywords: Iterable[str] = (),
                       substring: bool = False) -> list[dict]:
    """Return records where foreground boxes whose category is in ``names`` (exact) or contains one of
    ``keywords`` (whole words, or any substring with ``substring`` as CoT-PL did) become background."""
    names, keywords = set(names), list(keywords)
    out = copy.deepcopy(list(records))
    for record in out:
        for box in record.get("boxes", []):
            if box["foreground"] and (box["category"] in names or _matches(box["category"], keywords, substring)):
                box["foreground"] = False
    return out


def category_counts(records: Sequence[dict]) -> Counter:
    """Return the number of foreground boxes per category."""
    return Counter(box["category"] for record in records for box in record.get("boxes", []) if box["foreground"])


def frequency_cut(records: Sequence[dict], min_count: int) -> tuple[list[dict], list[str]]:
    """Return (records with only the foreground boxes of categories having >= ``min_count`` of them,
    those categories by falling count). CoT-PL used 1294 on COCO train2017; it is a count, not a confidence."""
    counts = category_counts(records)
    keep = [name for name, count in counts.most_common() if count >= min_count]
    out = copy.deepcopy(list(records))
    for record in out:
        record["boxes"] = [b for b in record.get("boxes", []) if not b["foreground"] or b["category"] in keep]
    return out, keep


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Return the IoU of two XYWH boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax1, bx1) - max(a[0], b[0])), max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def cross_category_nms(records: Sequence[dict], iou_threshold: float = 0.7) -> list[dict]:
    """Return records where, among boxes overlapping with IoU > ``iou_threshold`` whatever their
    categories, only the highest-scored one is kept (one object gets one label)."""
    out = copy.deepcopy(list(records))
    for record in out:
        ranked = sorted(record.get("boxes", []), key=lambda b: -b["score"])
        kept: list[dict] = []
        for box in ranked:
            if all(box_iou(box["bbox"], other["bbox"]) <= iou_threshold for other in kept):
                kept.append(box)
        record["boxes"] = kept
    return out


def class_weights(merged_categories: Sequence[dict], base_classes: Iterable[str], pseudo_classes: Iterable[str],
                  background: float = 0.7) -> list[float]:
    """Return the detector's class-weight vector: per merged category (id order) 1.0 when it is a base
    class or has pseudo-labels, else 0.0, then ``background`` last (CoT-PL's 0.7)."""
    trained = set(base_classes) | set(pseudo_classes)
    ordered = sorted(merged_categories, key=lambda c: c["id"])
    return [1.0 if c["name"] in trained else 0.0 for c in ordered] + [float(background)]


def write_class_weights(path, weights: Sequence[float], names: Sequence[str]) -> None:
    """Write ``weights`` as JSON ``{"names": [...], "weights": [...]}`` (names end with "background")."""
    import json
    from pathlib import Path

    Path(path).write_text(json.dumps({"names": list(names) + ["background"],
                                      "weights": [float(w) for w in np.asarray(weights)]}), encoding="utf-8")
