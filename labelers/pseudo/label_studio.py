"""Label Studio tasks with RectangleLabels predictions (percent coordinates, a score per box)."""
from __future__ import annotations

import uuid
from typing import Iterable


def record_to_prediction(record: dict, from_name: str = "label", to_name: str = "image",
                         model_version: str = "pseudo", foreground_only: bool = True) -> dict:
    """Return one LS prediction ``{result, score, model_version}`` for a record's boxes.

    Coordinates are percent of the original size; ``score`` is the mean box score (0 with no boxes).
    """
    width, height = record["width"], record["height"]
    result = []
    for box in record.get("boxes", []):
        if foreground_only and not box["foreground"]:
            continue
        x, y, w, h = box["bbox"]
        result.append({"id": uuid.uuid4().hex[:10], "type": "rectanglelabels", "from_name": from_name,
                       "to_name": to_name, "original_width": width, "original_height": height,
                       "image_rotation": 0, "score": box["score"],
                       "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": 100.0 * w / width,
                                 "height": 100.0 * h / height, "rotation": 0, "rectanglelabels": [box["category"]]}})
    score = sum(r["score"] for r in result) / len(result) if result else 0.0
    return {"result": result, "score": score, "model_version": model_version}


def records_to_tasks(records: Iterable[dict], image_url_prefix: str = "", **kwargs) -> list[dict]:
    """Return LS import tasks ``[{data: {image, image_id}, predictions: [...]}]``; images with an error are
    left out. ``image_id`` keeps the record's id, so a conversion back finds the same image."""
    return [{"data": {"image": image_url_prefix + record["file"], "image_id": record["image_id"]},
             "predictions": [record_to_prediction(record, **kwargs)]}
            for record in records if not record.get("error")]
