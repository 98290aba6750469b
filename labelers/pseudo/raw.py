"""CoT-PL's raw per-shard JSON: ``{image_id: {foreground: {bbox, category}, background: {...}}}``, XYWH px.

Our per-image records (labelers.pseudo.run) carry more (scores, probabilities); this format keeps only
what CoT-PL's post-processing scripts read, so those scripts run on it unchanged.
"""
from __future__ import annotations

from typing import Iterable


def records_to_raw(records: Iterable[dict]) -> dict:
    """Return the CoT-PL raw mapping for ``records`` (images with an error are left out)."""
    raw = {}
    for record in records:
        if record.get("error"):
            continue
        entry = {"foreground": {"bbox": [], "category": []}, "background": {"bbox": [], "category": []}}
        for box in record["boxes"]:
            side = entry["foreground" if box["foreground"] else "background"]
            side["bbox"].append([round(v, 2) for v in box["bbox"]])
            side["category"].append(box["category"])
        raw[str(record["image_id"])] = entry
    return raw
