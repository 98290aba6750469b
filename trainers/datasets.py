"""Loading ``--data``: the built-in datasets, image folders, CSVs, pickles, ``.npz`` arrays and VLM runs.

``load_dataset`` returns the images (with their true labels when the source knows them) as LabelSets;
attaching labels from a separate file is ``trainers.label_files``.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet

log = logging.getLogger(__name__)

BUILTIN = ("mnist", "fmnist", "cifar10")
FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


class DataSourceError(ValueError):
    """The data or label source cannot be read or matched; the message names the file and row."""




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

