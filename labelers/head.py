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

MIN_LABELS_TO_CALIBRATE = 30


class ClassifierHead:
    """Linear softmax (or sigmoid, for multi-label) classifier over embeddings."""

    def __init__(self, class_names: Sequence[str], multi_label: bool = False, l2: float = 1e-3,
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

    def _targets(self, labels) -> torch.Tensor:
        labels = np.asarray(labels)
        if self.multi_label:
            if labels.ndim != 2 or labels.shape[1] != self.n_classes:
                raise ValueError(f"multi-label targets must be (N, {self.n_classes}) multi-hot")
            return torch.as_tensor(labels, dtype=torch.float32)
        if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= self.n_classes)):
            raise ValueError(f"labels must be class indices in [0, {self.n_classes})")
        return torch.as_tensor(labels, dtype=torch.long)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        return torch.nn.functional.cross_entropy(logits, targets)

    def _solve(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-batch L-BFGS on mean loss + l2/2 * ||W - prior||^2 (convex, so deterministic)."""
        weight = self.prior_weight.clone().requires_grad_(True)
        bias = torch.zeros(self.n_classes, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-6)

        def closure():
            optimizer.zero_grad()
            loss = self._loss(x @ weight.T + bias, y) + 0.5 * self.l2 * (weight - self.prior_weight).pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return weight.detach(), bias.detach()

    def fit(self, features: np.ndarray, labels) -> "ClassifierHead":
        """Train on embeddings (N, D) and class indices (N,) or multi-hot (N, K); returns self."""
        x = torch.as_tensor(np.asarray(features, np.float32))
        if x.ndim != 2 or len(x) == 0:
            raise ValueError("fit needs a non-empty (N, D) feature matrix")
        y = self._targets(labels)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self._ensure_init(x.shape[1])
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.temperature = self._cross_validated_temperature(x, y) if self.calibrate else 1.0
            self.weight, self.bias = self._solve(x, y)
        self.n_trained = len(x)
        return self

    def _cross_validated_temperature(self, x: torch.Tensor, y: torch.Tensor, folds: int = 3) -> float:
        """Fit one temperature on held-out logits of a k-fold split (1.0 when there are too few labels)."""
        if len(x) < MIN_LABELS_TO_CALIBRATE:
            return 1.0
        order = torch.randperm(len(x))
        held_logits, held_targets = [], []
        for fold in range(folds):
            test = order[fold::folds]
            train = torch.ones(len(x), dtype=torch.bool)
            train[test] = False
            weight, bias = self._solve(x[train], y[train])
            held_logits.append(x[test] @ weight.T + bias)
            held_targets.append(y[test])
        logits, targets = torch.cat(held_logits), torch.cat(held_targets)
        log_t = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = self._loss(logits / log_t.exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
        return float(log_t.exp().clamp(0.05, 20.0))

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
