"""Fixtures of the end-to-end tests: one real Label Studio per module, CIFAR-10 images as local files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.label_studio_server import LabelStudioServer, label_studio_bin, start_label_studio


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def label_studio(e2e_dir) -> LabelStudioServer:
    """A headless Label Studio for this module; a missing installation fails the test (CI must run it)."""
    try:
        binary = label_studio_bin()
    except FileNotFoundError as exc:
        missing = str(exc)
    else:
        missing = None
    if missing:
        pytest.fail(missing, pytrace=False)
    server = start_label_studio(e2e_dir, binary)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cifar_files(label_studio) -> list[tuple[str, str]]:
    """30 CIFAR-10 test images (3 per class) copied under Label Studio's local-files root.

    Returns (path relative to the root, true class name) pairs.
    """
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

    paths, labels = cifar10_subset("test", per_class=3)
    folder = label_studio.files_root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for path, label in zip(paths, labels):
        name = f"{CIFAR10_CLASSES[label]}_{path.name}"
        shutil.copyfile(path, folder / name)
        files.append((f"cifar10/{name}", CIFAR10_CLASSES[label]))
    return files
