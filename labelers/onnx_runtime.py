"""An embedder's forward pass in ONNX Runtime on CPU: the torch model exported once with `torch.onnx`, the
exported file cached beside the weights it came from.

Why: on this project's CPU machine ONNX Runtime runs EfficientNet-Lite0 several times faster than torch's
eager forward, batched (benchmarks/bench_speed.py, RESULTS.md), and gives the same vectors to ~1e-5 relative.

The exported file is named by the weights' SHA-256 (`labelers.fingerprints`), the input size, the opset and
`EXPORT_FORMAT`, so new weights or a changed wrapper are exported afresh, never served from an old file. It is
written to a scratch name and renamed, so a crash mid-export leaves no half file under the real name; a file
that ONNX Runtime cannot load, or whose output differs from torch's on a probe batch, is refused (and a
damaged cached file re-exported once). Needs the `onnx` extra: `pip install 'labelloop[onnx]'`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
import numpy as np
import torch

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_FORMAT = 1  # bump when the exported wrapper's graph changes: old files are then exported again
PROBE_RTOL = 1e-4  # ONNX Runtime vs torch on the probe batch, relative to the largest feature


class OnnxRuntimeMissing(ImportError):
    """onnxruntime (or onnx, which torch's exporter needs) is not installed."""


def require_onnx():
    """Return the `onnxruntime` module; raises OnnxRuntimeMissing naming the extra to install when it, or
    `onnx` (torch's exporter writes through it), is not installed."""
    from importlib.util import find_spec

    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    # onnx is only looked up here: importing it costs seconds (ml_dtypes), and only an export needs it
    missing = [name for name, found in (("onnxruntime", onnxruntime), ("onnx", find_spec("onnx"))) if not found]
    if missing:
        raise OnnxRuntimeMissing(f"the ONNX Runtime path needs onnxruntime and onnx ({', '.join(missing)} "
                                 "missing): pip install 'labelloop[onnx]'")
    return onnxruntime


def export_folder(weights: Path) -> Path:
    """Return where exports of `weights` live: beside the weights when that folder is writable (a read-only
    install keeps them in labelloop's cache folder instead, `LABELLOOP_CACHE`)."""
    if os.access(weights.parent, os.W_OK):
        return weights.parent
    from .sample_data import cache_dir

    folder = cache_dir() / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_path(weights: Path, name: str, image_size: int) -> Path:
    """Return the exported file's path for these weights (named by their SHA-256), input size and opset."""
    from .fingerprints import file_digest

    digest = file_digest(weights)[:16]
    return export_folder(weights) / f"{name}-{digest}-{image_size}px-opset{OPSET}-v{EXPORT_FORMAT}.onnx"


def export(module: torch.nn.Module, image_size: int, path: Path) -> None:
    """Export `module` (N, 3, S, S) -> (N, D) to `path` with a dynamic batch axis, atomically."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    example = torch.zeros(2, 3, image_size, image_size)
    import warnings

    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and constant-folding notes
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(scratch), dynamo=False, opset_version=OPSET,
                              input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        os.replace(scratch, path)  # a reader sees no file or the whole file, never a half-written one
    finally:
        scratch.unlink(missing_ok=True)


def session_options(ort, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxForward:
    """Callable (N, 3, S, S) float32 tensor -> (N, D) tensor, computed by ONNX Runtime on CPU.

    Raises OnnxRuntimeMissing without the extra, and RuntimeError when the export does not reproduce `module`'s
    output on a probe batch within PROBE_RTOL (that file is then not used)."""

    def __init__(self, module: torch.nn.Module, weights: Path, name: str, image_size: int,
                 threads: int | None = None):
        ort = require_onnx()
        self.path = export_path(Path(weights), name, image_size)
        self.threads = threads or torch.get_num_threads()
        fresh = not self.path.exists()
        if fresh:
            log.info("exporting %s to ONNX: %s", name, self.path)
            export(module, image_size, self.path)
        try:
            self._open(ort, module, image_size)
        except Exception as exc:  # a damaged or stale cached file (ORT raises its own exception types)
            if fresh:
                raise
            log.warning("ONNX export %s unusable (%s); exporting it again", self.path, exc)
            export(module, image_size, self.path)
            self._open(ort, module, image_size)

    def _open(self, ort, module: torch.nn.Module, image_size: int) -> None:
        """Load the file and check it against `module`; a file that fails is deleted (never served later)."""
        try:
            self.session = self._load(ort)
            self._check(module, image_size)
        except Exception:
            self.path.unlink(missing_ok=True)
            raise

    def _load(self, ort):
        return ort.InferenceSession(str(self.path), session_options(ort, self.threads),
                                    providers=["CPUExecutionProvider"])

    def _check(self, module: torch.nn.Module, image_size: int) -> None:
        probe = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, image_size, image_size))
                                 .astype(np.float32))
        with torch.inference_mode():
            expected = module(probe).numpy()
        got = self(probe).numpy()
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX export {self.path} gives features of shape {got.shape[1:]}, the torch "
                               f"model {expected.shape[1:]}")
        error = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))
        if not error <= PROBE_RTOL:
            raise RuntimeError(f"ONNX export {self.path} differs from the torch model by {error:.1e} "
                               f"(relative, tolerance {PROBE_RTOL:.0e})")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"images": images})[0])

