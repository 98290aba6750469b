"""Learning-curve statistics for active learning: AULC, confidence intervals, labels-to-reach, plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


def normalized_aulc(budgets: np.ndarray, accuracies: np.ndarray) -> float:
    """Trapezoid area under accuracy-vs-labels, divided by the budget range (so it lives in [0, 1])."""
    budgets, accuracies = np.asarray(budgets, float), np.asarray(accuracies, float)
    if len(budgets) < 2:
        return float(accuracies[0])
    return float(np.trapezoid(accuracies, budgets) / (budgets[-1] - budgets[0]))


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Return (mean, half-width of the t confidence interval) over seeds."""
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def labels_to_reach(budgets: np.ndarray, mean_accuracy: np.ndarray, target: float) -> float:
    """Smallest budget where the seed-mean curve reaches `target`, linearly interpolated; NaN if never."""
    budgets, mean_accuracy = np.asarray(budgets, float), np.asarray(mean_accuracy, float)
    hits = np.flatnonzero(mean_accuracy >= target)
    if not len(hits):
        return float("nan")
    i = hits[0]
    if i == 0:
        return float(budgets[0])
    b0, b1, a0, a1 = budgets[i - 1], budgets[i], mean_accuracy[i - 1], mean_accuracy[i]
    return float(b0 + (target - a0) / (a1 - a0) * (b1 - b0))


def summarize(curves: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    """One row per strategy: AULC (mean, CI), paired AULC gain over `baseline` (mean, CI), final accuracy,
    labels needed to reach the baseline's final accuracy, and the label ratio at the mid budget."""
    pivot = curves.pivot_table(index=["strategy", "seed"], columns="n_labeled", values="accuracy")
    budgets = np.asarray(pivot.columns, float)
    aulc = pivot.apply(lambda row: normalized_aulc(budgets, row.to_numpy()), axis=1)
    means = pivot.groupby(level="strategy").mean()
    has_base = baseline in means.index
    base_final = means.loc[baseline].iloc[-1] if has_base else np.nan
    mid = len(budgets) // 2
    rows = []
    for strategy in means.index:
        row = {"strategy": strategy}
        row["aulc"], row["aulc_ci"] = mean_ci(aulc.loc[strategy].to_numpy())
        if has_base:
            paired = aulc.loc[strategy] - aulc.loc[baseline].reindex(aulc.loc[strategy].index)
            row["aulc_gain"], row["aulc_gain_ci"] = mean_ci(paired.to_numpy())
            row["labels_to_baseline_final"] = labels_to_reach(budgets, means.loc[strategy].to_numpy(), base_final)
            target_mid = means.loc[baseline].iloc[mid]
            row["mid_budget"] = budgets[mid]
            row["label_ratio_at_mid"] = labels_to_reach(budgets, means.loc[strategy].to_numpy(), target_mid) / budgets[mid]
        row["final_accuracy"] = means.loc[strategy].iloc[-1]
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy")


def paired_gaps(curves: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    """Per strategy and budget: mean paired accuracy difference to `baseline` with its 95% CI."""
    pivot = curves.pivot_table(index=["seed", "n_labeled"], columns="strategy", values="accuracy")
    rows = []
    for strategy in pivot.columns:
        for budget, group in pivot.groupby(level="n_labeled"):
            mean, half = mean_ci((group[strategy] - group[baseline]).to_numpy())
            rows.append({"strategy": strategy, "n_labeled": budget, "gap": mean, "gap_ci": half})
    return pd.DataFrame(rows)


def plot_curves(curves: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Save accuracy vs labels per strategy, seed mean with a 95% CI band, as a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, group in curves.groupby("strategy"):
        per_budget = group.groupby("n_labeled")["accuracy"]
        budgets = np.asarray(sorted(group["n_labeled"].unique()), float)
        stats_ = [mean_ci(per_budget.get_group(b).to_numpy()) for b in budgets]
        mean = np.array([m for m, _ in stats_])
        half = np.nan_to_num(np.array([h for _, h in stats_]))
        ax.plot(budgets, mean, marker="o", ms=3, label=strategy)
        ax.fill_between(budgets, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "active learning: mean and 95% CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
