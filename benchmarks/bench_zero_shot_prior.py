"""The ImageNet zero-shot prior on CIFAR-10: zero-shot accuracy, and accuracy after 10 to 500 annotations.

    python -m benchmarks.bench_zero_shot_prior --seeds 20 --budgets 10,20,100,500 --write

Images: the 10 000 CIFAR-10 test images, EfficientNet-Lite0 at 224 px (benchmarks/imagenet_logits.py keeps
the un-normalised pooled features in benchmarks/.work; about 25 min on one busy core the first time).
Labels: the ten CIFAR-10 class names, mapped onto ImageNet through WordNet (labelers/imagenet_prior.py);
"deer" has no ImageNet class and keeps the uniform prior.
Zero-shot rows: the library's prior (unit features times FEATURE_SCALE, mean over a label's classes), the
same on the exact un-normalised features, and two pooling rules it does not use (sum; unmatched labels
sharing the mass of classes of no label). Annotation rows: n images drawn at random from the 10 000
(seeded), a ClassifierHead (defaults) fitted with and without the prior, accuracy on the other images;
mean and 95 % t-interval over seeds.
"""
from __future__ import annotations

import shlex
import sys

import numpy as np
import typer
from scipy import stats

from labelers.head import ClassifierHead
from labelers.imagenet_prior import FEATURE_SCALE, imagenet_prior
from labelers.priors import label_probabilities

from .imagenet_logits import pooled_features
from .results_file import write_section


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sum_rule(q, a):
    """Ablation: sum over a label's classes (not the mean); unmatched labels keep 1/K."""
    k, matched = len(a), a.sum(axis=1) > 0
    out = np.full((len(q), k), 1.0 / k)
    mass = q @ a[matched].T
    out[:, matched] = matched.sum() / k * mass / mass.sum(axis=1, keepdims=True)
    return out


def _rest_rule(q, a):
    """Ablation: mean rule, unmatched labels scored by the mean of the classes that belong to no label."""
    matched, free = a.sum(axis=1) > 0, a.sum(axis=0) == 0
    score = np.empty((len(q), len(a)))
    score[:, matched] = (q @ a[matched].T) / a[matched].sum(axis=1)
    score[:, ~matched] = q[:, free].mean(axis=1, keepdims=True)
    return score / score.sum(axis=1, keepdims=True)


def _scores(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean log-likelihood of the true label); ties count as a fraction, as uniform's 10 %."""
    top = probs.max(axis=1, keepdims=True)
    winners = np.isclose(probs, top, rtol=1e-9, atol=0)
    accuracy = float((winners[np.arange(len(labels)), labels] / winners.sum(axis=1)).mean())
    return accuracy, float(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1)).mean())


def zero_shot_rows(pooled, features, labels, prior) -> list[tuple[str, float, float]]:
    """Return (name, accuracy, mean log-likelihood) rows for the uniform prior and the prior variants."""
    k = len(prior.label_names)
    exact = _softmax((pooled @ prior.weight.T + prior.bias).astype(np.float64))
    library = _softmax(prior.source_logits(features).astype(np.float64))
    a = prior.aggregation
    return [
        ("uniform prior", *_scores(np.full((len(labels), k), 1.0 / k), labels)),
        (f"ImageNet prior (library: unit features x {prior.feature_scale:g}, mean rule)",
         *_scores(label_probabilities(library, a), labels)),
        ("ImageNet prior on exact un-normalised features", *_scores(label_probabilities(exact, a), labels)),
        ("ablation: sum over a label's classes", *_scores(_sum_rule(library, a), labels)),
        ("ablation: unmatched labels scored by classes of no label", *_scores(_rest_rule(library, a), labels)),
    ]


def annotation_rows(features, labels, prior, budgets, seeds) -> list[tuple[int, str, float, float]]:
    """Return (annotations, head, mean accuracy on the other images, 95 % half-width) rows."""
    names = prior.label_names
    rows = []
    for n in budgets:
        for with_prior in (False, True):
            accs = []
            for seed in range(seeds):
                order = np.random.default_rng(seed).permutation(len(labels))
                train, test = order[:n], order[n:]
                head = ClassifierHead(names, seed=seed)
                if with_prior:
                    head.init_from_prior(prior)
                head.fit(features[train], labels[train])
                accs.append(float((head.predict(features[test]) == labels[test]).mean()))
            half = stats.t.ppf(0.975, seeds - 1) * np.std(accs, ddof=1) / np.sqrt(seeds) if seeds > 1 else 0.0
            rows.append((n, "with ImageNet prior" if with_prior else "no prior (zero init)", float(np.mean(accs)),
                         float(half)))
    return rows


def precheck_rows(probs: np.ndarray, labels: np.ndarray, floors=(0.5, 0.7)) -> list[str]:
    """Markdown rows: for each pre-check floor, the share of images an untrained head pre-checks, how many of
    those are right, and the mean probability it states (honest when the two agree)."""
    top, choice = probs.max(axis=1), probs.argmax(axis=1)
    rows = []
    for floor in floors:
        shown = top >= floor
        right = (choice[shown] == labels[shown]).mean() if shown.any() else float("nan")
        rows.append(f"| {floor:g} | {shown.mean():.1%} | {right:.1%} | {top[shown].mean():.2f} |")
    return rows


def report(seeds: int, budgets: tuple[int, ...], per_class: int = 1000) -> str:
    """Run the benchmark and return its Markdown section."""
    from labelers.embedders import EfficientNetLite0Embedder

    data = np.load(pooled_features("test", per_class, 224))
    pooled, labels, class_names = data["pooled"], data["labels"], [str(c) for c in data["class_names"]]
    norms = np.linalg.norm(pooled, axis=1)
    features = (pooled / norms[:, None]).astype(np.float32)
    prior = imagenet_prior(class_names, EfficientNetLite0Embedder(224, device="cpu"))
    lines = [
        "## Zero-shot prior without CLIP (EfficientNet-Lite0's ImageNet classes through WordNet)",
        "",
        f"Command: `{shlex.join(['python', '-m', 'benchmarks.bench_zero_shot_prior', *sys.argv[1:]])}`",
        "",
        f"CIFAR-10 test set ({len(labels)} images), EfficientNet-Lite0 at 224 px. Labels with an ImageNet "
        f"class: {', '.join(prior.matched)}; without: "
        f"{', '.join(n for n in class_names if n not in prior.matched)} (uniform share). Pooled-feature norm "
        f"{norms.mean():.2f} +- {norms.std():.2f} (FEATURE_SCALE = {FEATURE_SCALE:g}).",
        "",
        "| zero-shot (no annotation) | accuracy | mean log-likelihood of the true label |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {acc:.1%} | {ll:.3f} |" for name, acc, ll in zero_shot_rows(pooled, features, labels, prior)]
    probs = label_probabilities(_softmax(prior.source_logits(features).astype(np.float64)), prior.aggregation)
    per_class = [(probs.argmax(axis=1)[labels == c] == c).mean() for c in range(len(class_names))]
    lines += ["", "Per-class zero-shot accuracy (library prior): "
              + ", ".join(f"{n} {a:.0%}" for n, a in zip(class_names, per_class)), ""]
    lines += ["| pre-check floor (r0, backend.heads.PRIOR_PRECHECK) | images pre-checked | of those right "
              "| mean stated probability |", "|---|---|---|---|", *precheck_rows(probs, labels), ""]
    lines += [f"| annotations (random, {seeds} seeds) | head | accuracy on the other images | 95 % CI |",
              "|---|---|---|---|"]
    lines += [f"| {n} | {name} | {acc:.1%} | +- {half:.1%} |"
              for n, name, acc, half in annotation_rows(features, labels, prior, budgets, seeds)]
    return "\n".join(lines)


def main(seeds: int = 20, budgets: str = "10,20,100,500", per_class: int = 1000, write: bool = False) -> None:
    text = report(seeds, tuple(int(b) for b in budgets.split(",")), per_class)
    print(text)
    if write:
        write_section("bench_zero_shot_prior", text)


if __name__ == "__main__":
    typer.run(main)
