"""Active learning on real images: CIFAR-10, EfficientNet-Lite0 features, every strategy vs random.

    python -m benchmarks.bench_active_learning [--seeds 10]

Pool: the first 1000 training images per class (10 000); test: the first 300 test images per class
(3 000, never queried, never re-drawn). Features: EfficientNet-Lite0 ImageNet weights at 128 px,
mean-pooled, L2-normalised (benchmarks/cifar_features.py). Two schedules, both paired (each seed's
initial pool is shared by all strategies):
  mid budget: 20 random initial labels, then 20 rounds of 40 (up to 820 labels);
  low budget: 10 initial labels, then 2 rounds of 5 (<= 2 labels per class).
Writes benchmarks/results/al_<schedule>/{curves.csv,curves.png,summary.csv,paired_gaps.csv}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from labelers.datasets import load_feature_npz
from labelers.learning_curves import paired_gaps, plot_curves, summarize
from labelers.simulate import SimulationSettings, simulate

from .cifar_features import cifar_features

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "margin", "entropy", "least", "margin+kmeans", "margin+balance")
SCHEDULES = {
    "mid": dict(initial=20, batch_size=40, rounds=20),
    "low": dict(initial=10, batch_size=5, rounds=2),
}


def run_schedule(name: str, seeds: int, l2: float) -> tuple:
    dataset = load_feature_npz(cifar_features(1000, 300, 128))
    settings = SimulationSettings(STRATEGIES, seeds=seeds, l2=l2, **SCHEDULES[name])
    curves = simulate(dataset, settings)
    out = RESULTS / f"al_{name}"
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "curves.csv", index=False)
    plot_curves(curves, out / "curves.png", title=f"CIFAR-10, EfficientNet-Lite0 features, {seeds} seeds")
    summary, gaps = summarize(curves), paired_gaps(curves)
    summary.to_csv(out / "summary.csv")
    gaps.to_csv(out / "paired_gaps.csv", index=False)
    return summary, gaps


def main(seeds: int = 10, l2: float = 100.0) -> None:
    for name in SCHEDULES:
        summary, gaps = run_schedule(name, seeds, l2)
        print(f"\n## schedule {name}\n")
        print(summary.round(4).to_markdown())
        low = gaps[gaps["n_labeled"] <= 20]
        print("\npaired accuracy gap to random at <= 2 labels per class:\n")
        print(low.round(4).to_markdown(index=False))
    np.set_printoptions(precision=4)


if __name__ == "__main__":
    typer.run(main)
