"""The classifier head: a linear layer on frozen, L2-normalised embeddings.

It behaves like a scikit-learn estimator (settings in the constructor, `fit` learns, `predict_proba` is pure).
Training is L2-regularised logistic regression pulled towards a prior, so a class with no example yet keeps
its prior instead of vanishing. Two kinds of prior:
- `init_from_text`: zero-shot text weights (CLIP): the prior is a point in weight space, (W, b) is pulled to it;
- `init_from_prior`: label probabilities p(x) from another classifier (EfficientNet-Lite0's ImageNet classes
  mapped to the labels, `labelers.imagenet_prior`): not linear in the features, so it enters as a fixed logit
  offset, logits = g * log p(x) + x W^T + b (sigmoid heads: the log-odds of p), with (W, b) pulled to zero
  and the gain g to 1. Untrained, the head predicts p(x); labels correct it, and can turn g down when the
  prior is wrong.
Without either, the prior is zero (uniform probabilities). Probabilities are calibrated by a temperature
fitted on cross-validated logits once there are enough labels.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_info, threadpool_limits

from .priors import ClassifierPrior

MIN_LABELS_TO_CALIBRATE = 30
# Gradient tolerance of the calibration folds' fits (the full fit uses 1e-6): their logits only set one temperature.
FOLD_GTOL = 1e-4
# From this many labels the cheap calibration fits one fold (a held-out third: >= 1000 logits), not all.
HELD_OUT_ONLY_FROM = 3000
# A warm-started fit stops once its largest gradient component is this fraction of the one it started from
# (the previous head's distance to the new optimum), within [1e-6 (the cold fit's), WARM_GTOL_MAX]: a retrain
# after 1 % more labels is then 100x nearer its optimum than the previous head was, and one from a far
# previous head still stops no looser than WARM_GTOL_MAX (probabilities within ~1e-3 of the cold fit's).
WARM_GTOL_RELATIVE = 1e-2
WARM_GTOL_MAX = 1e-5


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
        self.prior: ClassifierPrior | None = None  # a label-probability prior, entering as a logit offset
        self.prior_gain = 1.0
        self.temperature = 1.0
        self.n_trained = 0
        # Objective evaluations of each L-BFGS solve of the last fit (the full fit, then any calibration folds):
        # what a fit cost (benchmarks/bench_speed.py and the warm-start tests read it).
        self.solver_evaluations: list[int] = []

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
        self.prior = None
        return self

    def init_from_prior(self, prior: ClassifierPrior) -> "ClassifierHead":
        """Use label probabilities `prior.proba(features)` (N, K) as prior: see the module docstring.

        Raises ValueError when the prior's labels are not this head's classes, in order."""
        if list(prior.label_names) != self.class_names:
            raise ValueError(f"the prior is for labels {prior.label_names}, the head has {self.class_names}")
        dim = prior.weight.shape[1]
        self.prior, self.prior_gain = prior, 1.0
        self.prior_weight = torch.zeros(self.n_classes, dim)
        self.weight, self.bias = self.prior_weight.clone(), torch.zeros(self.n_classes)
        return self

    def _offset(self, x: np.ndarray, prior_probs: np.ndarray | None = None) -> np.ndarray:
        """Return the prior's logit offset (N, K) for features x: log p (softmax) or log-odds (sigmoid); 0 without.
        `prior_probs`: `self.prior.proba(x)` when the caller already has it (a serving cache), else computed."""
        if self.prior is None:
            return np.zeros((len(x), self.n_classes))
        p = self.prior.proba(x) if prior_probs is None else prior_probs
        return np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-6)) if self.multi_label else np.log(p)

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

    def _training_problem(self, x: np.ndarray, y: np.ndarray, init: tuple | None = None, dtype=np.float64):
        """Return (objective, start, to_raw): the exact problem `_solve` hands to L-BFGS.

        `objective(theta)` returns (loss, gradient) of mean NLL + l2/(2N) * ||(W, b, g) - prior||^2 for the
        flat parameter vector theta = (W.ravel(), b[, g]) (the gain g of the prior offset only when the head
        has a label-probability prior, pulled to 1); `start` is the prior, or `init` = (weight, bias, gain) on
        raw features (a warm start: the same problem, a nearer starting point); `to_raw(theta)` maps a solution
        back to (weight, bias, gain) acting on raw features. Kept apart from `_solve` so the gradient can be
        checked against the loss by finite differences. `dtype` float32 halves the cost of the two products
        with the features per evaluation (used for the calibration folds, whose logits need no more).

        The problem is posed on centred features divided by their per-coordinate RMS: mean-pooled CNN
        features share a large common direction that makes the raw problem ill-conditioned (3-10x more
        iterations), and in these units one `l2` suits 10 or 10 000 labels (measured on CIFAR-10).
        """
        self._ensure_init(x.shape[1])
        offset = self._offset(x).astype(dtype)  # on raw features, before the change of units below
        center = x.mean(axis=0, dtype=np.float64)
        # One new array in `dtype`, then in place: at 10k x 1280 every pass over x counts.
        x = np.subtract(x, center.astype(dtype), dtype=dtype)
        flat = x.reshape(-1)  # a view: the sum of squares as one BLAS dot, without a squared copy of x
        scale = float(np.sqrt(float(np.dot(flat, flat)) / x.size)) or 1.0  # per-coordinate RMS
        x *= dtype(1.0 / scale)
        prior = self.prior_weight.numpy().astype(np.float64) * scale  # same function in the new units
        # The bias is penalised too: otherwise a class with no example yet has its bias driven to -inf,
        # its probability to ~0, and uncertainty sampling can never discover it.
        prior_bias = prior @ center / scale
        k, d = prior.shape
        n = len(x)
        target = (y if self.multi_label else np.eye(k)[y]).astype(dtype)
        strength = self.l2 / n  # a fixed prior against a summed likelihood: fades as labels grow
        with_gain = self.prior is not None
        # Rows per block: both products with a block of x run while it is in cache, so each evaluation reads
        # the features from memory once instead of twice (they are memory-bound: K is small).
        rows = max(16, (1 << 20) // (x.itemsize * d))

        def objective(theta):
            weight, bias = theta[:k * d].reshape(k, d), theta[k * d:k * d + k]
            gain = theta[-1] if with_gain else 0.0
            weight_t, bias_x = weight.T.astype(dtype), bias.astype(dtype)
            grad_weight, grad_bias, grad_gain, nll = np.zeros((k, d)), np.zeros(k), 0.0, 0.0
            for start in range(0, n, rows):
                block, stop = x[start:start + rows], min(start + rows, n)
                logits = block @ weight_t + bias_x
                if with_gain:
                    logits += dtype(gain) * offset[start:stop]
                nll += self._nll(logits, y[start:stop]) * (stop - start)
                # d(mean NLL)/d(logits) is (p - target) / N in both modes: for multi-label `_nll` sums the K
                # per-class losses, so no extra factor K belongs here.
                residual = (self._probabilities(logits) - target[start:stop]) / n
                grad_weight += residual.T @ block
                grad_bias += residual.sum(axis=0)
                if with_gain:
                    grad_gain += float((residual * offset[start:stop]).sum())
            delta, bias_delta = weight - prior, bias - prior_bias
            penalty = float((delta ** 2).sum() + (bias_delta ** 2).sum())
            grads = [(grad_weight + strength * delta).ravel(), grad_bias + strength * bias_delta]
            if with_gain:
                penalty += (gain - 1.0) ** 2
                grads.append([grad_gain + strength * (gain - 1.0)])
            loss = nll / n + 0.5 * strength * penalty
            return loss, np.concatenate(grads)

        def to_raw(theta):
            weight = theta[:k * d].reshape(k, d) / scale
            bias = theta[k * d:k * d + k] - weight @ center
            return weight, bias, (float(theta[-1]) if with_gain else 1.0)

        if init is None:
            start = np.concatenate([prior.ravel(), prior_bias] + ([[self.prior_gain]] if with_gain else []))
        else:  # to_raw inverted: W_units = W * scale, b_units = b + W @ center
            weight, bias, gain = (np.asarray(v, np.float64) for v in init)
            start = np.concatenate([(weight * scale).ravel(), bias + weight @ center] + ([[gain]] if with_gain else []))
        return objective, start, to_raw

    def _solve(self, x: np.ndarray, y: np.ndarray, init: tuple | None = None, gtol: float = 1e-6,
               dtype=np.float64, relative_gtol: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Fit (weight, bias, prior gain) by L-BFGS with the analytic gradient (convex, deterministic), from the
        prior or from `init` (see `_training_problem`). It stops when the largest gradient component is below
        `gtol`, or with `relative_gtol` below that fraction of the one at the start (clipped to [gtol, WARM_GTOL_MAX]).

        NumPy + SciPy, not autograd: for a linear head the per-step overhead dominates.
        """
        from scipy.optimize import minimize

        objective, start, to_raw = self._training_problem(x, y, init, dtype)
        # One BLAS thread: training runs beside request serving, and multi-threaded BLAS spinning on
        # small products made a 100-label fit 50x slower on a busy 2-core machine.
        with one_blas_thread():
            if relative_gtol is not None:
                (_, gradient), objective = _evaluated_at_start(objective, start)
                gtol = min(max(gtol, relative_gtol * float(np.abs(gradient).max())), max(gtol, WARM_GTOL_MAX))
            result = minimize(objective, start, jac=True, method="L-BFGS-B",
                              options={"maxiter": self.max_iter, "gtol": gtol})
        self.solver_evaluations.append(int(result.nfev))
        weight, bias, gain = to_raw(result.x)
        return weight.astype(np.float32), bias.astype(np.float32), gain

    def fit(self, features: np.ndarray, labels, warm_start: "ClassifierHead | None" = None) -> "ClassifierHead":
        """Train on embeddings (N, D) and class indices (N,) or multi-hot (N, K); returns self.

        `warm_start`: a trained head for the same classes and features (the version being replaced): L-BFGS
        starts from its weights instead of the prior. The problem, and so the solution, is the same (to the
        tolerance WARM_GTOL_RELATIVE sets); a retrain after a few more labels needs far fewer steps. Raises
        ValueError for a head of other classes or width.
        """
        x = np.asarray(features, np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError("fit needs a non-empty (N, D) feature matrix")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values (an image that failed to embed?)")
        y = self._targets(labels)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self._ensure_init(x.shape[1])
        init = self._warm_start_point(warm_start, x.shape[1])
        self.solver_evaluations = []
        # A warm start stops at a tolerance relative to how far the previous head was from the new optimum.
        # Still float64: solved in float32 (half the cost per evaluation) it stalled short of that tolerance on
        # some problems and took 2-5x the evaluations.
        weight, bias, self.prior_gain = self._solve(x, y) if init is None else \
            self._solve(x, y, init, relative_gtol=WARM_GTOL_RELATIVE)
        self.temperature = self._cross_validated_temperature(x, y, (weight, bias, self.prior_gain)) \
            if self.calibrate else 1.0
        self.weight, self.bias = torch.from_numpy(weight), torch.from_numpy(bias)
        self.n_trained = len(x)
        return self

    def accepts_warm_start(self, other: "ClassifierHead") -> bool:
        """True when `fit(..., warm_start=other)` can start from `other`: the same classes, kind of prior and
        (once known) feature width."""
        return (other.class_names == self.class_names and other.multi_label == self.multi_label
                and other.weight is not None and (other.prior is None) == (self.prior is None)
                and (self.weight is None or other.weight.shape[1] == self.weight.shape[1]))

    def _warm_start_point(self, other: "ClassifierHead | None", dim: int) -> tuple | None:
        """Return (weight, bias, gain) of `other` to start from, or None; raises ValueError when it does not fit."""
        if other is None or other.weight is None or other.n_trained == 0:
            return None  # nothing learnt yet: the prior is the start
        if not self.accepts_warm_start(other) or other.weight.shape[1] != dim:
            raise ValueError(f"cannot warm-start from a head for classes {other.class_names} ({other.weight.shape[1]}-d"
                             f"{', with a prior' if other.prior is not None else ''}); this head has "
                             f"{self.class_names} on {dim}-d features")
        return other.weight.numpy(), other.bias.numpy(), other.prior_gain

    def _cross_validated_temperature(self, x: np.ndarray, y: np.ndarray, fitted: tuple | None = None,
                                     folds: int = 3) -> float:
        """Fit one temperature on held-out logits of a k-fold split (1.0 when there are too few labels).

        With the full fit `fitted` = (weight, bias, gain), each fold starts from it (the fold's optimum is
        near) and solves in float32 to FOLD_GTOL: a temperature is one scalar fitted on many logits and does
        not need the folds solved to the last digit; from HELD_OUT_ONLY_FROM labels only the first fold is
        fitted (a held-out third). Without, each fold is solved from the prior in float64 to
        the full fit's tolerance (the reference the tests and benchmarks/bench_speed.py compare against).
        """
        from scipy.optimize import minimize_scalar

        if len(x) < MIN_LABELS_TO_CALIBRATE:
            return 1.0
        order = np.random.default_rng(self.seed).permutation(len(x))
        if not self.multi_label and len(np.unique(y)) < 2:
            return 1.0
        held = []
        offset = self._offset(x)
        with one_blas_thread():
            # With many labels one held-out third gives the temperature plenty of logits: one refit, not `folds`.
            for fold in range(1 if fitted is not None and len(x) >= HELD_OUT_ONLY_FROM else folds):
                test = order[fold::folds]
                train = np.setdiff1d(order, test)
                weight, bias, gain = (self._solve(x[train], y[train]) if fitted is None else
                                      self._solve(x[train], y[train], fitted, gtol=FOLD_GTOL, dtype=np.float32))
                held.append((test, x[test] @ weight.T + bias + gain * offset[test]))
        rows = np.concatenate([t for t, _ in held])
        logits, targets = np.concatenate([l for _, l in held]), y[rows]
        best = minimize_scalar(lambda log_t: self._nll(logits / np.exp(log_t), targets),
                               bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        return float(np.exp(best.x))

    def logits(self, features: np.ndarray, prior_probs: np.ndarray | None = None) -> np.ndarray:
        """Return calibrated logits (N, K). `prior_probs`: the prior's `proba(features)` (N, K) when the caller
        already holds it (the backend caches it per image), so the prior's product is skipped."""
        x = np.asarray(features, np.float32)
        self._ensure_init(x.shape[1])
        # NumPy, not torch: for these small products torch's intra-op threads, entered from 8 concurrent /predict
        # requests at once, contended and took a third of each request (py-spy; benchmarks/bench_speed.py).
        linear = (x @ self.weight.numpy().T + self.bias.numpy()).astype(np.float64)
        if self.prior is not None:
            linear = linear + self.prior_gain * self._offset(x, prior_probs)
        return (linear / self.temperature).astype(np.float32)

    def predict_proba(self, features: np.ndarray, prior_probs: np.ndarray | None = None) -> np.ndarray:
        """Return class probabilities (N, K) float32: softmax rows, or independent sigmoids for multi-label.
        `prior_probs`: as for `logits`."""
        from scipy.special import expit, softmax

        logits = self.logits(features, prior_probs)
        return expit(logits) if self.multi_label else softmax(logits, axis=1)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return the most probable class index per row."""
        return self.predict_proba(features).argmax(axis=1)

    def save(self, folder: str | Path) -> Path:
        """Write weights (safetensors) and settings (JSON) into `folder`; returns it."""
        if self.weight is None:
            raise ValueError("nothing to save: the head has no weights yet")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous(),
                   "prior_weight": self.prior_weight.contiguous()}
        if self.prior is not None:
            tensors.update({f"prior.{name}": t.contiguous() for name, t in self.prior.tensors().items()})
        save_file(tensors, str(folder / "head.safetensors"))
        meta = {"class_names": self.class_names, "multi_label": self.multi_label, "l2": self.l2,
                "max_iter": self.max_iter, "calibrate": self.calibrate, "seed": self.seed,
                "temperature": self.temperature, "n_trained": self.n_trained, "format": 1,
                "prior": self.prior.meta() if self.prior is not None else None, "prior_gain": self.prior_gain}
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
        if meta.get("prior"):  # heads saved before label-probability priors have none
            head.prior = ClassifierPrior.from_saved(
                {name[len("prior."):]: t for name, t in tensors.items() if name.startswith("prior.")}, meta["prior"])
            head.prior_gain = float(meta.get("prior_gain", 1.0))
        return head


def _evaluated_at_start(objective, start: np.ndarray):
    """Return (objective(start), the objective with that value served for L-BFGS's own first evaluation at
    `start`): the caller reads the starting gradient, and the point is evaluated once, not twice."""
    first, served = objective(start), []

    def wrapped(theta):
        if not served and np.array_equal(theta, start):
            served.append(True)
            return first
        return objective(theta)

    return first, wrapped


def one_blas_thread():
    """Return a context with the BLAS libraries on one thread. When they already are (the backend sets it for
    the whole process), a no-op: threadpoolctl's limits are process-wide and restored on exit, so a fit that
    ended after another part of the process changed them would put back a stale value."""
    if all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas"):
        return nullcontext()
    return threadpool_limits(1)
