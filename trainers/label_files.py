"""Attaching labels from a file (``--label-path``) to the images of a dataset.

Label files: ``auto_labels.csv``, a VLM run (``labels.jsonl``), a Label Studio JSON export or a libcll
pickle. Rows are matched to images by key (file name, relative path or path tail; see ``match_rows``),
never by position: a label file whose keys match no image is refused.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainers.datasets import DataSourceError
from trainers.labelset import LabelSet, majority_vote, pad_rows

log = logging.getLogger(__name__)

CL_CONTROL_HINTS = ("complement", "not", "neg", "cl")


def _row_keys(name: str, path: Path | None) -> set[str]:
    """Return the keys a label file may use for one image: its name, base name, stem and every tail of its path."""
    keys = {name, Path(name).name, Path(name).stem}
    if path is not None:
        parts = Path(path).absolute().parts
        keys.update(Path(*parts[start:]).as_posix() for start in range(len(parts)))
    return keys


def _name_index(names: list[str], paths: list[Path] | None = None) -> dict[str, int]:
    """Map every key of ``_row_keys`` to its row number; a key shared by two rows is dropped (unless it is a name)."""
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, name in enumerate(names):
        for key in _row_keys(name, paths[i] if paths is not None else None):
            if key in index and index[key] != i:
                ambiguous.add(key)
            index.setdefault(key, i)
    for key in ambiguous - set(names):
        index.pop(key, None)
    return index


def _lookup(index: dict[str, int], key: str) -> int | None:
    """Return the row of ``key``: exact, then ever shorter path tails ("run/3/a.png" -> "3/a.png" -> "a.png"), then stem."""
    parts = Path(key).parts
    for start in range(len(parts)):
        hit = index.get(Path(*parts[start:]).as_posix())
        if hit is not None:
            return hit
    return index.get(Path(key).stem)


def match_rows(base: LabelSet, keys: list[str], label_file: Path) -> np.ndarray:
    """Return, per label row, the base row it labels, matched by key (name, file name, path tail or stem).

    Rows are never matched by position: the seed's trainer did, and a label file written for another
    image order then puts most labels on the wrong image. Raises DataSourceError naming the first
    unmatched row, or two rows that land on the same image.
    """
    index = _name_index(base.names, base.paths)
    hits = [_lookup(index, k) for k in keys]
    missing = [i for i, h in enumerate(hits) if h is None]
    if missing:
        row = missing[0]
        example = base.names[0] if base.paths is None else f"{base.names[0]!r} ({base.paths[0]})"
        what = "none of its rows" if len(missing) == len(keys) else f"{len(missing)} of {len(keys)} rows"
        raise DataSourceError(f"{label_file}: {what} match an image of the dataset; row {row + 1} names image "
                              f"{keys[row]!r}, the dataset's first image is {example}. Rows are matched by file "
                              f"name or path, never by position")
    first: dict[int, int] = {}
    for row, hit in enumerate(hits):
        if hit in first:
            raise DataSourceError(f"{label_file}: rows {first[hit] + 1} ({keys[first[hit]]!r}) and {row + 1} "
                                  f"({keys[row]!r}) both match image {base.names[hit]!r}; use full relative paths")
        first[hit] = row
    return np.asarray(hits, dtype=np.int64)


def _apply(base: LabelSet, rows: np.ndarray, label_rows: np.ndarray, ordinary: bool, source: Path) -> LabelSet:
    """Return the base rows ``rows`` labelled with ``label_rows`` (CLs, or ordinary votes when ``ordinary``)."""
    subset = base.subset(rows)
    if ordinary:  # train on the file's labels, keep the dataset's truth for validation
        subset = replace(subset, ord_labels=majority_vote(label_rows), cl_labels=np.full((len(rows), 1), -1),
                         true_labels=subset.truth)
    else:
        subset = replace(subset, cl_labels=label_rows)
    dropped = len(base) - len(rows)
    if dropped:
        log.info("%s: %d dataset images have no labels and are left out", source, dropped)
    subset.meta["labels"] = str(source)
    return subset


def _pick_controls(tasks, cl_control: str | None, label_control: str | None, path: Path):
    controls = sorted({name for task in tasks for name in task.labels})
    if not controls:
        raise DataSourceError(f"{path}: no task has a non-cancelled annotation with chosen labels")
    for given in (cl_control, label_control):
        if given and given not in controls:
            raise DataSourceError(f"{path}: no annotation uses control {given!r}; controls found: {', '.join(controls)}")
    if cl_control is None and label_control is None:
        hinted = [c for c in controls if any(h in c.lower() for h in CL_CONTROL_HINTS)]
        cl_control = hinted[0] if hinted else None
        others = [c for c in controls if c != cl_control]
        label_control = others[0] if others else None
    return cl_control, label_control


def read_label_studio_labels(path: Path, base: LabelSet | None, roots: list[Path], classes: list[str] | None,
                             cl_control: str | None, label_control: str | None, image_key: str | None,
                             image_option: str = "--data") -> LabelSet:
    """Return a LabelSet from a Label Studio JSON export: CLs from ``cl_control``, labels from ``label_control``.

    Without a base dataset, images are resolved under ``roots``; an image that cannot be found is an
    error naming the task and the command's ``image_option``. Class names: ``classes``, the base's, or the
    sorted labels seen.
    """
    from labelers.formats.label_studio import read_label_studio_export, resolve_image_path

    tasks = read_label_studio_export(path, image_key)
    cl_control, label_control = _pick_controls(tasks, cl_control, label_control, path)
    names = classes or (base.class_names if base is not None and base.class_names else None) or sorted(
        {label for t in tasks for c in (cl_control, label_control) if c for label in t.labels.get(c, [])})
    index = {n: i for i, n in enumerate(names)}
    cl_rows, ord_labels = [], []
    for number, task in enumerate(tasks, start=1):
        for control in (cl_control, label_control):
            for label in task.labels.get(control, []) if control else []:
                if label not in index:
                    raise DataSourceError(f"{path}: task {number} (id {task.id}) has unknown class {label!r} in "
                                          f"control {control!r}; known: {', '.join(names)}")
        cl_rows.append([index[x] for x in task.labels.get(cl_control, [])] if cl_control else [])
        chosen = task.labels.get(label_control, []) if label_control else []
        ord_labels.append(index[chosen[0]] if chosen else -1)
    refs = [task.image for task in tasks]
    paths = []
    if base is None:
        for number, ref in enumerate(refs, start=1):
            found = resolve_image_path(ref, roots)
            if found is None:
                raise DataSourceError(f"{path}: task {number} image {ref!r} not found under "
                                      f"{', '.join(map(str, roots))} (pass {image_option} <image root>)")
            paths.append(found)
    keys = [str(p) for p in paths] if paths else [_ref_name(r) for r in refs]
    return LabelSet(names, keys, pad_rows(cl_rows), np.asarray(ord_labels), paths=paths or None,
                    meta={"source": str(path), "cl_control": cl_control, "label_control": label_control,
                          "refs": refs})


def _ref_name(ref: str) -> str:
    from urllib.parse import parse_qs, unquote, urlparse

    parsed = urlparse(ref)
    query = parse_qs(parsed.query)
    return unquote(query["d"][0]) if "d" in query else unquote(parsed.path or ref)


def attach_labels(base: LabelSet | None, label_path: str | Path, ordinary: bool, long_label: bool = True,
                  classes: list[str] | None = None, image_roots: list[Path] | None = None,
                  cl_control: str | None = None, label_control: str | None = None,
                  image_key: str | None = None, image_option: str = "--data", mode_checked: bool = False
                  ) -> LabelSet:
    """Return the LabelSet of ``base`` images labelled by ``label_path`` (or the label file's own images).

    ``ordinary`` reads the file's label columns as ordinary labels (majority vote per image, as for the
    seed's Ord runs) instead of complementary labels; the dataset's truth is kept for validation.
    Raises DataSourceError naming the row/key for unknown class names, images that are missing (and
    ``image_option``, the calling command's option for the images), and complementary labels asked for as
    ordinary ones (an auto_labels.csv: unless ``mode_checked``, the caller having checked its
    ``auto_labels_mode`` and said so in its own command's words).
    """
    from trainers.formats.vlm_run import JSONL_NAME

    path = Path(label_path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    if path.suffix == ".json":
        roots = list(image_roots or []) + [path.parent]
        labels = read_label_studio_labels(path, base, roots, classes, cl_control, label_control, image_key,
                                          image_option)
        return labels if base is None else _attach_label_studio(base, labels, ordinary, path)
    if path.suffix == ".jsonl" or (path.is_dir() and (path / JSONL_NAME).exists()):
        return _attach_vlm_run(base, path, ordinary)
    if path.suffix in (".pkl", ".pickle"):
        return _attach_pickle(base, path, ordinary, classes)
    return _attach_auto_labels(base, path, ordinary, long_label, classes, image_option, mode_checked)


def _attach_label_studio(base: LabelSet, labels: LabelSet, ordinary: bool, path: Path) -> LabelSet:
    rows = match_rows(base, labels.names, path)
    matched = base.subset(rows)
    matched.meta["labels"] = str(path)
    if ordinary:
        if not labels.has_true_labels:
            raise DataSourceError(f"{path}: no task has an ordinary label (control "
                                  f"{labels.meta.get('label_control')!r}), and complementary labels cannot be "
                                  f"read as ordinary labels (--strategy Ord, export --ordinary)")
        return replace(matched, ord_labels=labels.ord_labels, cl_labels=np.full((len(rows), 1), -1),
                       true_labels=matched.truth)
    if labels.has_cls:
        matched = replace(matched, cl_labels=labels.cl_labels)
    if labels.has_true_labels:  # a gold subset labelled in Label Studio
        matched = replace(matched, ord_labels=np.where(labels.ord_labels >= 0, labels.ord_labels,
                                                       matched.ord_labels))
    return matched


def _attach_vlm_run(base: LabelSet | None, path: Path, ordinary: bool) -> LabelSet:
    from trainers.formats.vlm_run import read_vlm_run

    run = read_vlm_run(path)
    if base is None:
        return run
    _check_same_classes(run.class_names, base.class_names, path)
    rows = match_rows(base, run.names, path)
    if run.meta.get("mode") == "ordinary":
        return _apply(base, rows, run.ord_labels[:, None], True, path)
    if ordinary:
        raise DataSourceError(f"{path}: this VLM run holds complementary labels (classes the images are NOT), "
                              f"which cannot be read as ordinary labels (--strategy Ord, export --ordinary); "
                              f"label with --mode ordinary, or pick a CL strategy")
    return _apply(base, rows, run.cl_labels, False, path)


def _attach_pickle(base: LabelSet | None, path: Path, ordinary: bool, classes: list[str] | None) -> LabelSet:
    from trainers.formats.libcll_pickle import read_libcll_pickle

    stored = read_libcll_pickle(path, classes)
    if base is None:
        return stored
    rows = match_rows(base, stored.names, path)
    return _apply(base, rows, stored.ord_labels[:, None] if ordinary else stored.cl_labels, ordinary, path)


def _attach_auto_labels(base: LabelSet | None, path: Path, ordinary: bool, long_label: bool,
                        classes: list[str] | None, image_option: str = "--data",
                        mode_checked: bool = False) -> LabelSet:
    from labelers.formats.auto_labels import AutoLabelsError, labels_to_indices, read_auto_labels

    if base is None:
        raise DataSourceError(f"{path}: an auto_labels.csv holds file names only; pass {image_option} with the "
                              "images")
    names = classes or base.class_names
    if not names:
        raise DataSourceError(f"{path}: class names are unknown; pass --classes (comma-separated or a file)")
    try:
        indexed = labels_to_indices(read_auto_labels(path), list(names), long_label=long_label, path=path)
    except AutoLabelsError as err:
        raise DataSourceError(str(err)) from None
    if base.class_names != list(names):
        base = replace(base, class_names=list(names))
    if ordinary and not mode_checked:
        _check_ordinary_csv(path)
    rows = match_rows(base, [f for f, _ in indexed], path)
    return _apply(base, rows, pad_rows([labels for _, labels in indexed]), ordinary, path)


def auto_labels_mode(path: Path) -> str | None:
    """Return the mode ("ordinary" | "complementary") the ``run.json`` beside an auto_labels.csv names, or None
    without one: the file itself does not say which kind its labels are."""
    import json

    meta = Path(path).parent / "run.json"
    return json.loads(meta.read_text(encoding="utf-8")).get("mode") if meta.exists() else None


def _check_ordinary_csv(path: Path) -> None:
    """Refuse an auto_labels.csv of a complementary VLM run read as ordinary labels; warn when unknown."""
    meta = path.parent / "run.json"
    mode = auto_labels_mode(path)
    if mode == "complementary":
        raise DataSourceError(f"{path}: {meta} says these are complementary labels (classes the images are NOT), "
                              f"which cannot be read as ordinary labels (--strategy Ord, export --ordinary); "
                              f"label with --mode ordinary, or pick a CL strategy")
    if mode is None:
        log.warning("%s: its label columns are read as ORDINARY labels (majority vote per row: --strategy Ord or "
                    "export --ordinary); if they are complementary labels, pick a CL strategy instead", path)


def _check_same_classes(run_classes: list[str], base_classes: list[str], path: Path) -> None:
    if base_classes and list(run_classes) != list(base_classes):
        raise DataSourceError(f"{path}: the run's classes ({', '.join(run_classes)}) differ from the dataset's "
                              f"({', '.join(base_classes)})")



def attach_vlm_ordinary_labels(base: LabelSet, label_path: str | Path, long_label: bool = True,
                               classes: list[str] | None = None) -> LabelSet:
    """Return ``base`` with ``vlm_labels`` read from a second label file of ordinary labels (``--ordinary-labels``).

    The file (an ordinary VLM run, its ``labels.jsonl``, or an ``auto_labels.csv``) is matched to the
    images of ``base`` by key, as ``--label-path`` is (``match_rows``); images it does not label get -1.
    Its labels never touch ``ord_labels`` / ``true_labels``: validation and gold stay as they are.
    Raises DataSourceError for a complementary run, other classes, a row matching no image, or
    ``base`` images that share a name (the labels could not be put back on one image).
    """
    if len(set(base.names)) != len(base.names):
        raise DataSourceError(f"{label_path}: the dataset has images sharing one name, so ordinary labels cannot "
                              f"be put back on one image each")
    labelled = attach_labels(base, label_path, ordinary=True, long_label=long_label, classes=classes)
    if list(labelled.class_names) != list(base.class_names):
        raise DataSourceError(f"{label_path}: its classes ({', '.join(labelled.class_names)}) differ from the "
                              f"complementary labels' ({', '.join(base.class_names)})")
    row_of = {name: i for i, name in enumerate(base.names)}
    vlm = np.full(len(base), -1, dtype=np.int64)
    vlm[[row_of[name] for name in labelled.names]] = labelled.ord_labels
    log.info("%s: ordinary labels on %d of %d images", label_path, int((vlm >= 0).sum()), len(base))
    return replace(base, vlm_labels=vlm, meta={**base.meta, "ordinary_labels": str(label_path)})


def drop_contradicting_ordinary_labels(labels: LabelSet) -> tuple[LabelSet, int]:
    """Return (``labels`` with each VLM ordinary label that is also one of the image's own CLs set to -1, how many).

    The VLM said both "this is a cat" and "this is not a cat" about one image: one of the two answers
    is wrong and nothing says which, so the ordinary term skips that image (its CLs are still trained on).
    """
    if labels.vlm_labels is None:
        return labels, 0
    clash = (labels.vlm_labels >= 0) & (labels.cl_labels == labels.vlm_labels[:, None]).any(axis=1)
    count = int(clash.sum())
    if count:
        log.warning("%d of %d images have a VLM ordinary label that is also one of their own complementary "
                    "labels; they are left out of the ordinary term", count, int((labels.vlm_labels >= 0).sum()))
    return replace(labels, vlm_labels=np.where(clash, -1, labels.vlm_labels)), count
