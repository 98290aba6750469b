"""What `labelloop relabel` reads: an image folder, a CSV, the relabeler's JSON or a Label Studio export,
all turned into one `SingleLabelSet` (image paths, one original class index each, class names); and the
seed's YAML configs, mapped onto our settings."""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..datasets import list_image_folder
from ..formats.label_studio import resolve_image_path
from ..formats.ls_relabel import read_single_choice_export
from ..formats.relabel_json import RelabelFormatError, read_class_index, read_relabel_json

log = logging.getLogger(__name__)


class RelabelInputError(ValueError):
    """The input cannot be relabeled; the message names the file and row."""


@dataclass
class SingleLabelSet:
    paths: list[Path]
    original: np.ndarray  # (N,) class indices
    class_names: list[str]


def _classes_from(class_index: Path | None, seen: list[str]) -> list[str]:
    if class_index is not None:
        return read_class_index(class_index).names if class_index.suffix == ".json" else \
            [line.strip() for line in class_index.read_text().splitlines() if line.strip()]
    return sorted(set(seen))


def _index_names(names: list[str], classes: list[str], where: str) -> np.ndarray:
    position = {c: i for i, c in enumerate(classes)}
    out = []
    for row, name in enumerate(names):
        if name not in position:
            raise RelabelInputError(f"{where}: row {row}: label {name!r} is not a known class")
        out.append(position[name])
    return np.asarray(out, np.int64)


def read_csv_labels(path: Path, class_index: Path | None) -> SingleLabelSet:
    """Read a CSV with columns `image` and `label` (a class name); image paths relative to the CSV's folder."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise RelabelInputError(f"{path}: expected a header with columns image,label")
    names = [r["label"].strip() for r in rows]
    classes = _classes_from(class_index, names)
    return SingleLabelSet([path.parent / r["image"] for r in rows], _index_names(names, classes, str(path)), classes)


def read_json_labels(path: Path, class_index: Path | None, image_roots: list[Path]) -> SingleLabelSet:
    """Read the relabeler JSON (needs its class-index file, or takes the number of classes from the labels)
    or a Label Studio export (single Choices). Each relabeler row must hold exactly one label."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    roots = image_roots + [path.parent]
    if isinstance(payload, dict) and "data" in payload:
        index = read_class_index(class_index) if class_index else None
        rows = read_relabel_json(path, len(index) if index else None)
        for row, (image, labels) in enumerate(rows):
            if len(labels) != 1:
                raise RelabelInputError(f"{path}: row {row} ({image}): {len(labels) or 'an empty list of'} labels; "
                                        f"relabeling starts from exactly one original label per image")
        names = index.names if index else [str(i) for i in range(max(r[1][0] for r in rows) + 1)]
        paths = [_resolve(image, roots, path, row) for row, (image, _) in enumerate(rows)]
        return SingleLabelSet(paths, np.asarray([r[1][0] for r in rows], np.int64), names)
    images, labels, _ = read_single_choice_export(path)
    classes = _classes_from(class_index, labels)
    paths = [_resolve(image, roots, path, row) for row, image in enumerate(images)]
    return SingleLabelSet(paths, _index_names(labels, classes, str(path)), classes)


def _resolve(reference: str, roots: list[Path], source: Path, row: int, hint: str = "pass --image-root") -> Path:
    found = resolve_image_path(reference, roots)
    if found is None:
        raise RelabelInputError(f"{source}: row {row}: image {reference!r} not found under "
                                f"{', '.join(map(str, roots))} ({hint})")
    return found


def read_holdout(path: Path, n_classes: int) -> tuple[list[Path], list[list[int]], np.ndarray | None]:
    """Return (image paths, true label sets, given single labels or None) of a holdout relabeler JSON.

    Rows with an empty label list are unscored in ReaL's sense; as calibration data they would count as
    negatives for every class, so they are left out with a warning naming the first. Raises
    RelabelInputError when no row is left, RelabelFormatError naming the row of a bad index or `original`."""
    from ..formats.relabel_json import read_holdout_originals

    rows = read_relabel_json(path, n_classes)
    originals = read_holdout_originals(path, n_classes)
    kept = [i for i, (_, labels) in enumerate(rows) if labels]
    if not kept:
        raise RelabelInputError(f"{path}: every holdout row has an empty label list; nothing to calibrate on")
    if len(kept) < len(rows):
        first = next(i for i, (_, labels) in enumerate(rows) if not labels)
        log.warning("%s: %d holdout rows have an empty label list (unscored) and are left out; first: row %d (%s)",
                    path, len(rows) - len(kept), first, rows[first][0])
    # --image-root does not apply here: the hint must not send the user to it
    paths = [_resolve(rows[i][0], [path.parent], path, i, "a --holdout file's images resolve next to it")
             for i in kept]
    return paths, [rows[i][1] for i in kept], None if originals is None else originals[kept]


def read_input(data: Path, class_index: Path | None = None, image_roots: list[Path] | None = None) -> SingleLabelSet:
    """Return the single-label set in `data`: a folder root/<class>/*, a .csv, or a .json (relabeler or
    Label Studio export). Raises RelabelInputError / RelabelFormatError naming the problem."""
    if data.is_dir():
        paths, labels, names = list_image_folder(data)
        return SingleLabelSet(paths, labels, names)
    if not data.is_file():
        raise RelabelInputError(f"{data}: no such file or folder")
    if data.suffix.lower() == ".csv":
        return read_csv_labels(data, class_index)
    if data.suffix.lower() == ".json":
        return read_json_labels(data, class_index, list(image_roots or []))
    raise RelabelInputError(f"{data}: expected an image folder, a .csv or a .json")


# The seed's YAML keys -> our settings. Values are translated; unknown keys are reported, not ignored silently.
SEED_CONFIDENCE = {"naive": "naive", "mc_dropout": "mc-dropout", "mc_perturbation": "mc-perturbation"}
SEED_AGGREGATION = {"average": "mean", "majority": "vote"}
SEED_IGNORED = {"num_workers", "batch_size", "model", "model_path", "device", "seed"}


# The seed's config keys -> (our option, conversion); keys with a closed set of values are mapped first.
def _as_is(value):
    return value


SEED_KEYS = {
    "crop_method": ("regions", _as_is), "num_crops": ("num_crops", int), "crop_size_method": ("crop_size", _as_is),
    "confidence_measure": ("confidence", _as_is), "dropout_rate": ("dropout_rate", float),
    "post_proc_logits": ("aggregation", _as_is), "threshold": ("threshold", float), "num_relabel": ("max_images", int),
    "relabeled_dataset_save_path": ("save_path", Path), "json_dir": ("data", Path), "num_passes": ("passes", int),
}
SEED_CHOICES = {"confidence_measure": SEED_CONFIDENCE, "post_proc_logits": SEED_AGGREGATION}

def read_seed_config(path: Path) -> dict:
    """Return our option names -> values from a seed config (relabel_naive.yaml etc.).

    The seed's rule (each crop's argmax above the threshold, union, plus the original label) is what its
    configs mean, so `label` is "argmax" and `keep_original` True unless the command line says otherwise.
    `crop_method: rpn` maps to felzenszwalb proposals with a warning (no detector weights here)."""
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise RelabelInputError(f"{path}: a config is a mapping of keys to values")
    out: dict = {"label": "argmax", "keep_original": True, "rounds": 1}
    for key, value in raw.items():
        if key == "crop_method" and value == "rpn":
            log.warning("%s: crop_method rpn (a Faster R-CNN) is not available; using felzenszwalb proposals", path)
            value = "felzenszwalb"
        if key in SEED_CHOICES:
            choices = SEED_CHOICES[key]
            if value not in choices:
                raise RelabelInputError(f"{path}: {key} {value!r} is not one of {', '.join(choices)}")
            value = choices[value]
        if key in SEED_KEYS:
            ours, convert = SEED_KEYS[key]
            out[ours] = convert(value)
        elif key not in SEED_IGNORED:
            log.warning("%s: key %r is not used by labelloop relabel", path, key)
    return out


__all__ = ["RelabelInputError", "RelabelFormatError", "SingleLabelSet", "read_input", "read_seed_config"]
