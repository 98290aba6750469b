"""Conversions between the pseudo-label box formats, for `labelloop export`.

Formats (``BOX_FORMATS``):
- ``records``: our per-image JSONL (labelers.pseudo.run), the most complete;
- ``cotpl-raw``: CoT-PL's ``{image_id: {foreground: {bbox, category}, background: {...}}}`` (no sizes,
  files or scores: reading it needs the images, and its boxes get score 1.0, said in a warning);
- ``coco``: COCO instances with ``score`` (and RLE ``segmentation`` when the records carry masks);
- ``ls-boxes``: Label Studio tasks with ``rectanglelabels`` predictions (percent coordinates).

Every reader returns records; every writer takes records. A box that a target cannot hold (a background
box in COCO or Label Studio, which hold foreground boxes only) is counted in a warning, not lost silently.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

BOX_FORMATS = ("records", "cotpl-raw", "coco", "ls-boxes")


class BoxFormatError(ValueError):
    """A box file is not in the format it claims, or lacks what a conversion needs; names the file."""


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BoxFormatError(f"{path}: not valid JSON ({exc})") from None


def _readable(items) -> list[dict]:
    """Return the annotations or predictions of a task that carry results. Label Studio's own JSON export
    lists a task's predictions by id only ("predictions": [2, 68]); those hold nothing to read."""
    return [item for item in items or [] if isinstance(item, dict)]


def _is_ls_boxes(payload) -> bool:
    tasks = payload.get("tasks") if isinstance(payload, dict) else payload
    if not isinstance(tasks, list):
        return False
    for task in tasks:
        for group in ("predictions", "annotations"):
            for item in _readable(task.get(group)) if isinstance(task, dict) else []:
                if any(r.get("type") == "rectanglelabels" for r in item.get("result") or []):
                    return True
    return False


def sniff_box_format(path: str | Path) -> str | None:
    """Return the box format of the file at ``path`` (one of BOX_FORMATS), or None when it holds none of
    them (a classification export, a CSV, a folder)."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix == ".jsonl":  # ours, or another room's JSONL (a VLM run's labels.jsonl): look inside
        with open(path, encoding="utf-8", errors="replace") as handle:
            first = next((line for line in handle if line.strip()), "")
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return None
        return "records" if isinstance(row, dict) and {"image_id", "boxes"} <= set(row) else None
    if path.suffix != ".json":
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(payload, dict) and {"images", "annotations", "categories"} <= set(payload):
        return "coco"
    if isinstance(payload, dict) and payload and all(
            isinstance(v, dict) and {"foreground", "background"} <= set(v) for v in payload.values()):
        return "cotpl-raw"
    return "ls-boxes" if _is_ls_boxes(payload) else None


def read_boxes(path: str | Path, fmt: str | None = None, images: str | Path | None = None) -> list[dict]:
    """Return the records held by the box file at ``path`` (format sniffed when ``fmt`` is None).

    ``images`` (a COCO instances file or the image folder a run read) supplies file names and sizes
    to ``cotpl-raw``, which has neither. Raises BoxFormatError naming the file and the image or task.
    """
    from labelers.pseudo.run import read_records

    if not Path(path).is_file():
        raise BoxFormatError(f"{path}: no such file")
    fmt = fmt or sniff_box_format(path)
    if fmt == "records":
        return read_records(Path(path))
    if fmt == "coco":
        return coco_to_records(_load_json(path), str(path))
    if fmt == "cotpl-raw":
        return raw_to_records(_load_json(path), _image_table(images, path), str(path))
    if fmt == "ls-boxes":
        return ls_to_records(_load_json(path), str(path))
    raise BoxFormatError(f"{path}: not a pseudo-label box file ({', '.join(BOX_FORMATS)})")


def _image_table(images, raw_path) -> dict[int, tuple[str, int, int]]:
    """Return {image id: (file, width, height)} from a COCO file or an image folder (ids as a run gives)."""
    if images is None:
        raise BoxFormatError(f"{raw_path}: CoT-PL raw JSON has no file names or image sizes; pass the COCO file "
                             "or image folder the run read (--dataset)")
    from PIL import Image

    from labelers.pseudo.run import list_folder

    images = Path(images)
    if images.is_dir():
        table = {}
        for item in list_folder(images):
            with Image.open(item.path) as handle:
                table[item.image_id] = (item.file, handle.width, handle.height)
        return table
    data = _load_json(images)
    return {int(im["id"]): (im["file_name"], int(im.get("width", 0)), int(im.get("height", 0)))
            for im in data.get("images", [])}


def _box(bbox, category, score, foreground=True, **extra) -> dict:
    return {"bbox": [float(v) for v in bbox], "category": category, "foreground": foreground,
            "score": float(score), **extra}


def coco_to_records(data: dict, source: str = "COCO file") -> list[dict]:
    """Return records from COCO instances (every box foreground). An annotation without ``score``
    (ground truth) gets 1.0, counted in a warning. Raises CocoError for duplicate or dangling ids."""
    from labelers.pseudo.coco import check_coco

    check_coco(data, source)
    names = {c["id"]: c["name"] for c in data["categories"]}
    records = {im["id"]: {"image_id": im["id"], "file": im.get("file_name", str(im["id"])),
                          "width": im.get("width", 0), "height": im.get("height", 0), "boxes": [], "error": None}
               for im in sorted(data["images"], key=lambda im: im["id"])}
    unscored = 0
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        unscored += "score" not in ann
        extra = {"segmentation": ann["segmentation"]} if isinstance(ann.get("segmentation"), dict) else {}
        records[ann["image_id"]]["boxes"].append(_box(ann["bbox"], names[ann["category_id"]],
                                                      ann.get("score", 1.0), **extra))
    if unscored:
        warnings.warn(f"{source}: {unscored} annotations have no score (ground truth?); they get score 1.0")
    return list(records.values())


def raw_to_records(raw: dict, images: dict[int, tuple[str, int, int]], source: str = "raw JSON") -> list[dict]:
    """Return records from CoT-PL raw JSON; ``images`` maps id -> (file, width, height). Boxes get score
    1.0 (the format has none; warned). Raises BoxFormatError naming an id missing from ``images`` or a
    side whose bbox and category lists differ in length."""
    records, boxes = [], 0
    for key in sorted(raw, key=int):
        image_id = int(key)
        if image_id not in images:
            raise BoxFormatError(f"{source}: image {image_id} is not in the images given (--dataset)")
        file, width, height = images[image_id]
        record = {"image_id": image_id, "file": file, "width": width, "height": height, "boxes": [], "error": None}
        for side in ("foreground", "background"):
            entry = raw[key][side]
            if len(entry["bbox"]) != len(entry["category"]):
                raise BoxFormatError(f"{source}: image {image_id} {side}: {len(entry['bbox'])} boxes but "
                                     f"{len(entry['category'])} categories")
            record["boxes"] += [_box(b, c, 1.0, side == "foreground") for b, c in zip(entry["bbox"], entry["category"])]
        boxes += len(record["boxes"])
        records.append(record)
    if boxes:
        warnings.warn(f"{source}: CoT-PL raw JSON has no scores; its {boxes} boxes get score 1.0")
    return records


def _ls_results(task: dict) -> tuple[list[dict], bool]:
    """Return (the task's rectangle results, whether they come from a human annotation)."""
    from labelers.formats.label_studio import usable_annotation

    for annotation in _readable(task.get("annotations")):
        rects = [r for r in annotation.get("result") or [] if r.get("type") == "rectanglelabels"]
        if rects and usable_annotation(annotation):
            return rects, True
    predictions = _readable(task.get("predictions"))
    if predictions:
        return [r for r in predictions[-1].get("result") or [] if r.get("type") == "rectanglelabels"], False
    return [], False


def ls_to_records(payload, source: str = "Label Studio file") -> list[dict]:
    """Return records from Label Studio tasks with rectangle results: a task's non-cancelled annotation
    when it has boxes (score 1.0: a person drew them), else its latest prediction (per-box ``score``).

    The image id is ``data.image_id`` (what we write), else the task id, else the position. Raises
    BoxFormatError naming the task for a rotated box or a box without a label.
    """
    tasks = payload.get("tasks") if isinstance(payload, dict) else payload
    records = []
    for number, task in enumerate(tasks, 1):
        data = task.get("data") or {}
        image_id = int(data.get("image_id", task.get("id") or number))
        results, human = _ls_results(task)
        record = {"image_id": image_id, "file": str(data.get("image", "")), "width": 0, "height": 0,
                  "boxes": [], "error": None}
        for result in results:
            value = result["value"]
            if value.get("rotation", 0):
                raise BoxFormatError(f"{source}: task {number} (image {image_id}) has a rotated box; COCO boxes "
                                     "are axis-aligned")
            if not value.get("rectanglelabels"):
                raise BoxFormatError(f"{source}: task {number} (image {image_id}) has a box without a label")
            width, height = result["original_width"], result["original_height"]
            record["width"], record["height"] = width, height
            bbox = [value["x"] * width / 100, value["y"] * height / 100, value["width"] * width / 100,
                    value["height"] * height / 100]
            record["boxes"].append(_box(bbox, value["rectanglelabels"][0], 1.0 if human else result.get("score", 1.0)))
        records.append(record)
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise BoxFormatError(f"{source}: image ids {sorted({i for i in ids if ids.count(i) > 1})[:10]} repeat")
    return records


def write_boxes(records: Sequence[dict], target: str | Path, fmt: str, categories: Sequence[str] | None = None,
                model_version: str = "pseudo") -> Path:
    """Write ``records`` to ``target`` in ``fmt`` (one of BOX_FORMATS); return the path. Background boxes,
    which COCO and Label Studio do not hold, are counted in a warning."""
    from labelers.pseudo.coco import records_to_coco
    from labelers.pseudo.label_studio import records_to_tasks
    from labelers.pseudo.raw import records_to_raw
    from labelers.pseudo.run import write_records

    if fmt not in BOX_FORMATS:
        raise BoxFormatError(f"unknown box format {fmt!r}; use one of {', '.join(BOX_FORMATS)}")
    target = Path(target)
    if fmt == "records":
        return write_records(records, target)
    background = sum(not b["foreground"] for r in records for b in r.get("boxes", []))
    if background and fmt in ("coco", "ls-boxes"):
        warnings.warn(f"{background} background boxes are not written to {fmt} (it holds foreground boxes); "
                      "records or cotpl-raw keep them")
    payload = {"cotpl-raw": lambda: records_to_raw(records),
               "coco": lambda: records_to_coco(records, categories),
               "ls-boxes": lambda: records_to_tasks(records, model_version=model_version)}[fmt]()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload), encoding="utf-8")
    return target


def target_box_format(target: str | Path, fmt: str | None) -> str:
    """Return the box format to write: ``fmt``, else "records" for a .jsonl target; BoxFormatError otherwise
    (a .json target could be any of three)."""
    if fmt:
        if fmt not in BOX_FORMATS:
            raise BoxFormatError(f"unknown box format {fmt!r}; use one of {', '.join(BOX_FORMATS)}")
        return fmt
    if Path(target).suffix == ".jsonl":
        return "records"
    raise BoxFormatError(f"{target}: say which box format to write with --format ({', '.join(BOX_FORMATS)})")
