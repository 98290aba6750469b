"""Turning ``--data`` / ``--label-path`` into training and test LabelSets.

``--data`` is a built-in dataset (``mnist``, ``fmnist``, ``cifar10``, from the shared sample data),
an ImageFolder tree, a flat folder of images, a classification CSV, a libcll pickle, an ``.npz``
of frozen features, or a VLM run directory. ``--label-path`` adds labels from ``auto_labels.csv``,
a VLM run (``labels.jsonl``), a Label Studio JSON export or a libcll pickle. Label rows are matched
to images by file name; an ``auto_labels.csv`` whose names match nothing but whose length equals the
dataset's is taken in dataset order, as the seed's trainer did.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet, LabelSetError, majority_vote, pad_rows

log = logging.getLogger(__name__)

BUILTIN = ("mnist", "fmnist", "cifar10")
FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
CL_CONTROL_HINTS = ("complement", "not", "neg", "cl")


class DataSourceError(ValueError):
    """The data or label source cannot be read or matched; the message names the file and row."""


@dataclass
class Sources:
    """What training reads: the training LabelSet, an optional test LabelSet, and the input kind."""

    train: LabelSet
    test: LabelSet | None
    kind: str  # "images" or "features"


# ---------------------------------------------------------------- datasets
def _mnist(root: Path | None, class_names: list[str]) -> tuple[LabelSet, LabelSet]:
    from labelers.sample_data import load_mnist

    sets = []
    for split in ("train", "test"):
        images, labels = load_mnist(split, root)
        names = [f"{split}/{i:05d}" for i in range(len(labels))]
        sets.append(LabelSet(class_names, names, np.full((len(labels), 1), -1), labels, images=images,
                             meta={"source": f"mnist {split}" if root is None else str(root)}))
    return sets[0], sets[1]


def _cifar10() -> tuple[LabelSet, LabelSet]:
    """CIFAR-10 training images in the original batch order (names = original file names), and the test split."""
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_root, cifar10_subset, sample_data_dir

    root = cifar10_root()
    with open(sample_data_dir() / "cifar10" / "train_order.csv", newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["cifar_index"]))
    train = LabelSet(list(CIFAR10_CLASSES), [r["cifar_filename"] for r in rows], np.full((len(rows), 1), -1),
                     np.asarray([int(r["label"]) for r in rows]), paths=[root / r["path"] for r in rows],
                     meta={"source": "cifar10 train"})
    paths, labels = cifar10_subset("test", 1000)
    test = LabelSet(list(CIFAR10_CLASSES), [f"test/{p.parent.name}/{p.name}" for p in paths],
                    np.full((len(paths), 1), -1), labels, paths=paths, meta={"source": "cifar10 test"})
    return train, test


def _npz(path: Path, classes: list[str] | None) -> tuple[LabelSet, LabelSet | None]:
    data = np.load(path, allow_pickle=False)
    key = "features" if "features" in data else "images" if "images" in data else None
    if key is None:
        raise DataSourceError(f"{path}: missing key 'features' (or 'images' for uint8 image arrays); "
                              f"keys present: {', '.join(data.files)}")
    if key == "images":
        return _npz_images(path, data, classes)
    features = np.asarray(data["features"], dtype=np.float32)
    labels = np.asarray(data["labels"], dtype=np.int64) if "labels" in data else np.full(len(features), -1)
    if len(labels) != len(features):
        raise DataSourceError(f"{path}: 'labels' has {len(labels)} rows but 'features' has {len(features)}")
    names = [str(x) for x in data["names"]] if "names" in data else [f"{i:06d}" for i in range(len(features))]
    if classes is None:
        classes = [str(x) for x in data["class_names"]] if "class_names" in data else \
            [str(k) for k in range(int(labels.max(initial=-1)) + 1)]
    cl = np.asarray(data["cl_labels"], dtype=np.int64).reshape(len(features), -1) if "cl_labels" in data \
        else np.full((len(features), 1), -1)
    train = LabelSet(classes, names, cl, labels, features=features, meta={"source": str(path)})
    test = None
    if "test_features" in data:
        tx = np.asarray(data["test_features"], dtype=np.float32)
        if "test_labels" not in data:
            raise DataSourceError(f"{path}: has 'test_features' but no 'test_labels'")
        ty = np.asarray(data["test_labels"], dtype=np.int64)
        test = LabelSet(classes, [f"test/{i:06d}" for i in range(len(tx))], np.full((len(tx), 1), -1), ty,
                        features=tx, meta={"source": f"{path} test"})
    return train, test


def _npz_images(path: Path, data, classes: list[str] | None) -> tuple[LabelSet, LabelSet | None]:
    """CIFAR-style arrays: ``images`` uint8 N x H x W (x C), ``labels``, optional ``test_images``/``test_labels``."""
    sets = []
    for prefix in ("", "test_"):
        if f"{prefix}images" not in data:
            sets.append(None)
            continue
        images = np.asarray(data[f"{prefix}images"])
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataSourceError(f"{path}: key '{prefix}images' must be uint8 N x H x W (x C), got "
                                  f"{images.dtype} {images.shape}")
        if f"{prefix}labels" not in data and prefix:
            raise DataSourceError(f"{path}: has 'test_images' but no 'test_labels'")
        labels = np.asarray(data[f"{prefix}labels"], dtype=np.int64) if f"{prefix}labels" in data \
            else np.full(len(images), -1)
        if len(labels) != len(images):
            raise DataSourceError(f"{path}: '{prefix}labels' has {len(labels)} rows but '{prefix}images' has "
                                  f"{len(images)}")
        names = [str(x) for x in data["names"]] if not prefix and "names" in data else \
            [f"{prefix or 'train_'}{i:06d}" for i in range(len(images))]
        if classes is None:
            classes = [str(x) for x in data["class_names"]] if "class_names" in data else \
                [str(k) for k in range(int(labels.max(initial=-1)) + 1)]
        cl = np.asarray(data["cl_labels"], dtype=np.int64).reshape(len(images), -1) \
            if not prefix and "cl_labels" in data else np.full((len(images), 1), -1)
        sets.append(LabelSet(classes, names, cl, labels, images=images, meta={"source": f"{path} {prefix}"}))
    return sets[0], sets[1]


def load_dataset(data: str, classes: list[str] | None = None) -> tuple[LabelSet, LabelSet | None]:
    """Return (train, test or None) LabelSets for ``--data``; raise DataSourceError / FileNotFoundError."""
    from trainers.formats.classification_csv import read_classification_csv
    from trainers.formats.image_folder import is_image_folder, list_images, read_image_folder
    from trainers.formats.libcll_pickle import read_libcll_pickle
    from trainers.formats.vlm_run import JSONL_NAME, read_vlm_run

    key = data.strip().lower()
    if key == "mnist":
        return _mnist(None, classes or [str(d) for d in range(10)])
    if key in ("fmnist", "fashion-mnist"):
        if not FMNIST_ROOT.exists():
            raise DataSourceError(f"Fashion-MNIST not found at {FMNIST_ROOT} (apt-get install dataset-fashion-mnist)")
        return _mnist(FMNIST_ROOT, classes or FMNIST_CLASSES)
    if key == "cifar10":
        return _cifar10()
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {data} (give a folder, a file, or one of {', '.join(BUILTIN)})")
    if path.suffix == ".npz":
        return _npz(path, classes)
    if path.suffix in (".pkl", ".pickle"):
        return read_libcll_pickle(path, classes), None
    if path.suffix == ".csv":
        return read_classification_csv(path, classes), None
    if path.suffix == ".jsonl" or (path / JSONL_NAME).exists():
        return read_vlm_run(path), None
    if is_image_folder(path):
        return read_image_folder(path, classes), None
    files = list_images(path)
    if not files:
        raise DataSourceError(f"{path}: no images found (expected images, or <class>/<image> subfolders)")
    return LabelSet(classes or [], [f.name for f in files], np.full((len(files), 1), -1), np.full(len(files), -1),
                    paths=files, meta={"source": str(path)}), None


# ---------------------------------------------------------------- label files
def _name_index(names: list[str]) -> dict[str, int]:
    """Map full names, base names and stems to row numbers (ambiguous keys are dropped)."""
    index: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, name in enumerate(names):
        for key in {name, Path(name).name, Path(name).stem}:
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


def _match_rows(base: LabelSet, keys: list[str], label_file: Path, allow_order: bool) -> np.ndarray:
    """Return, per label row, the base row it labels. Raises DataSourceError naming the first unmatched row."""
    index = _name_index(base.names)
    hits = [_lookup(index, k) for k in keys]
    missing = [i for i, h in enumerate(hits) if h is None]
    if not missing:
        return np.asarray(hits, dtype=np.int64)
    if allow_order and len(missing) == len(keys) and len(keys) == len(base):
        log.warning("%s: no file name matches the dataset; rows are taken in dataset order (seed layout)", label_file)
        return np.arange(len(keys))
    row = missing[0]
    raise DataSourceError(f"{label_file}: row {row + 1} names image {keys[row]!r}, which is not in the dataset "
                          f"({len(missing)} of {len(keys)} rows unmatched; e.g. dataset has {base.names[0]!r})")


def _apply(base: LabelSet, rows: np.ndarray, label_rows: np.ndarray, ordinary: bool, source: Path) -> LabelSet:
    """Return the base rows ``rows`` labelled with ``label_rows`` (CLs, or ordinary votes when ``ordinary``)."""
    subset = base.subset(rows)
    if ordinary:
        subset = replace(subset, ord_labels=majority_vote(label_rows), cl_labels=np.full((len(rows), 1), -1))
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
                             cl_control: str | None, label_control: str | None, image_key: str | None) -> LabelSet:
    """Return a LabelSet from a Label Studio JSON export: CLs from ``cl_control``, labels from ``label_control``.

    Without a base dataset, images are resolved under ``roots``; an image that cannot be found is an
    error naming the task. Class names: ``classes``, the base's, or the sorted labels seen.
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
                                      f"{', '.join(map(str, roots))} (pass --data <image root>)")
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
                  image_key: str | None = None) -> LabelSet:
    """Return the LabelSet of ``base`` images labelled by ``label_path`` (or the label file's own images).

    ``ordinary`` reads the file's label columns as ordinary labels (majority vote per image, as for the
    seed's Ord runs) instead of complementary labels. Raises DataSourceError naming the row/key for
    unknown class names and listed images that are missing.
    """
    from labelers.formats.auto_labels import AutoLabelsError, labels_to_indices, read_auto_labels
    from trainers.formats.libcll_pickle import read_libcll_pickle
    from trainers.formats.vlm_run import JSONL_NAME, read_vlm_run

    path = Path(label_path)
    if not path.exists():
        raise FileNotFoundError(f"label file not found: {path}")
    names = classes or (base.class_names if base is not None else None)
    if path.suffix == ".json":
        roots = list(image_roots or []) + [path.parent]
        labels = read_label_studio_labels(path, base, roots, classes, cl_control, label_control, image_key)
        if base is None:
            return labels
        rows = _match_rows(base, labels.names, path, allow_order=False)
        matched = base.subset(rows)
        if labels.has_cls:
            matched = replace(matched, cl_labels=labels.cl_labels)
        if labels.has_true_labels:
            matched = replace(matched, ord_labels=np.where(labels.ord_labels >= 0, labels.ord_labels,
                                                           matched.ord_labels))
        matched.meta["labels"] = str(path)
        return matched
    if path.suffix == ".jsonl" or (path.is_dir() and (path / JSONL_NAME).exists()):
        run = read_vlm_run(path)
        if base is None:
            return run
        _check_same_classes(run.class_names, base.class_names, path)
        rows = _match_rows(base, run.names, path, allow_order=False)
        if run.meta.get("mode") == "ordinary":
            return _apply(base, rows, run.ord_labels[:, None], True, path)
        return _apply(base, rows, run.cl_labels, ordinary, path)
    if path.suffix in (".pkl", ".pickle"):
        stored = read_libcll_pickle(path, classes)
        if base is None:
            return stored
        rows = _match_rows(base, stored.names, path, allow_order=True)
        return _apply(base, rows, stored.ord_labels[:, None] if ordinary else stored.cl_labels, ordinary, path)
    if base is None:
        raise DataSourceError(f"{path}: an auto_labels.csv holds file names only; pass --data with the images")
    if not names:
        raise DataSourceError(f"{path}: class names are unknown; pass --classes (comma-separated or a file)")
    try:
        rows_named = read_auto_labels(path)
        indexed = labels_to_indices(rows_named, list(names), long_label=long_label, path=path)
    except AutoLabelsError as err:
        raise DataSourceError(str(err)) from None
    if base.class_names != list(names):
        base = replace(base, class_names=list(names))
    rows = _match_rows(base, [f for f, _ in indexed], path, allow_order=True)
    return _apply(base, rows, pad_rows([labels for _, labels in indexed]), ordinary, path)


def _check_same_classes(run_classes: list[str], base_classes: list[str], path: Path) -> None:
    if base_classes and list(run_classes) != list(base_classes):
        raise DataSourceError(f"{path}: the run's classes ({', '.join(run_classes)}) differ from the dataset's "
                              f"({', '.join(base_classes)})")


def parse_classes(text: str | None) -> list[str] | None:
    """Return class names from ``--classes``: a file with one name per line, or a comma-separated list."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


def load_sources(data: str | None, label_path: str | None = None, ordinary: bool = False, long_label: bool = True,
                 classes: list[str] | None = None, test_data: str | None = None, cl_control: str | None = None,
                 label_control: str | None = None, image_key: str | None = None) -> Sources:
    """Return the training (and test) LabelSets for ``--data`` + ``--label-path``.

    Raises DataSourceError / LabelSetError / FileNotFoundError with the offending file and row.
    """
    if not data and not label_path:
        raise DataSourceError("give --data (a dataset) and/or --label-path (a label file)")
    base, test = load_dataset(data, classes) if data else (None, None)
    if classes and base is not None and base.class_names and base.class_names != classes:
        if len(base.class_names) != len(classes):
            raise DataSourceError(f"--classes lists {len(classes)} classes but {data} has {len(base.class_names)}")
        base = replace(base, class_names=list(classes))
    train = base
    if label_path:
        roots = [Path(data)] if data and Path(data).is_dir() else []
        train = attach_labels(base, label_path, ordinary, long_label, classes, roots, cl_control, label_control,
                              image_key)
    if test_data:
        test, extra = load_dataset(test_data, train.class_names or classes)
        if extra is not None:
            log.info("%s also has a test split; using its training split as the test set", test_data)
    if test is not None and test.class_names != train.class_names:
        if len(test.class_names) != len(train.class_names):
            raise LabelSetError(f"test set has {len(test.class_names)} classes, training set {len(train.class_names)}")
        test = replace(test, class_names=train.class_names)
    kind = "features" if train.features is not None else "images"
    if kind == "images" and train.images is None and train.paths is None:
        raise DataSourceError("the labels name images but no image files or arrays were found; pass --data")
    return Sources(train, test, kind)
