"""The libcll / CLImage dataset pickle: a dict with ``names``, ``images``, ``ord_labels``, ``cl_labels``.

``images`` is uint8 N x H x W x 3 (all the same size), ``ord_labels`` N ints, ``cl_labels`` N x R ints.
labelloop adds an optional ``class_names`` key (ignored by libcll) and writes -1 for an unknown true
label or an empty CL slot. Reading uses a restricted unpickler that only rebuilds numpy arrays and
plain containers, so a crafted pickle cannot run code.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from trainers.labelset import LabelSet, pad_rows

REQUIRED_KEYS = ("names", "images", "ord_labels", "cl_labels")
# The 2022 CLCIFAR release used other keys; map them so those files load too.
LEGACY_KEYS = {"names": "filenames", "images": "data", "cl_labels": "com_labels"}
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("collections", "OrderedDict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
}


class LibcllPickleError(ValueError):
    """The pickle is not a libcll dataset dict (missing key, inconsistent lengths, forbidden object)."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise LibcllPickleError(f"refusing to load {module}.{name}: a libcll dataset holds only arrays and lists")


def read_libcll_pickle(path: str | Path, class_names: list[str] | None = None) -> LabelSet:
    """Return the LabelSet stored in the libcll pickle at ``path``.

    Class names come from ``class_names``, else the file's ``class_names`` key, else "0".."K-1".
    Raises FileNotFoundError, or LibcllPickleError naming the missing key or the first bad row.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        try:
            data = _SafeUnpickler(io.BufferedReader(fh)).load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise LibcllPickleError(f"{path}: not a readable pickle ({err})") from None
    if not isinstance(data, dict):
        raise LibcllPickleError(f"{path}: expected a dict with keys {', '.join(REQUIRED_KEYS)}, got {type(data).__name__}")
    values = {}
    for key in REQUIRED_KEYS:
        if key in data:
            values[key] = data[key]
        elif LEGACY_KEYS.get(key) in data:
            values[key] = data[LEGACY_KEYS[key]]
        elif key != "ord_labels":
            raise LibcllPickleError(f"{path}: missing key {key!r} (keys present: {', '.join(map(str, data))})")
    n = len(values["names"])
    if "ord_labels" not in values:
        raise LibcllPickleError(f"{path}: missing key 'ord_labels' (keys present: {', '.join(map(str, data))})")
    for key in ("images", "ord_labels", "cl_labels"):
        if len(values[key]) != n:
            raise LibcllPickleError(f"{path}: key {key!r} has {len(values[key])} rows but 'names' has {n}")
    images = np.asarray(values["images"])
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        if images.ndim == 2 and images.shape[1] == 3072:  # legacy flat CIFAR rows, channel-major
            images = images.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
        else:
            raise LibcllPickleError(f"{path}: key 'images' must be uint8 N x H x W (x C), got "
                                    f"{images.dtype} {images.shape}")
    cl_rows = [list(np.atleast_1d(np.asarray(row, dtype=np.int64))) for row in values["cl_labels"]]
    cl = pad_rows(cl_rows)
    ord_labels = np.asarray(values["ord_labels"], dtype=np.int64).reshape(n)
    K = len(class_names or data.get("class_names") or []) or int(max(cl.max(initial=-1), ord_labels.max(initial=-1)) + 1)
    names = class_names or list(data.get("class_names") or [str(k) for k in range(K)])
    try:
        return LabelSet(list(names), [str(x) for x in values["names"]], cl, ord_labels, images=images,
                        meta={"source": str(path)})
    except ValueError as err:
        raise LibcllPickleError(f"{path}: {err}") from None


def write_libcll_pickle(path: str | Path, labels: LabelSet, images: np.ndarray) -> Path:
    """Write ``labels`` with ``images`` (uint8 N x H x W x C) as a libcll pickle; return the path.

    Raises LibcllPickleError when ``images`` does not have one row per label row.
    """
    images = np.asarray(images)
    if len(images) != len(labels) or images.dtype != np.uint8:
        raise LibcllPickleError(f"{path}: need {len(labels)} uint8 images, got {images.dtype} {images.shape}")
    payload = {
        "names": list(labels.names), "images": images,
        "ord_labels": [int(y) for y in labels.ord_labels],
        "cl_labels": [[int(c) for c in row] for row in labels.cl_labels],
        "class_names": list(labels.class_names),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(payload, fh, protocol=4)
    return path
