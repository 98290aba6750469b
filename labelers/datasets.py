"""Labeled datasets for simulation and training: an ImageFolder tree or a feature .npz, with clear errors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """The dataset is empty, inconsistent or missing something; the message says what."""


@dataclass
class FeatureDataset:
    """Embeddings with integer labels, and optionally a fixed test split."""

    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    test_features: np.ndarray | None = None
    test_labels: np.ndarray | None = None


def list_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Return (paths, labels, class_names) of a `root/<class>/<image>` tree, classes sorted by name.

    Raises DatasetError for a missing or empty root and for a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class folders; expected {root}/<class>/<image>.jpg")
    paths, labels = [], []
    for label, folder in enumerate(class_dirs):
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"class '{folder.name}' has no images in {folder}")
        paths += images
        labels += [label] * len(images)
    return paths, np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs]


def load_feature_npz(path: str | Path) -> FeatureDataset:
    """Read an .npz with `features` (N, D), `labels` (N) and optional `test_features`, `test_labels`,
    `class_names`. Raises DatasetError naming the missing key or the inconsistency."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz ({exc})") from None
    for key in ("features", "labels"):
        if key not in data:
            raise DatasetError(f"{path}: missing array '{key}' (has: {', '.join(data.files) or 'nothing'})")
    features, labels = data["features"].astype(np.float32), data["labels"].astype(np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise DatasetError(f"{path}: features {features.shape} and labels {labels.shape} do not match")
    if ("test_features" in data) != ("test_labels" in data):
        raise DatasetError(f"{path}: give both 'test_features' and 'test_labels', or neither")
    n_classes = int(labels.max()) + 1
    if "test_labels" in data:
        n_classes = max(n_classes, int(data["test_labels"].max()) + 1)
    names = [str(n) for n in data["class_names"]] if "class_names" in data else [str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise DatasetError(f"{path}: {len(names)} class_names but labels go up to {n_classes - 1}")
    dataset = FeatureDataset(features, labels, names)
    if "test_features" in data:
        dataset.test_features = data["test_features"].astype(np.float32)
        dataset.test_labels = data["test_labels"].astype(np.int64)
        if dataset.test_features.shape[1] != features.shape[1]:
            raise DatasetError(f"{path}: test_features have {dataset.test_features.shape[1]} dimensions, "
                               f"features have {features.shape[1]}")
    return dataset
