"""A pseudo-label run: images in, one JSON record per image streamed to a JSONL file per batch,
resumable, then the raw / COCO / Label Studio files written from that JSONL. Shards merge by id.

A record: ``{image_id, file, width, height, boxes: [{bbox [x,y,w,h], category, foreground, score,
p_object, p_category, p_foreground, proposal_score[, segmentation]}], error}``.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from labelers.pseudo.filters import filter_proposals
from labelers.pseudo.proposals import Proposer, mask_box
from labelers.pseudo.questions import ask_chain
from labelers.pseudo.settings import PseudoSettings
from labelers.pseudo.visual_prompt import render_visual_prompt

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class PseudoRunError(RuntimeError):
    """A run cannot start or shards cannot be merged (existing output without --resume, overlaps)."""


@dataclass(frozen=True)
class ImageItem:
    image_id: int
    path: Path
    file: str       # the name written into outputs (relative to the folder or the COCO file_name)


def list_folder(folder: Path) -> list[ImageItem]:
    """Return the images under ``folder`` (recursive, sorted by relative path), ids 1.. in that order."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [ImageItem(i + 1, p, p.relative_to(folder).as_posix()) for i, p in enumerate(files)]


def list_coco(coco_file: Path, images_root: Path | None = None) -> tuple[list[ImageItem], list[str]]:
    """Return (the COCO file's images sorted by id, its category names sorted by id).

    ``images_root`` defaults to the file's folder. Raises CocoError for duplicate ids.
    """
    from labelers.pseudo.coco import check_coco

    data = json.loads(Path(coco_file).read_text(encoding="utf-8"))
    check_coco(data, str(coco_file))
    root = Path(images_root) if images_root else Path(coco_file).parent
    images = sorted(data["images"], key=lambda image: image["id"])
    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    return [ImageItem(int(im["id"]), root / im["file_name"], im["file_name"]) for im in images], names


def list_label_studio(export_file: Path, images_root: Path | None = None,
                      image_key: str | None = None) -> list[ImageItem]:
    """Return the images of a Label Studio JSON export, one per task, sorted by task id.

    The task id is the image id (the task's position, 1.., when it has none); ``file`` keeps the task's
    own image reference, so the Label Studio predictions written later point at the same image. The
    local file is found under ``images_root`` (default: the export's folder) the way labelloop reads
    exports elsewhere (local-files and upload URLs, plain paths). A reference found nowhere is listed
    with that missing path, so its image is recorded as unreadable (named) and the rest proceeds.
    Raises LabelStudioExportError for a malformed export, PseudoRunError for repeated task ids.
    """
    from labelers.formats.label_studio import read_label_studio_export, resolve_image_path

    root = Path(images_root) if images_root else Path(export_file).parent
    tasks = read_label_studio_export(export_file, image_key)
    items = []
    for number, task in enumerate(tasks, 1):
        image_id = int(task.id) if task.id is not None else number
        found = resolve_image_path(task.image, [root])
        items.append(ImageItem(image_id, found or root / task.image.lstrip("/"), task.image))
    ids = [item.image_id for item in items]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise PseudoRunError(f"{export_file}: task ids {repeated[:10]} repeat")
    return sorted(items, key=lambda item: item.image_id)


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """Return the records of a JSONL file. A torn last line (a kill mid-write) is dropped with a warning,
    and with ``repair`` cut from the file; a bad line elsewhere raises PseudoRunError naming the line."""
    if not Path(path).exists():
        return []
    lines = Path(path).read_bytes().split(b"\n")
    records, good_bytes = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[number:]):
                raise PseudoRunError(f"{path}: line {number} is not valid JSON") from None
            warnings.warn(f"{path}: dropped a torn last line (an interrupted write); that image is redone")
            if repair:
                with open(path, "r+b") as handle:
                    handle.truncate(good_bytes)
            break
        good_bytes += len(line) + 1
    return records


def write_records(records: Iterable[dict], path: Path) -> Path:
    """Write ``records`` as JSONL (one image per line) to ``path``; return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return path


def _mask_rle(mask) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def label_batch(batch: Sequence[ImageItem], proposer: Proposer, vlm, categories: Sequence[str],
                settings: PseudoSettings, answer_prefix: str, save_masks: bool) -> list[dict]:
    """Return one record per item of ``batch``: masks for all images, then one batched question chain.
    The per-batch step of a run, the same in one process and on Ray (labelers.ray_jobs)."""
    from PIL import Image

    records, images = [], []
    for item in batch:
        record = {"image_id": item.image_id, "file": item.file, "width": 0, "height": 0, "boxes": [], "error": None}
        try:
            with Image.open(item.path) as handle:
                image = handle.convert("RGB")
            record["width"], record["height"] = image.width, image.height
        except (OSError, ValueError) as exc:  # unreadable image: recorded, the rest proceeds
            record["error"] = f"cannot read {item.path}: {exc}"
            image = None
        records.append(record)
        images.append(image)
    ok = [i for i, image in enumerate(images) if image is not None]
    proposals = proposer.propose([images[i] for i in ok]) if ok else []
    regions, prompts = [], []  # (record index, proposal), visual prompt
    for i, found in zip(ok, proposals):
        kept = filter_proposals(found, settings.filters)
        if not kept:  # a mask-less image: recorded with the reason, the batch goes on
            records[i]["note"] = ("no region proposals" if not found else
                                  f"no region left after the filters ({len(found)} proposals)")
        for proposal in kept:
            regions.append((i, proposal))
            prompts.append(render_visual_prompt(images[i], proposal.mask, settings.visual_prompt))
    answers = ask_chain(vlm, prompts, categories, settings.questions, answer_prefix) if prompts else []
    for (i, proposal), answer in zip(regions, answers):
        if answer.unnamed:  # open vocabulary, no parseable name after the re-asks: kept with its answers
            x0, y0, x1, y1 = mask_box(proposal.mask)
            records[i].setdefault("unnamed", []).append({"bbox": [x0, y0, x1 - x0, y1 - y0],
                                                         "answers": answer.name_raw, "p_object": answer.p_object})
            continue
        if answer.category is None:
            continue
        x0, y0, x1, y1 = mask_box(proposal.mask)
        box = {"bbox": [x0, y0, x1 - x0, y1 - y0], "category": answer.category, "foreground": answer.foreground,
               "score": answer.score, "p_object": answer.p_object, "p_category": answer.p_category,
               "p_foreground": answer.p_foreground, "proposal_score": proposal.score}
        if save_masks:
            box["segmentation"] = _mask_rle(proposal.mask)
        records[i]["boxes"].append(box)
    return records


def run_pseudo_labels(items: Sequence[ImageItem], proposer: Proposer, vlm, categories: Sequence[str] | None,
                      settings: PseudoSettings, records_path: Path, resume: bool = False, batch_size: int = 4,
                      answer_prefix: str = "", save_masks: bool = False, progress: bool = True,
                      label_batches=None) -> dict:
    """Label ``items`` into ``records_path`` (JSONL), appending and flushing after every batch.

    With ``resume`` the images already in the file are skipped; without it an existing non-empty file
    is refused (PseudoRunError), so nothing is overwritten. ``categories`` None names regions in open
    vocabulary (labelers.pseudo.naming). Each unreadable image, image without regions and region left
    unnamed is warned about by file name and counted. Returns {done, skipped, errors, no_regions, unnamed}.
    ``label_batches(batches, step)`` maps the batches to `label_batch` records in order, given ``step`` (its
    keyword arguments after ``vlm``); by default here with ``proposer`` and ``vlm`` (labelers.ray_jobs: on Ray).
    """
    from tqdm import tqdm

    records_path = Path(records_path)
    if records_path.exists() and records_path.stat().st_size and not resume:
        raise PseudoRunError(f"{records_path} already holds records; pass --resume to continue it "
                             "or choose another --output-dir")
    done_ids = {r["image_id"] for r in read_records(records_path, repair=True)} if resume else set()
    todo = [item for item in items if item.image_id not in done_ids]
    records_path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"done": 0, "skipped": len(items) - len(todo), "errors": 0, "no_regions": 0, "unnamed": 0}
    bar = tqdm(total=len(items), initial=summary["skipped"], unit="img", desc="pseudo-labels", disable=not progress)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    step = dict(categories=None if categories is None else list(categories), settings=settings, answer_prefix=answer_prefix, save_masks=save_masks)
    results = label_batches(batches, step) if label_batches is not None else \
        (label_batch(batch, proposer, vlm, **step) for batch in batches)
    with open(records_path, "a", encoding="utf-8") as out:
        for batch, records in zip(batches, results):
            for record in records:
                _report(record, summary)
                out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())  # a kill after this line loses nothing of this batch
            summary["done"] += len(batch)
            bar.update(len(batch))
    bar.close()
    return summary


def _report(record: dict, summary: dict) -> None:
    """Warn about and count what went wrong with one image (the run goes on)."""
    if record["error"]:
        summary["errors"] += 1
        warnings.warn(record["error"])
    elif record.get("note"):
        summary["no_regions"] += 1
        warnings.warn(f"image {record['image_id']} ({record['file']}): {record['note']}")
    if record.get("unnamed"):
        summary["unnamed"] += len(record["unnamed"])
        answers = "; ".join(repr(u["answers"][-1]) for u in record["unnamed"][:3])
        warnings.warn(f"image {record['image_id']} ({record['file']}): {len(record['unnamed'])} regions got no "
                      f"category name after re-asks (last answers: {answers}); kept under 'unnamed' in the record")


def merge_records(paths: Iterable[Path]) -> list[dict]:
    """Return the records of several shard JSONLs, sorted by image id.

    An image in two shards (overlapping ranges) with the same record in both is kept once, with a
    warning naming the image and both files; with different records it cannot be told which is right,
    so PseudoRunError names every such image and the files, and nothing is merged.
    """
    seen: dict[int, tuple[Path, dict]] = {}
    conflicts, repeats = [], []
    for path in paths:
        for record in read_records(Path(path)):
            image_id = record["image_id"]
            if image_id not in seen:
                seen[image_id] = (Path(path), record)
            elif seen[image_id][1] == record:
                repeats.append(f"{image_id} ({seen[image_id][0]}, {path})")
            else:
                conflicts.append(f"{image_id} ({seen[image_id][0]}, {path})")
    if conflicts:
        raise PseudoRunError(f"overlapping shard ranges: images {', '.join(conflicts[:10])}"
                             f"{' ...' if len(conflicts) > 10 else ''} are in two shards with different "
                             "results; merge shards of disjoint --start/--end ranges")
    if repeats:
        warnings.warn(f"overlapping shard ranges: images {', '.join(repeats[:10])} are in two shards with the "
                      f"same result; kept once ({len(repeats)} images)")
    return [record for _, (_, record) in sorted(seen.items())]


def write_outputs(records: Sequence[dict], output_dir: Path, categories: Sequence[str] | None = None,
                  base_coco: Path | None = None, model_version: str = "pseudo") -> dict[str, Path]:
    """Write raw.json (CoT-PL), instances.json (COCO with scores), ls_tasks.json (Label Studio) and, with
    ``base_coco``, merged.json. Returns the paths by name."""
    from labelers.pseudo.coco import merge_into_base, records_to_coco
    from labelers.pseudo.label_studio import records_to_tasks
    from labelers.pseudo.raw import records_to_raw

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    instances = records_to_coco(records, categories)
    files = {"raw": output_dir / "raw.json", "coco": output_dir / "instances.json",
             "label_studio": output_dir / "ls_tasks.json"}
    files["raw"].write_text(json.dumps(records_to_raw(records)), encoding="utf-8")
    files["coco"].write_text(json.dumps(instances), encoding="utf-8")
    files["label_studio"].write_text(json.dumps(records_to_tasks(records, model_version=model_version)),
                                     encoding="utf-8")
    if base_coco is not None:
        base = json.loads(Path(base_coco).read_text(encoding="utf-8"))
        files["merged"] = output_dir / "merged.json"
        files["merged"].write_text(json.dumps(merge_into_base(base, instances, str(base_coco))), encoding="utf-8")
    return files
