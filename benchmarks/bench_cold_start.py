"""Cold start on CIFAR-10 imported in class order: which tasks an annotator labels first, and what that buys.

    python -m benchmarks.bench_cold_start --seeds 10 --write

Pool: the first 200 training images of each CIFAR-10 class (2000), EfficientNet-Lite0 at 224 px (the
backend's fallback embedder; benchmarks/imagenet_logits.py keeps the pooled features in benchmarks/.work),
sorted by class, as a folder imported into Label Studio is. The annotator labels the n tasks with the lowest
score (n = 10, 20, 30), in three orders:
- ours: what the backend exports (backend.cold_start.coverage_order, seeded by the project id; seed = a
  different project id) for the first COLD_START_PER_LABEL x 10 = 20 tasks; after those the trained head
  takes over, so tasks 21-30 are the 10 lowest margin scores of the head trained on the first 20;
- ID order: tasks 1..n (what Label Studio shows when every score ties);
- random: a seeded permutation;
- margin of the untrained ImageNet-prior head: the prior's own uncertainty, the alternative to a cold-start
  order once labels have a prior (deterministic: one run).
Accuracy: a ClassifierHead (defaults) fitted on the n labelled tasks, on the other 2000 - n. With the
ImageNet prior (labels mapped through WordNet, as the backend does for EfficientNet-Lite0) unless the row
says otherwise. Mean over seeds (ID order has one).
"""
from __future__ import annotations

import shlex
import sys

import numpy as np
import typer

from backend.cold_start import coverage_order
from backend.heads import COLD_START_PER_LABEL
from labelers.head import ClassifierHead
from labelers.strategies import prediction_score

from .imagenet_logits import pooled_features
from .results_file import write_section


def load_pool(per_class: int):
    """Return (unit features, labels, class names) of the pool, sorted by class (stable)."""
    data = np.load(pooled_features("train", per_class, 224))
    pooled, labels = data["pooled"], data["labels"]
    order = np.argsort(labels, kind="stable")
    features = pooled[order] / np.linalg.norm(pooled[order], axis=1, keepdims=True)
    return features.astype(np.float32), labels[order], [str(c) for c in data["class_names"]]


def fit(features, labels, rows, names, prior) -> ClassifierHead:
    head = ClassifierHead(names)
    if prior is not None:
        head.init_from_prior(prior)
    return head.fit(features[rows], labels[rows])


def accuracy(head, features, labels, rows) -> float:
    rest = np.setdiff1d(np.arange(len(labels)), rows)
    return float((head.predict(features[rest]) == labels[rest]).mean())


def ours(features, labels, names, prior, n, seed) -> np.ndarray:
    """The first n tasks an annotator sorting by the backend's score labels (see the module docstring)."""
    switch = COLD_START_PER_LABEL * len(names)
    order = coverage_order(features, len(names), seed)
    if n <= switch:
        return order[:n]
    first = order[:switch]
    head = fit(features, labels, first, names, prior)
    score = prediction_score(head.predict_proba(features), "margin")
    score[first] = np.inf  # already labelled
    return np.concatenate([first, np.argsort(score, kind="stable")[: n - switch]])


def _mean_sd(values, fmt: str) -> str:
    """"mean +- sd over seeds", or the one value of a deterministic order."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(np.mean(values), fmt)} +- {format(np.std(values, ddof=1), fmt)}"


def report(seeds: int, per_class: int, budgets=(10, 20, 30)) -> str:
    from labelers.embedders import EfficientNetLite0Embedder
    from labelers.imagenet_prior import imagenet_prior

    features, labels, names = load_pool(per_class)
    prior = imagenet_prior(names, EfficientNetLite0Embedder(224, device="cpu"))
    orders = {"ours (cold-start order)": lambda n, s: ours(features, labels, names, prior, n, 1000 + s),
              "ID order": lambda n, s: np.arange(n),
              "random": lambda n, s: np.random.default_rng(s).permutation(len(labels))[:n],
              "margin of the untrained ImageNet-prior head": lambda n, s: np.argsort(
                  prediction_score(prior.proba(features), "margin"), kind="stable")[:n]}
    lines = ["## Cold start: CIFAR-10 imported in class order",
             "", f"Command: `{shlex.join(['python', '-m', 'benchmarks.bench_cold_start', *sys.argv[1:]])}`", "",
             f"Pool: {len(labels)} CIFAR-10 training images ({per_class} per class), EfficientNet-Lite0 224 px, "
             "sorted by class (task ids in class order). The first n tasks by ascending score are labelled; "
             "accuracy of the head on the other pool images. Ours: the backend's cold-start order for the first "
             f"{COLD_START_PER_LABEL * len(names)} (2 per label), then the margin scores of the head trained on "
             f"them. Mean +- sd over {seeds} seeds (project ids for ours; ID order and the prior's margin are one run each). Head with the "
             "WordNet/ImageNet prior, as the backend serves it.", "",
             "| order | n | classes covered (of 10) | accuracy |", "|---|---|---|---|"]
    picked = {}
    for name, pick in orders.items():
        for n in budgets:
            runs = [pick(n, s) for s in range(seeds if name.startswith(("ours", "random")) else 1)]
            picked[name, n] = runs
            covered = [len(set(labels[r].tolist())) for r in runs]
            acc = [accuracy(fit(features, labels, r, names, prior), features, labels, r) for r in runs]
            lines.append(f"| {name} | {n} | {_mean_sd(covered, '.1f')} | {_mean_sd(acc, '.1%')} |")
    lines += ["", "| order | n | no prior (zero init) | with ImageNet prior |", "|---|---|---|---|"]
    for name in ("ours (cold-start order)", "ID order", "random"):
        for n in (10, 20):
            runs = picked[name, n]
            cells = [_mean_sd([accuracy(fit(features, labels, r, names, p), features, labels, r) for r in runs],
                              ".1%") for p in (None, prior)]
            lines.append(f"| {name} | {n} | {cells[0]} | {cells[1]} |")
    zero = float((prior.proba(features).argmax(axis=1) == labels).mean())
    lines += ["", f"Zero-shot (no annotation) accuracy on the pool: ImageNet prior {zero:.1%}, uniform prior 10.0 % "
              f"(labels with a prior: {', '.join(prior.matched)}; without: "
              f"{', '.join(n for n in names if n not in prior.matched)})."]
    return "\n".join(lines)


def main(seeds: int = 10, per_class: int = 200, write: bool = False) -> None:
    text = report(seeds, per_class)
    print(text)
    if write:
        write_section("bench_cold_start", text)


if __name__ == "__main__":
    typer.run(main)
