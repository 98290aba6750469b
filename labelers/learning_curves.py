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


def summarize(curves: pd.DataFrame, baseline: str = "random", mid_budget: float | None = None) -> pd.DataFrame:
    """One row per strategy: AULC (mean, CI), paired AULC gain over `baseline` (mean, CI), final accuracy,
    labels needed to reach the baseline's final accuracy, and the label ratio at the mid budget: the labels
    the strategy needs to reach the baseline's accuracy at `mid_budget` (default the middle budget of the
    schedule; the baseline curve is interpolated between budgets), divided by `mid_budget`.
    When the curves have a `positive_f1` column (two-choice simulations) the positive class's F1 at the final
    budget is added (final_positive_f1 with its CI).
    NaN in labels_to_baseline_final / label_ratio_at_mid means "never reached" within the schedule
    (`format_summary` says so). Raises ValueError when mid_budget lies outside the schedule."""
    pivot = curves.pivot_table(index=["strategy", "seed"], columns="n_labeled", values="accuracy")
    budgets = np.asarray(pivot.columns, float)
    aulc = pivot.apply(lambda row: normalized_aulc(budgets, row.to_numpy()), axis=1)
    means = pivot.groupby(level="strategy").mean()
    has_base = baseline in means.index
    base_final = means.loc[baseline].iloc[-1] if has_base else np.nan
    if mid_budget is None:
        mid_budget = budgets[len(budgets) // 2]
    elif not budgets[0] <= mid_budget <= budgets[-1]:
        raise ValueError(f"mid budget {mid_budget:g} is outside the schedule's {budgets[0]:g}..{budgets[-1]:g} labels")
    rows = []
    for strategy in means.index:
        row = {"strategy": strategy}
        row["aulc"], row["aulc_ci"] = mean_ci(aulc.loc[strategy].to_numpy())
        if has_base:
            paired = aulc.loc[strategy] - aulc.loc[baseline].reindex(aulc.loc[strategy].index)
            row["aulc_gain"], row["aulc_gain_ci"] = mean_ci(paired.to_numpy())
            row["labels_to_baseline_final"] = labels_to_reach(budgets, means.loc[strategy].to_numpy(), base_final)
            target_mid = float(np.interp(mid_budget, budgets, means.loc[baseline].to_numpy()))
            row["mid_budget"] = mid_budget
            row["label_ratio_at_mid"] = labels_to_reach(budgets, means.loc[strategy].to_numpy(), target_mid) / mid_budget
        row["final_accuracy"] = means.loc[strategy].iloc[-1]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("strategy")
    if "positive_f1" in curves:  # a two-choice simulation: the positive class's F1 beside accuracy
        f1 = curves.pivot_table(index=["strategy", "seed"], columns="n_labeled", values="positive_f1")
        final = f1.iloc[:, -1].groupby(level="strategy")
        table["final_positive_f1"] = final.mean()
        table["final_positive_f1_ci"] = final.apply(lambda v: mean_ci(v.to_numpy())[1])
    return table


NEVER_REACHED = "never reached"


def format_summary(summary: pd.DataFrame, digits: int = 4) -> tuple[pd.DataFrame, str]:
    """Return (the summary rounded, with NaN labels-to-reach written as "never reached", a note explaining
    it, or "" when nothing is missing) for printing and summary.csv."""
    table = summary.round(digits).astype(object)
    missing = []
    for column in ("labels_to_baseline_final", "label_ratio_at_mid"):
        if column in table:
            gone = summary[column].isna()
            table.loc[gone, column] = NEVER_REACHED
            missing += [f"{s} ({column})" for s in summary.index[gone]]
    note = ""
    if missing:
        note = (f"{NEVER_REACHED}: the strategy's seed-mean accuracy stays below the baseline's target within the "
                f"labels simulated, so no label count can be given: {', '.join(missing)}. "
                "Run more rounds to measure it.")
    return table, note


def paired_gaps(curves: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    """Per strategy and budget: mean paired accuracy difference to `baseline` with its 95% CI."""
    pivot = curves.pivot_table(index=["seed", "n_labeled"], columns="strategy", values="accuracy")
    rows = []
    for strategy in pivot.columns:
        for budget, group in pivot.groupby(level="n_labeled"):
            mean, half = mean_ci((group[strategy] - group[baseline]).to_numpy())
            rows.append({"strategy": strategy, "n_labeled": budget, "gap": mean, "gap_ci": half})
    return pd.DataFrame(rows)


def plot_curves(curves: pd.DataFrame, path: str | Path, title: str = "", baseline: str | None = "random") -> Path:
    """Save a PNG of accuracy vs labels per strategy (seed mean with a 95% CI band) and, when `baseline` is
    among the strategies, a second panel of each strategy's paired accuracy difference to it with its 95%
    band (per-strategy bands can overlap where the paired gap is clearly non-zero). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = baseline is not None and baseline in set(curves["strategy"])
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(13 if paired else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
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
    if paired:
        _plot_paired(axes[0, 1], curves, baseline)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _plot_paired(ax, curves: pd.DataFrame, baseline: str) -> None:
    """Draw each strategy's mean paired accuracy difference to `baseline` with its 95% band."""
    gaps = paired_gaps(curves, baseline)
    for strategy, group in gaps.groupby("strategy"):
        if strategy == baseline:
            continue
        budgets, gap = group["n_labeled"].to_numpy(float), group["gap"].to_numpy()
        half = np.nan_to_num(group["gap_ci"].to_numpy())
        ax.plot(budgets, gap, marker="o", ms=3, label=strategy)
        ax.fill_between(budgets, gap - half, gap + half, alpha=0.2)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("labeled images")
    ax.set_ylabel(f"accuracy - {baseline} (paired by seed)")
    ax.set_title(f"paired difference to {baseline}, mean and 95% CI")
    ax.grid(alpha=0.3)
    ax.legend()


def ratio_intervals(curves: pd.DataFrame, baseline: str = "random", mid_budget: float | None = None,
                    resamples: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Bootstrap intervals over seeds (paired: one draw of seeds for strategy and baseline) for each
    strategy's label_ratio_at_mid and final ratio (labels to the baseline's final accuracy / final budget).

    Returns one row per strategy with `<ratio>_lo` and `<ratio>_hi`; a resample in which the strategy never
    reaches the target counts as +inf, so a `_hi` of inf means "not reached in more than 2.5 % of draws".
    """
    pivot = curves.pivot_table(index=["strategy", "seed"], columns="n_labeled", values="accuracy")
    budgets = np.asarray(pivot.columns, float)
    mid = budgets[len(budgets) // 2] if mid_budget is None else mid_budget
    seeds = np.asarray(sorted(set(pivot.loc[baseline].index)))
    rng = np.random.default_rng(seed)
    draws = [rng.choice(seeds, size=len(seeds), replace=True) for _ in range(resamples)]
    base = pivot.loc[baseline]
    rows = []
    for strategy in pivot.index.get_level_values("strategy").unique():
        mine = pivot.loc[strategy]
        mids, finals = [], []
        for draw in draws:
            b, s = base.loc[draw].mean().to_numpy(), mine.loc[draw].mean().to_numpy()
            for out, target, scale in ((mids, np.interp(mid, budgets, b), mid), (finals, b[-1], budgets[-1])):
                reached = labels_to_reach(budgets, s, target)
                out.append(np.inf if np.isnan(reached) else reached / scale)
        tail = (1 - level) / 2 * 100
        row = {"strategy": strategy}
        for name, values in (("label_ratio_at_mid", mids), ("final_ratio", finals)):
            row[f"{name}_lo"], row[f"{name}_hi"] = np.percentile(values, [tail, 100 - tail], method="nearest")
        rows.append(row)
    return pd.DataFrame(rows).set_index("strategy")
