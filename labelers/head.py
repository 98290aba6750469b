"""The classifier head: a linear layer on frozen, L2-normalised embeddings.

It behaves like a scikit-learn estimator (settings in the constructor, `fit` learns, `predict_proba` is pure).
Training is L2-regularised logistic regression pulled towards a prior: the zero-shot text weights when the
embedder has a text tower, else zero. So a class with no example yet keeps its prior instead of vanishing.
Probabilities are calibrated by a temperature fitted on cross-validated logits once there are enough labels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_limits

MIN_LABELS_TO_CALIBRATE = 30


class ClassifierHead:
    """Linear softmax (or sigmoid, for multi-label) classifier over embeddings."""

    def __init__(self, class_names: Sequence[str], multi_label: bool = False, l2: float = 100.0,
                 max_iter: int = 200, calibrate: bool = True, seed: int = 0):
        if len(class_names) < 2 and not multi_label:
            raise ValueError("a classifier head needs at least two classes")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"duplicate class names: {list(class_names)}")
        self.class_names = list(class_names)
        self.multi_label, self.l2, self.max_iter, self.calibrate, self.seed = multi_label, l2, max_iter, calibrate, seed
        self.prior_weight: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.temperature = 1.0
        self.n_trained = 0

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def init_from_text(self, class_weights: np.ndarray, logit_scale: float = 100.0) -> "ClassifierHead":
        """Use zero-shot text weights (K, D) times the model's logit scale as prior and starting point."""
        weights = torch.as_tensor(np.asarray(class_weights, np.float32)) * float(logit_scale)
        if weights.shape[0] != self.n_classes:
            raise ValueError(f"{weights.shape[0]} text vectors for {self.n_classes} classes")
        self.prior_weight = weights
        self.weight, self.bias = weights.clone(), torch.zeros(self.n_classes)
        return self

    def _ensure_init(self, dim: int) -> None:
        if self.weight is None:
            self.prior_weight = torch.zeros(self.n_classes, dim)
            self.weight, self.bias = self.prior_weight.clone(), torch.zeros(self.n_classes)
        elif self.weight.shape[1] != dim:
            raise ValueError(f"features have {dim} dimensions, the head expects {self.weight.shape[1]}")

    def _targets(self, labels) -> np.ndarray:
        labels = np.asarray(labels)
        if self.multi_label:
            if labels.ndim != 2 or labels.shape[1] != self.n_classes:
                raise ValueError(f"multi-label targets must be (N, {self.n_classes}) multi-hot")
            return labels.astype(np.float64)
        if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= self.n_classes)):
            raise ValueError(f"labels must be class indices in [0, {self.n_classes})")
        return labels.astype(np.int64)

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def _nll(self, logits: np.ndarray, y: np.ndarray) -> float:
        """Mean negative log-likelihood of targets `y` (indices, or multi-hot for multi-label)."""
        if self.multi_label:
            return float(np.mean(np.logaddexp(0, logits) - y * logits) * self.n_classes)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1))
        return float(np.mean(log_norm - shifted[np.arange(len(y)), y]))

    def _training_problem(self, x: np.ndarray, y: np.ndarray):
        """Return (objective, start, to_raw): the exact problem `_solve` hands to L-BFGS.

        `objective(theta)` returns (loss, gradient) of mean NLL + l2/(2N) * ||(W, b) - prior||^2 for the
        flat parameter vector theta = (W.ravel(), b); `start` is the prior; `to_raw(theta)` maps a solution
        back to (weight, bias) acting on raw features. Kept apart from `_solve` so the gradient can be
        checked against the loss by finite differences.

        The problem is posed on centred features divided by their per-coordinate RMS: mean-pooled CNN
        features share a large common direction that makes the raw problem ill-conditioned (3-10x more
        iterations), and in these units one `l2` suits 10 or 10 000 labels (measured on CIFAR-10).
        """
        self._ensure_init(x.shape[1])
        x = x.astype(np.float64)
        center = x.mean(axis=0)
        scale = float(np.sqrt(((x - center) ** 2).mean())) or 1.0  # per-coordinate RMS
        x = (x - center) / scale
        prior = self.prior_weight.numpy().astype(np.float64) * scale  # same function in the new units
        # The bias is penalised too: otherwise a class with no example yet has its bias driven to -inf,
        # its probability to ~0, and uncertainty sampling can never discover it.
        prior_bias = prior @ center / scale
        k, d = prior.shape
        target = y if self.multi_label else np.eye(k)[y]
        strength = self.l2 / len(x)  # a fixed prior against a summed likelihood: fades as labels grow

        def objective(theta):
            weight, bias = theta[:k * d].reshape(k, d), theta[k * d:]
            logits = x @ weight.T + bias
            # d(mean NLL)/d(logits) is (p - target) / N in both modes: for multi-label `_nll` sums the K
            # per-class losses, so no extra factor K belongs here.
            residual = (self._probabilities(logits) - target) / len(x)
            delta, bias_delta = weight - prior, bias - prior_bias
            loss = self._nll(logits, y) + 0.5 * strength * float((delta ** 2).sum() + (bias_delta ** 2).sum())
            grad = np.concatenate([(residual.T @ x + strength * delta).ravel(),
                                   residual.sum(axis=0) + strength * bias_delta])
            return loss, grad

        def to_raw(theta):
            weight = theta[:k * d].reshape(k, d) / scale
            return weight, theta[k * d:] - weight @ center

        return objective, np.concatenate([prior.ravel(), prior_bias]), to_raw

    def _solve(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit (weight, bias) by L-BFGS with the analytic gradient (convex, deterministic); float32 arrays.

        NumPy + SciPy, not autograd: for a linear head the per-step overhead dominates.
        """
        from scipy.optimize import minimize

        objective, start, to_raw = self._training_problem(x, y)
        # One BLAS thread: training runs beside request serving, and multi-threaded BLAS spinning on
        # small products made a 100-label fit 50x slower on a busy 2-core machine.
        with threadpool_limits(1):
            result = minimize(objective, start, jac=True, method="L-BFGS-B",
                              options={"maxiter": self.max_iter, "gtol": 1e-6})
        weight, bias = to_raw(result.x)
        return weight.astype(np.float32), bias.astype(np.float32)

    def fit(self, features: np.ndarray, labels) -> "ClassifierHead":
        """Train on embeddings (N, D) and class indices (N,) or multi-hot (N, K); returns self."""
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError("fit needs a non-empty (N, D) feature matrix")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values (an image that failed to embed?)")
        y = self._targets(labels)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self._ensure_init(x.shape[1])
        self.temperature = self._cross_validated_temperature(x, y) if self.calibrate else 1.0
        weight, bias = self._solve(x, y)
        self.weight, self.bias = torch.from_numpy(weight), torch.from_numpy(bias)
        self.n_trained = len(x)
        return self

    def _cross_validated_temperature(self, x: np.ndarray, y: np.ndarray, folds: int = 3) -> float:
        """Fit one temperature on held-out logits of a k-fold split (1.0 when there are too few labels)."""
        from scipy.optimize import minimize_scalar

        if len(x) < MIN_LABELS_TO_CALIBRATE:
            return 1.0
        order = np.random.default_rng(self.seed).permutation(len(x))
        if not self.multi_label and len(np.unique(y)) < 2:
            return 1.0
        held = []
        with threadpool_limits(1):
            for fold in range(folds):
                test = order[fold::folds]
                train = np.setdiff1d(order, test)
                weight, bias = self._solve(x[train], y[train])
                held.append((test, x[test] @ weight.T + bias))
        rows = np.concatenate([t for t, _ in held])
        logits, targets = np.concatenate([l for _, l in held]), y[rows]
        best = minimize_scalar(lambda log_t: self._nll(logits / np.exp(log_t), targets),
                               bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        return float(np.exp(best.x))

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Return calibrated logits (N, K)."""
        x = torch.as_tensor(np.asarray(features, np.float32))
        self._ensure_init(x.shape[1])
        with torch.no_grad():
            return ((x @ self.weight.T + self.bias) / self.temperature).numpy()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return class probabilities (N, K): softmax rows, or independent sigmoids for multi-label."""
        logits = torch.as_tensor(self.logits(features))
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
        return probs.numpy()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return the most probable class index per row."""
        return self.predict_proba(features).argmax(axis=1)

    def save(self, folder: str | Path) -> Path:
        """Write weights (safetensors) and settings (JSON) into `folder`; returns it."""
        if self.weight is None:
            raise ValueError("nothing to save: the head has no weights yet")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous(),
                   "prior_weight": self.prior_weight.contiguous()}, str(folder / "head.safetensors"))
        meta = {"class_names": self.class_names, "multi_label": self.multi_label, "l2": self.l2,
                "max_iter": self.max_iter, "calibrate": self.calibrate, "seed": self.seed,
                "temperature": self.temperature, "n_trained": self.n_trained, "format": 1}
        (folder / "head.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ClassifierHead":
        """Read a head written by `save`; raises FileNotFoundError or ValueError on a missing/bad folder."""
        folder = Path(folder)
        meta = json.loads((folder / "head.json").read_text())
        head = cls(meta["class_names"], meta["multi_label"], meta["l2"], meta["max_iter"], meta["calibrate"],
                   meta["seed"])
        tensors = load_file(str(folder / "head.safetensors"))
        head.weight, head.bias, head.prior_weight = tensors["weight"], tensors["bias"], tensors["prior_weight"]
        head.temperature, head.n_trained = meta["temperature"], meta["n_trained"]
        return head
