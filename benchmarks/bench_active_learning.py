"""Active learning on real images: CIFAR-10, EfficientNet-Lite0 features, every strategy vs random.

    python -m benchmarks.bench_active_learning --seeds 10 --train-per-class 1000 --write

Pool: the first `train-per-class` training images per class; test: the first 300 test images per class
(never queried, never re-drawn). Features: EfficientNet-Lite0 ImageNet weights at 128 px, mean-pooled,
L2-normalised (benchmarks/cifar_features.py). Two schedules, both paired (each seed's initial pool is
shared by all strategies):
  mid budget: 20 random initial labels, then 20 rounds of 40 (up to 820 labels);
  low budget: 10 initial labels, then 2 rounds of 5 (<= 2 labels per class).
Writes benchmarks/results/al_<schedule>_<pool>/{curves.csv,curves.png,summary.csv,paired_gaps.csv}.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pandas as pd
import typer

from labelers.datasets import load_feature_npz
from labelers.learning_curves import paired_gaps, plot_curves, summarize
from labelers.simulate import SimulationSettings, simulate

from .cifar_features import cifar_features
from .results_file import write_section

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "margin", "entropy", "least", "margin+kmeans", "margin+balance")
SCHEDULES = {
    "mid": dict(initial=20, batch_size=40, rounds=20),
    "low": dict(initial=10, batch_size=5, rounds=2),
}


def run_schedule(name: str, seeds: int, per_class: int, l2: float,
                 reuse: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Simulate one schedule (or, with reuse, read its saved curves); return (summary, paired gaps, folder)."""
    out = RESULTS / f"al_{name}_{per_class * 10}"
    if reuse and (out / "curves.csv").exists():
        curves = pd.read_csv(out / "curves.csv")
    else:
        dataset = load_feature_npz(cifar_features(per_class, 300, 128))
        settings = SimulationSettings(STRATEGIES, seeds=seeds, l2=l2, **SCHEDULES[name])
        curves = simulate(dataset, settings)
        out.mkdir(parents=True, exist_ok=True)
        curves.to_csv(out / "curves.csv", index=False)
        plot_curves(curves, out / "curves.png",
                    title=f"CIFAR-10 ({per_class * 10} pool), EfficientNet-Lite0 features, {seeds} seeds")
    summary, gaps = summarize(curves), paired_gaps(curves)
    summary.to_csv(out / "summary.csv")
    gaps.to_csv(out / "paired_gaps.csv", index=False)
    return summary, gaps, out


def section(results: dict, command: str, seeds: int, per_class: int) -> str:
    """Markdown for RESULTS.md from {schedule: (summary, gaps, folder)}."""
    lines = [f"## Active learning on CIFAR-10 (`benchmarks/bench_active_learning.py`)", "",
             f"Command: `{command}`. Pool {per_class * 10} training images, fixed test set 3000, "
             f"EfficientNet-Lite0 @128 px features, linear head (`ClassifierHead`, l2 prior), {seeds} seeds, "
             "paired initial pools. AULC is normalized (mean accuracy over the budget range); gains are "
             "paired per seed with 95 % t-intervals. `label ratio at mid` = labels the strategy needs to reach "
             "random's accuracy at the mid budget, divided by that budget (target <= 0.67).", ""]
    for name, (summary, gaps, folder) in results.items():
        rel = folder.relative_to(RESULTS.parent)
        lines += [f"### {name} budget: {SCHEDULES[name]}", "", summary.round(4).to_markdown(), "",
                  f"Curves: [{rel}/curves.png]({rel}/curves.png), data in `{rel}/`.", ""]
        initial = SCHEDULES[name]["initial"]  # identical for all strategies by design: not evidence
        low = gaps[(gaps["n_labeled"] <= 20) & (gaps["n_labeled"] > initial) & (gaps["strategy"] != "random")]
        if low.empty:
            continue
        worst = low.assign(upper=low["gap"] + low["gap_ci"]).sort_values("upper").iloc[0]
        lines += [f"At <= 2 labels per class the least favourable paired gap to random is "
                  f"{worst['gap']:+.4f} ± {worst['gap_ci']:.4f} ({worst['strategy']}, {int(worst['n_labeled'])} labels).",
                  ""]
    return "\n".join(lines)


# Measured while tuning (4 seeds, 20 + 12 x 40 labels, 10k pool; scripts in the commit history).
WHY = ["## Active learning: why the 0.67x target is not reached, and what was changed", "",
       "- The features cap what any query strategy can win: a linear head on all 10 000 pool images reaches "
       "77.3 % test accuracy, so about a quarter of CIFAR-10 is not linearly separable in this space "
       "(most confused pairs: cat/dog, bird/frog, bird/deer, airplane/ship, automobile/truck). Margin sampling "
       "spends its labels on exactly those overlaps, "
       "where one more label moves the boundary little; the gain over random stays ~1 pp from 100 labels on.",
       "- Entropy and least-confidence are below random at every mid budget: with 10 classes they favour "
       "images that are confused among many classes (outliers, clutter), which teach a linear head little. "
       "Hence `margin` is the default strategy.",
       "- Fixed in the method: the head let a class without examples collapse (its unpenalised bias went to "
       "-inf, so no strategy could ever query it). Penalising the bias and scaling the prior with 1/N lifted "
       "every strategy at the cold start (20 random labels: 37.0 % -> 42.3 % test accuracy).",
       "- A larger pool helps: with all 50 000 training images as the pool, `margin+kmeans` needs 0.70x "
       "random's labels at 420 (0.73-0.77x from 340 to 820 labels) against 0.78-0.84x with a 10 000 pool; "
       "closest to the target, still above it.",
       "- Tried, kept as options: k-means diversity over the top-10b candidates (`+kmeans`, best: 0.78-0.83x); "
       "class-balanced picks (`+balance`, no measurable change). A wider k-means candidate set (30b instead of 10b, "
       "50k pool, 4 seeds) was worse: 0.87-0.89x against 0.78-0.79x at 380-460 labels. Tried and dropped: information-density "
       "weighting (margin x typicality), which made margin far worse (1.75x the labels of random).",
       "- Prior strength moves margin's ratio at 260 labels but never to 0.67x (4 seeds each, so +-0.1): "
       "fixed l2 0.01 / 0.1 / 1.0 gave 0.87 / 0.82 / 0.73 before the bias fix; l2/N with l2 = 100 / 300 "
       "after it gave 1.01 / 0.91, with random itself much stronger. The default (100) is the one that "
       "gives the best accuracy and calibration across 20-8000 labels, not the one that flatters margin.",
       ""]


def main(seeds: int = 10, train_per_class: int = 1000, l2: float = 100.0, write: bool = False,
         reuse: bool = typer.Option(False, help="rebuild the report from saved curves.csv")) -> None:
    results = {name: run_schedule(name, seeds, train_per_class, l2, reuse) for name in SCHEDULES}
    command = "python -m benchmarks.bench_active_learning " + shlex.join(sys.argv[1:])
    text = section(results, command, seeds, train_per_class)
    print(text)
    if write:
        write_section(f"bench_active_learning_{train_per_class * 10}", text)
        write_section("bench_active_learning_why", "\n".join(WHY))


if __name__ == "__main__":
    typer.run(main)
