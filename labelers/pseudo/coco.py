"""COCO instances JSON from pseudo-label records, id checks, and the merge with a base instances file.

The merge follows CoT-PL's step 5: names already in the base keep their ids, new names get ids after
the base's max with ``supercategory: "pseudo"``, base annotations are kept, new annotation ids follow
the base's max. Our annotations also carry ``score``.
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Iterable, Sequence


class CocoError(ValueError):
    """A COCO instances file is inconsistent (duplicate ids, unknown references)."""


def _duplicates(values: Iterable) -> list:
    return sorted(value for value, count in Counter(values).items() if count > 1)


def check_coco(instances: dict, source: str = "COCO file") -> None:
    """Raise CocoError naming ``source`` and the ids when image, annotation or category ids repeat, or an
    annotation names an image or category that is not there."""
    for key in ("images", "annotations", "categories"):
        if key not in instances:
            raise CocoError(f"{source}: no {key!r} list")
        dup = _duplicates(item["id"] for item in instances[key])
        if dup:
            raise CocoError(f"{source}: duplicate {key} ids {dup[:10]}")
    images = {image["id"] for image in instances["images"]}
    categories = {category["id"] for category in instances["categories"]}
    for ann in instances["annotations"]:
        if ann["image_id"] not in images:
            raise CocoError(f"{source}: annotation {ann['id']} names image {ann['image_id']}, which is not listed")
        if ann["category_id"] not in categories:
            raise CocoError(f"{source}: annotation {ann['id']} names category {ann['category_id']}, "
                            "which is not listed")


def records_to_coco(records: Iterable[dict], categories: Sequence[str] | None = None,
                    foreground_only: bool = True) -> dict:
    """Return a COCO instances dict (with ``score`` per annotation) for ``records``.

    Category ids are 1.. in the order of ``categories`` (default: first appearance). Background boxes
    are left out unless ``foreground_only`` is False. Images with an error are listed with no boxes.
    """
    records = list(records)
    names = list(categories or [])
    images, annotations = [], []
    for record in records:
        images.append({"id": record["image_id"], "file_name": record["file"], "width": record["width"],
                       "height": record["height"]})
        for box in record.get("boxes", []):
            if foreground_only and not box["foreground"]:
                continue
            if box["category"] not in names:
                names.append(box["category"])
            x, y, w, h = box["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": record["image_id"],
                                "category_id": names.index(box["category"]) + 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "score": box["score"]})
            if "segmentation" in box:  # RLE, with --masks
                annotations[-1]["segmentation"] = box["segmentation"]
    cats = [{"id": i + 1, "name": name, "supercategory": "pseudo"} for i, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": cats}


def coco_results(instances: dict) -> list[dict]:
    """Return the detection-results list (image_id, category_id, bbox, score) pycocotools' loadRes reads."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": a["score"]}
            for a in instances["annotations"]]


def merge_into_base(base: dict, pseudo: dict, base_source: str = "base COCO file") -> dict:
    """Return ``base`` plus ``pseudo``'s annotations (inputs untouched).

    Categories match by name; unknown names get ids after the base's max, supercategory "pseudo" (only
    names with at least one pseudo annotation: a name the frequency cut or an exclusion emptied does not
    become a detector class, as in CoT-PL, whose new names are its kept list). Pseudo images missing from
    the base (by id) are added. Raises CocoError when either input has
    duplicate or dangling ids, or an image id names different files in the two.
    """
    check_coco(base, base_source)
    check_coco(pseudo, "pseudo-labels")
    out = copy.deepcopy(base)
    by_name = {c["name"]: c["id"] for c in out["categories"]}
    next_cat = max(by_name.values(), default=0) + 1
    remap = {}
    used = {ann["category_id"] for ann in pseudo["annotations"]}
    for category in pseudo["categories"]:
        if category["id"] not in used:
            continue
        if category["name"] not in by_name:
            by_name[category["name"]] = next_cat
            out["categories"].append({"id": next_cat, "name": category["name"], "supercategory": "pseudo"})
            next_cat += 1
        remap[category["id"]] = by_name[category["name"]]
    base_images = {image["id"]: image for image in out["images"]}
    for image in pseudo["images"]:
        known = base_images.get(image["id"])
        if known is None:
            out["images"].append(dict(image))
        elif known.get("file_name") != image.get("file_name"):
            raise CocoError(f"image id {image['id']} is {known.get('file_name')!r} in the {base_source} but "
                            f"{image.get('file_name')!r} in the pseudo-labels")
    next_ann = max((a["id"] for a in out["annotations"]), default=0) + 1
    for ann in pseudo["annotations"]:
        out["annotations"].append({**ann, "id": next_ann, "category_id": remap[ann["category_id"]]})
        next_ann += 1
    return out
