"""Label-quality report of a run against ground truth: JSON, markdown and a confusion-matrix PNG.

Metrics follow docs/complementary-labels.md §3. Ordinary runs: accuracy (all rounds, unparseable
counted wrong) and per-image majority-vote accuracy. Complementary runs: CL noise (share of CLs
equal to the true label), the conditional error when the true label was shown, duplicates. Both:
re-ask and unparseable rates, each class's share of labels, the empirical transition matrix
T[y, j] = P(label j | true class y) and its row entropies. Rates come with a 95 % Wilson interval,
because runs with ground truth are usually small gold subsets.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, total: int, z: float = 1.96) -> list[float] | None:
    """Return the [low, high] 95 % Wilson score interval of successes/total, or None when total is 0."""
    if total == 0:
        return None
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _rate(successes: int, total: int) -> dict:
    return {"value": successes / total if total else None, "count": successes, "total": total,
            "ci95": wilson_interval(successes, total)}


def quality_report(records: Sequence[dict], class_names: Sequence[str], mode: str,
                   num_options: int | None = None) -> dict:
    """Return the report dict for JSONL ``records`` that carry ``true_label``.

    Raises ValueError when a record has no true label.
    """
    k = len(class_names)
    if any(r.get("true_label") is None for r in records):
        raise ValueError("every record needs a true_label for a quality report")
    parsed = [r for r in records if r["label"] is not None]
    attempts = sum(r["attempts"] for r in records)
    counts = np.zeros((k, k), dtype=np.int64)
    for r in parsed:
        counts[r["true_label"], r["label"]] += 1
    row_totals = counts.sum(1, keepdims=True)
    transition = np.divide(counts, row_totals, out=np.zeros((k, k)), where=row_totals > 0)
    share = counts.sum(0) / counts.sum() if counts.sum() else None  # no parsed answer: no shares at all
    report = {
        "mode": mode, "images": len({r["image"] for r in records}), "answers": len(records),
        "num_classes": k, "class_names": list(class_names), "num_options": num_options,
        "reask_rate": _rate(attempts - len(records), attempts),
        "unparseable_rate": _rate(len(records) - len(parsed), len(records)),
        "label_share": None if share is None else dict(zip(class_names, share.round(6).tolist())),
        "max_label_share": None if share is None else {"class": class_names[int(share.argmax())],
                                                       "value": float(share.max())},
        "transition_matrix": transition.round(6).tolist(), "transition_counts": counts.tolist(),
        "transition_row_entropy": [_entropy(row) if total else None
                                   for row, total in zip(transition, row_totals[:, 0])],
        "oracle_note": "computed from the ground truth given with the images (an oracle on this set)",
    }
    if mode == "ordinary":
        report.update(_ordinary_metrics(records))
    else:
        report.update(_complementary_metrics(records))
    return report


def _entropy(row: np.ndarray) -> float:
    """Return the entropy (nats) of a probability row; 0.0, never -0.0, for a row with one class."""
    p = row[row > 0]
    return max(0.0, float(-(p * np.log(p)).sum()))


def _ordinary_metrics(records: Sequence[dict]) -> dict:
    correct = sum(r["label"] == r["true_label"] for r in records)
    by_image: dict[str, list[dict]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(r)
    votes = 0
    for rs in by_image.values():
        labels = [r["label"] for r in rs if r["label"] is not None]
        if labels and Counter(labels).most_common(1)[0][0] == rs[0]["true_label"]:
            votes += 1
    return {"accuracy": _rate(correct, len(records)), "vote_accuracy": _rate(votes, len(by_image))}


def _complementary_metrics(records: Sequence[dict]) -> dict:
    parsed = [r for r in records if r["label"] is not None]
    noisy = sum(r["label"] == r["true_label"] for r in parsed)
    shown = [r for r in parsed if r["true_label"] in r["candidates"]]
    by_image: dict[str, list[int]] = {}
    for r in parsed:
        by_image.setdefault(r["image"], []).append(r["label"])
    duplicates = sum(len(set(v)) < len(v) for v in by_image.values())
    return {"cl_noise": _rate(noisy, len(parsed)),
            "cl_error_when_true_shown": _rate(sum(r["label"] == r["true_label"] for r in shown), len(shown)),
            "images_with_duplicate_cls": _rate(duplicates, len(by_image))}


def _fmt(rate: dict) -> str:
    if rate["value"] is None:
        return "n/a"
    low, high = rate["ci95"]
    return f"{100 * rate['value']:.2f} % ({rate['count']}/{rate['total']}; 95 % CI {100 * low:.1f}–{100 * high:.1f} %)"


def report_markdown(report: dict) -> str:
    """Return the report as a short markdown document."""
    lines = [f"# VLM label quality ({report['mode']} labels)", "",
             f"{report['images']} images, {report['answers']} answers, {report['num_classes']} classes. "
             f"Ground truth: {report['oracle_note']}.", ""]
    keys = (["accuracy", "vote_accuracy"] if report["mode"] == "ordinary"
            else ["cl_noise", "cl_error_when_true_shown", "images_with_duplicate_cls"])
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {key.replace('_', ' ')} | {_fmt(report[key])} |" for key in keys + ["reask_rate", "unparseable_rate"]]
    if report["max_label_share"] is None:
        lines += ["", "No answer could be parsed, so there are no label shares and no transition matrix."]
        return "\n".join(lines) + "\n"
    lines += ["", f"Largest label share: {report['max_label_share']['class']} "
                  f"({100 * report['max_label_share']['value']:.1f} %; uniform = {100 / report['num_classes']:.1f} %).",
              "", "| class | share of labels | row entropy of T |", "|---|---|---|"]
    for (name, share), entropy in zip(report["label_share"].items(), report["transition_row_entropy"]):
        lines.append(f"| {name} | {100 * share:.1f} % | {'n/a' if entropy is None else f'{entropy:.3f}'} |")
    lines += ["", "Empirical transition matrix T[true, label] (rows: true class): see `confusion.png` and "
                  "`quality.json` (`transition_matrix`)."]
    return "\n".join(lines) + "\n"


def plot_confusion(report: dict, path: str | Path) -> Path:
    """Save the transition matrix as a labelled heatmap PNG at ``path`` and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, matrix = report["class_names"], np.asarray(report["transition_matrix"])
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1e-9, matrix.max()))
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("complementary label" if report["mode"] == "complementary" else "VLM label")
    ax.set_ylabel("true class")
    ax.set_title(f"{report['mode']} labels: P(label | true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_quality_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``quality.json``, ``quality.md`` and ``confusion.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "quality.json", "markdown": out_dir / "quality.md", "png": out_dir / "confusion.png"}
    paths["json"].write_text(json.dumps(report, indent=2), encoding="utf-8")
    paths["markdown"].write_text(report_markdown(report), encoding="utf-8")
    plot_confusion(report, paths["png"])
    return paths
