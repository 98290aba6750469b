"""Label audit on CIFAR-10 with synthetic label noise: does the audit find the wrong labels, and does fixing them help?

    python -m benchmarks.bench_audit --train-per-class 1000 --seeds 2

Features: EfficientNet-Lite0 at 128 px (benchmarks/cifar_features.py, through the shared embedding cache).
Noise: uniform (a label moves to any other class) and class-pair (cat<->dog, truck<->automobile,
deer<->horse, bird<->airplane; frog and ship are left alone) at 10 %, 20 % and 40 % of the items a kind
can touch. Rankers, all flagged and ranked by the same cleanlab calls:
  labelloop     labelers.audit.find_label_errors: out-of-fold head + k-NN vote (the shipped default)
  head only     the same with neighbour_weight=0
  anchor        cleanlab on out-of-fold probabilities of scikit-learn LogisticRegression (default settings, 5-fold)
  random        a random ranking (flags as many items as labelloop does)
Retraining: the project's head (labelers.head.ClassifierHead, default settings) trained on clean labels, on the
noisy labels, on the noisy labels with labelloop's flagged items removed, and with them replaced by its suggestion;
accuracy on the CIFAR-10 test images. "recovered" = (after - noisy) / (clean - noisy).
Writes benchmarks/results/audit.csv and the "audit" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from benchmarks.cifar_features import cifar_features
from benchmarks.results_file import write_section
from labelers.audit import find_label_errors
from labelers.sample_data import CIFAR10_CLASSES

PAIRS = (("cat", "dog"), ("truck", "automobile"), ("deer", "horse"), ("bird", "airplane"))
RATES = (0.1, 0.2, 0.4)
RESULTS_CSV = Path(__file__).with_name("results") / "audit.csv"


def add_noise(labels: np.ndarray, kind: str, rate: float, seed: int) -> np.ndarray:
    """Return a copy of ``labels`` with a ``rate`` share of the items each kind can touch flipped."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    if kind == "uniform":
        hit = rng.random(len(labels)) < rate
        noisy[hit] = (labels[hit] + rng.integers(1, 10, hit.sum())) % 10
        return noisy
    partner = np.arange(10)
    for a, b in PAIRS:
        ia, ib = CIFAR10_CLASSES.index(a), CIFAR10_CLASSES.index(b)
        partner[ia], partner[ib] = ib, ia
    hit = (rng.random(len(labels)) < rate) & (partner[labels] != labels)
    noisy[hit] = partner[labels[hit]]
    return noisy


def anchor_scores(features: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (quality, flagged) from cleanlab on scikit-learn LogisticRegression out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(max_iter=1000), features, noisy, cv=folds, method="predict_proba")
    return get_label_quality_scores(noisy, probs), find_label_issues(noisy, probs, n_jobs=1)


def ranking_scores(wrong: np.ndarray, quality: np.ndarray, flagged: np.ndarray) -> dict:
    """Return precision/recall/F1 of the flagged set, AUROC and precision@k (k = true wrong count, 500)."""
    from sklearn.metrics import roc_auc_score

    hits = int((flagged & wrong).sum())
    precision = hits / max(1, flagged.sum())
    recall = hits / max(1, wrong.sum())
    order = np.argsort(quality, kind="stable")
    return {"flagged": int(flagged.sum()), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if hits else 0.0,
            "auroc": roc_auc_score(wrong, -quality), "p@wrong": wrong[order[:wrong.sum()]].mean(),
            "p@500": wrong[order[:500]].mean()}


def head_accuracy(train_x, train_y, test_x, test_y) -> float:
    """Return the test accuracy of the project's head trained on (train_x, train_y)."""
    from labelers.head import ClassifierHead

    head = ClassifierHead(list(CIFAR10_CLASSES)).fit(train_x, train_y)
    return float((head.predict(test_x) == test_y).mean())


def one_setting(data, kind: str, rate: float, seed: int, clean_accuracy: float) -> list[dict]:
    """Return the rows (one per ranker) of one noise setting and seed."""
    x, y, tx, ty = data["features"], data["labels"], data["test_features"], data["test_labels"]
    noisy = add_noise(y, kind, rate, seed)
    wrong = noisy != y
    base = {"noise": kind, "rate": rate, "seed": seed, "actual_noise": wrong.mean()}
    rows = []
    start = time.perf_counter()
    audit = find_label_errors(x, noisy, CIFAR10_CLASSES, seed=seed)
    ours_s = time.perf_counter() - start
    noisy_accuracy = head_accuracy(x, noisy, tx, ty)
    keep = ~audit.flagged
    replaced = np.where(audit.flagged, audit.suggested, noisy)
    retrain = {"clean_acc": clean_accuracy, "noisy_acc": noisy_accuracy,
               "removed_acc": head_accuracy(x[keep], noisy[keep], tx, ty),
               "replaced_acc": head_accuracy(x, replaced, tx, ty)}
    rows.append({**base, "ranker": "labelloop", "seconds": ours_s, **ranking_scores(wrong, audit.quality, audit.flagged),
                 **retrain})
    head_only = find_label_errors(x, noisy, CIFAR10_CLASSES, neighbour_weight=0.0, seed=seed)
    rows.append({**base, "ranker": "head only", **ranking_scores(wrong, head_only.quality, head_only.flagged)})
    start = time.perf_counter()
    quality, flagged = anchor_scores(x, noisy, seed)
    rows.append({**base, "ranker": "anchor: sklearn LR + cleanlab", "seconds": time.perf_counter() - start,
                 **ranking_scores(wrong, quality, flagged)})
    rng = np.random.default_rng(seed + 1000)
    random_flag = np.zeros(len(y), bool)
    random_flag[rng.choice(len(y), audit.n_flagged, replace=False)] = True
    rows.append({**base, "ranker": "random", **ranking_scores(wrong, rng.random(len(y)), random_flag)})
    return rows


def table(results: pd.DataFrame) -> str:
    """Return the Markdown tables (ranking quality per ranker; retraining) as seed means."""
    metrics = ["actual_noise", "flagged", "precision", "recall", "f1", "auroc", "p@wrong", "p@500"]
    ranked = results.groupby(["noise", "rate", "ranker"], sort=False)[metrics].mean().reset_index()
    ours = results[results.ranker == "labelloop"].copy()
    for what in ("removed", "replaced"):
        ours[f"{what}_recovered"] = (ours[f"{what}_acc"] - ours.noisy_acc) / (ours.clean_acc - ours.noisy_acc)
    retrain_cols = ["clean_acc", "noisy_acc", "removed_acc", "replaced_acc", "removed_recovered",
                    "replaced_recovered", "seconds"]
    retrained = ours.groupby(["noise", "rate"], sort=False)[retrain_cols].mean().reset_index().rename(
        columns={"seconds": "audit_seconds"})
    return (ranked.to_markdown(index=False, floatfmt=".3f") + "\n\nRetraining the head after the audit "
            "(test accuracy; recovered = share of the accuracy the noise cost that came back):\n\n"
            + retrained.to_markdown(index=False, floatfmt=".3f"))


def write_results(results: pd.DataFrame, train_per_class: int, test_per_class: int, seeds: int) -> str:
    """Write the "audit" section of RESULTS.md from per-seed ``results``; return its tables."""
    text = table(results)
    command = (f"python -m benchmarks.bench_audit --train-per-class {train_per_class} --test-per-class "
               f"{test_per_class} --seeds {seeds}")
    write_section("audit", f"## Label audit on CIFAR-10 with synthetic noise\n\n`{command}`: EfficientNet-Lite0 "
                  f"128 px features, {10 * train_per_class} training images (audited), {10 * test_per_class} test "
                  f"images, means over {seeds} seeds (noise draws). Per-seed rows: "
                  f"`benchmarks/results/audit.csv`. What the numbers say: [docs/audit.md](../docs/audit.md#results)."
                  f"\n\n{text}")
    return text


def main(train_per_class: int = 1000, test_per_class: int = 200, seeds: int = 2, write: bool = True,
         tables_only: bool = typer.Option(False, help="Rewrite the RESULTS.md section from results/audit.csv.")) -> None:
    if tables_only:
        print(write_results(pd.read_csv(RESULTS_CSV), train_per_class, test_per_class, seeds))
        return
    path = cifar_features(train_per_class, test_per_class, 128)
    data = dict(np.load(path))
    clean_accuracy = head_accuracy(data["features"], data["labels"], data["test_features"], data["test_labels"])
    rows = []
    for kind in ("uniform", "pair"):
        for rate in RATES:
            for seed in range(seeds):
                rows += one_setting(data, kind, rate, seed, clean_accuracy)
                RESULTS_CSV.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(RESULTS_CSV, index=False)  # kept as it grows: a long run can be read early
                print(pd.DataFrame(rows[-4:])[["noise", "rate", "seed", "ranker", "precision", "recall", "auroc"]]
                      .to_string(index=False), flush=True)
    results = pd.DataFrame(rows)
    print(write_results(results, train_per_class, test_per_class, seeds) if write else table(results))


if __name__ == "__main__":
    typer.run(main)
