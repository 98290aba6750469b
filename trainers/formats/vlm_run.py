"""Reading a VLM labeling run (``labels.jsonl`` + ``run.json``, written by ``labelers.vlm.run``) as a LabelSet.

Complementary runs give CLs (one per round; unparseable answers leave the slot empty, -1).
Ordinary runs give one ordinary label per image: the majority vote over rounds. When records carry
``true_label`` (a gold run) a complementary run keeps it as the true label.

Images come back in input order (the records' ``index``; for runs written before it existed, the
order of the run's ``auto_labels.csv``), not in the JSONL's processing order. Image paths are stored
absolute; a relative one (older runs) is taken relative to the run directory.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet, majority_vote, pad_rows

JSONL_NAME, RUN_NAME, CSV_NAME = "labels.jsonl", "run.json", "auto_labels.csv"

log = logging.getLogger(__name__)


class VlmRunError(ValueError):
    """The run directory or JSONL is incomplete or inconsistent."""


def read_vlm_run(path: str | Path) -> LabelSet:
    """Return the labels of the run at ``path`` (a run directory or its ``labels.jsonl``), in JSONL order.

    Raises FileNotFoundError when the JSONL is missing and VlmRunError naming the line for a bad
    record or a label index outside the run's classes.
    """
    path = Path(path)
    jsonl = path / JSONL_NAME if path.is_dir() else path
    meta_path = jsonl.parent / RUN_NAME
    if not jsonl.exists():
        raise FileNotFoundError(f"VLM run labels not found: {jsonl}")
    if not meta_path.exists():
        raise VlmRunError(f"{jsonl}: {RUN_NAME} (class names, mode) is missing next to it")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    class_names = list(meta["class_names"])
    mode = meta.get("mode", "complementary")
    by_image: dict[str, dict] = {}
    with open(jsonl, encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key, round_index, label = record["image"], int(record["round"]), record.get("label")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise VlmRunError(f"{jsonl}: line {line_number} is not a label record ({err})") from None
            if label is not None and not 0 <= int(label) < len(class_names):
                raise VlmRunError(f"{jsonl}: line {line_number} ({key}) has label {label} outside the "
                                  f"{len(class_names)} classes of {RUN_NAME}")
            entry = by_image.setdefault(key, {"path": record.get("path"), "index": record.get("index"),
                                              "rounds": {}, "true": None})
            entry["rounds"][round_index] = -1 if label is None else int(label)
            if record.get("true_label") is not None:
                entry["true"] = int(record["true_label"])
    by_image = _in_input_order(by_image, jsonl.parent)
    keys = list(by_image)
    labels = pad_rows([[entry["rounds"][r] for r in sorted(entry["rounds"])] for entry in by_image.values()])
    paths = [jsonl.parent / entry["path"] if entry["path"] else None for entry in by_image.values()]
    truth = np.asarray([-1 if e["true"] is None else e["true"] for e in by_image.values()], dtype=np.int64)
    meta_out = {"source": str(jsonl), "mode": mode, "long_label": meta.get("long_label", True),
                "model_id": meta.get("model_id")}
    if mode == "ordinary":
        return LabelSet(class_names, keys, np.full((len(keys), 1), -1), majority_vote(labels),
                        paths=paths if all(paths) else None, true_labels=truth, meta=meta_out)
    return LabelSet(class_names, keys, labels, truth, paths=paths if all(paths) else None, meta=meta_out)


def _in_input_order(by_image: dict[str, dict], run_dir: Path) -> dict[str, dict]:
    """Return ``by_image`` ordered by input position: records' ``index``, else the run's auto_labels.csv."""
    if by_image and all(entry["index"] is not None for entry in by_image.values()):
        return dict(sorted(by_image.items(), key=lambda item: item[1]["index"]))
    table = run_dir / CSV_NAME
    if table.exists():
        from labelers.formats.auto_labels import read_auto_labels

        order = {name: i for i, (name, _) in enumerate(read_auto_labels(table))}
        if set(by_image) <= set(order):
            return dict(sorted(by_image.items(), key=lambda item: order[item[0]]))
    log.warning("%s: records carry no input position and %s does not list every image; images are in the "
                "order they were labelled", run_dir / JSONL_NAME, CSV_NAME)
    return by_image
