"""Rounds: relabel -> retrain a multi-label (sigmoid) head on the new labels -> validate -> repeat.

Inputs are cached region embeddings (row 0 of each image is the whole image, `regions.propose`), so a round
costs head fits and matrix products, not model passes (except MC perturbation, which re-embeds augmented
crops through the cache). The head is trained on the whole-image embeddings with each image's label set as
multi-hot targets. Every round's labels and metrics are written to `round_<r>.json` (temporary file, then
renamed) and summarised in `rounds.json`; rounds stop when the validation metric stops improving.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..formats.relabel_json import atomic_write_json, read_relabel_json
from ..head import ClassifierHead
from . import confidence as conf
from .labeling import calibrate_thresholds, image_scores, label_images
from .metrics import multi_hot, real_top1, set_metrics, to_lists

log = logging.getLogger(__name__)


@dataclass
class RelabelSettings:
    """How regions are scored and labeled (the CLI's options; defaults are ours, see docs/relabel.md)."""

    confidence: str = "mc-dropout"
    passes: int = 20
    dropout_rate: float = 0.05
    aggregation: str = "mean"
    rule: str = "threshold"
    threshold: float = 0.5
    target_precision: float = 0.9
    keep_original: bool = True
    min_delta: float = 0.0
    seed: int = 0
    l2: float = 100.0


@dataclass
class Holdout:
    """Held-out labeled images: region embeddings and multi-hot truth (N, K), for calibration and validation."""

    regions: list[np.ndarray]
    truth: np.ndarray


@dataclass
class RoundResult:
    round: int
    labels: list[list[int]]
    metrics: dict = field(default_factory=dict)


def fit_head(whole_features: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
             settings: RelabelSettings) -> ClassifierHead:
    """Return a sigmoid head fitted on whole-image embeddings (N, D) and multi-hot labels (N, K)."""
    return ClassifierHead(class_names, multi_label=True, l2=settings.l2, seed=settings.seed).fit(
        whole_features, labels.astype(np.float64))


def region_confidences(head: ClassifierHead, regions: Sequence[np.ndarray], settings: RelabelSettings,
                       perturb: Callable[[int, int, int], np.ndarray] | None = None) -> list[np.ndarray]:
    """Return one (R_i, K) confidence array per image by the settings' confidence measure.

    `perturb(image_index, passes, seed)` must return (T, R_i, D) embeddings of augmented regions for
    mc-perturbation (the CLI builds it from the images); raises ValueError without it."""
    out = []
    for i, features in enumerate(regions):
        if settings.confidence == "naive":
            passes = conf.naive(features, head.predict_proba)
        elif settings.confidence == "mc-dropout":
            passes = conf.mc_dropout(features, head.predict_proba, settings.passes, settings.dropout_rate,
                                     seed=settings.seed + i)
        elif settings.confidence == "mc-perturbation":
            if perturb is None:
                raise ValueError("mc-perturbation needs the images (a perturb function), not only embeddings")
            views = perturb(i, settings.passes, settings.seed)
            passes = np.stack([head.predict_proba(v) for v in views])
        else:
            raise ValueError(f"unknown confidence measure {settings.confidence!r}; "
                             f"choose from {', '.join(conf.MEASURES)}")
        out.append(conf.aggregate(passes, settings.aggregation, multi_label=True))
    return out


def validate(head: ClassifierHead, holdout: Holdout, settings: RelabelSettings,
             thresholds: np.ndarray | None) -> dict:
    """Return ReaL-style top-1 of the head on whole held-out images and the set metrics of the rule's labels
    there (no original label to keep: held-out images are labeled from scores alone)."""
    whole = np.stack([r[0] for r in holdout.regions])
    scores = image_scores(region_confidences(head, holdout.regions, settings))
    # held-out images have no single original label: use the head's top class as the "original"
    predicted = label_images(scores, scores.argmax(axis=1), settings.rule, settings.threshold, thresholds,
                             keep_original=False)
    metrics = {"val_top1": real_top1(head.predict_proba(whole), holdout.truth)}
    metrics.update({f"val_{k}": v for k, v in set_metrics(predicted, holdout.truth).items()})
    return metrics


def relabel_once(head: ClassifierHead, regions: Sequence[np.ndarray], original: np.ndarray,
                 settings: RelabelSettings, holdout: Holdout | None,
                 perturb=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Return (labels (N, K) bool, image scores (N, K), per-class thresholds or None) for one relabel pass."""
    thresholds = None
    if settings.rule == "per-class":
        if holdout is None:
            raise ValueError("--label per-class needs held-out labeled images (--holdout) to calibrate on")
        held_scores = image_scores(region_confidences(head, holdout.regions, settings))
        thresholds = calibrate_thresholds(held_scores, holdout.truth, settings.target_precision,
                                          fallback=settings.threshold)
    scores = image_scores(region_confidences(head, regions, settings, perturb))
    labels = label_images(scores, original, settings.rule, settings.threshold, thresholds, settings.keep_original)
    return labels, scores, thresholds


def run_rounds(regions: Sequence[np.ndarray], original: np.ndarray, class_names: Sequence[str],
               settings: RelabelSettings, rounds: int = 3, holdout: Holdout | None = None,
               output_dir: str | Path | None = None, img_paths: Sequence[str] | None = None,
               resume: bool = False, perturb=None, progress: bool = False) -> list[RoundResult]:
    """Run up to `rounds` relabel rounds and return every round's result (round 0 = the original labels).

    Stops early when the held-out metric (`val_top1`) does not improve by more than `min_delta`; without a
    holdout all rounds run. With `output_dir`, round r is written to round_<r>.json (relabel JSON + metrics)
    and rounds.json; with `resume`, finished rounds are read back and the run continues after the last one."""
    from tqdm.auto import tqdm

    original = np.asarray(original, np.int64)
    k = len(class_names)
    whole = np.stack([r[0] for r in regions])
    out = Path(output_dir) if output_dir else None
    img_paths = list(img_paths) if img_paths is not None else [f"image_{i}" for i in range(len(regions))]
    history: list[RoundResult] = []
    if resume and out and (out / "rounds.json").exists():
        for entry in json.loads((out / "rounds.json").read_text())["rounds"]:
            rows = read_relabel_json(out / f"round_{entry['round']}.json", k)
            history.append(RoundResult(entry["round"], [labels for _, labels in rows], entry["metrics"]))
        log.info("resuming after round %d", history[-1].round)
        if history[-1].metrics.get("stopped"):
            return history
    labels = multi_hot(history[-1].labels, k) if history else multi_hot([[int(o)] for o in original], k)
    head = fit_head(whole, labels, class_names, settings)
    if not history:
        metrics = validate(head, holdout, settings, None) if holdout else {}
        history.append(RoundResult(0, to_lists(labels), {**metrics, "cardinality": float(labels.sum(1).mean())}))
        _write(out, history, img_paths, settings)
    best = history[-1].metrics.get("val_top1")
    for r in tqdm(range(history[-1].round + 1, rounds + 1), desc="relabel rounds", disable=not progress):
        new_labels, scores, thresholds = relabel_once(head, regions, original, settings, holdout, perturb)
        new_head = fit_head(whole, new_labels, class_names, settings)
        metrics = validate(new_head, holdout, settings, thresholds) if holdout else {}
        metrics["cardinality"] = float(new_labels.sum(1).mean())
        metrics["changed_images"] = int((new_labels != labels).any(axis=1).sum())
        improved = best is None or metrics["val_top1"] > best + settings.min_delta
        metrics["stopped"] = not improved
        history.append(RoundResult(r, to_lists(new_labels), metrics))
        _write(out, history, img_paths, settings)
        if not improved:
            log.info("round %d: held-out top-1 %.4f did not improve on %.4f; stopping", r, metrics["val_top1"], best)
            break
        labels, head, best = new_labels, new_head, metrics.get("val_top1")
    return history


def best_round(history: Sequence[RoundResult]) -> RoundResult:
    """Return the last round that improved (the round before a stop), or the last round."""
    good = [h for h in history if not h.metrics.get("stopped")]
    return good[-1] if good else history[-1]


def _write(out: Path | None, history: list[RoundResult], img_paths: Sequence[str], settings: RelabelSettings) -> None:
    if out is None:
        return
    last = history[-1]
    atomic_write_json(out / f"round_{last.round}.json",
                      {"data": [{"img_path": p, "labels": labels} for p, labels in zip(img_paths, last.labels)],
                       "metrics": last.metrics})
    atomic_write_json(out / "rounds.json", {"settings": asdict(settings),
                                            "rounds": [{"round": h.round, "metrics": h.metrics} for h in history]})
