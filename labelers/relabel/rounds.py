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
from .labeling import (apply_original, apply_replacements, argmax_union, calibrate_replacements,
                       calibrate_thresholds, image_scores, label_images)
from .learned import LearnedRule, fit_learned_rule
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
    target_recall: float | None = None  # learned rule: held-out recall its threshold must reach (None: by below)
    threshold_by: str = "balanced"  # learned rule without a target recall: "balanced" (held-out P = R) or "f1"
    keep_original: bool = True
    # swap the given label for the head's top class when the top class beats it by a margin calibrated on the
    # holdout for this precision of the swaps (None: never swap; see labeling.calibrate_replacements)
    replace_precision: float | None = None
    min_delta: float = 0.0
    stop_metric: str = "val_f1"  # any val_* key of `validate` (val_jaccard, val_precision, ...)
    seed: int = 0
    l2: float = 100.0
    folds: int = 5  # out-of-fold scores for the images being relabeled; < 2: the head scores its own training images


@dataclass
class Holdout:
    """Held-out labeled images: region embeddings, multi-hot truth (N, K) and, when known, the single label the
    dataset gave each of them (N,) (with its noise: that is what keep-original is scored on)."""

    regions: list[np.ndarray]
    truth: np.ndarray
    original: np.ndarray | None = None

    def halves(self) -> tuple["Holdout", "Holdout"]:
        """Return (calibration, validation): even and odd rows, so per-class thresholds are never scored on
        the images they were fitted to."""
        original = (None, None) if self.original is None else (self.original[0::2], self.original[1::2])
        return (Holdout(list(self.regions[0::2]), self.truth[0::2], original[0]),
                Holdout(list(self.regions[1::2]), self.truth[1::2], original[1]))


@dataclass
class Calibration:
    """What a round's rule learned from the held-out calibration images: per-class thresholds (per-class
    rule), the replace rule's margins, the learned rule; each None when the settings do not use it."""

    thresholds: np.ndarray | None = None
    margins: np.ndarray | None = None
    learned: LearnedRule | None = None


@dataclass
class RoundResult:
    round: int
    labels: list[list[int]]
    metrics: dict = field(default_factory=dict)
    scores: np.ndarray | None = None  # (N, K) image scores that produced the labels (None for round 0)


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
    if settings.confidence in ("naive", "mc-dropout"):
        # one batched call over all regions of all images: a dropout mask per region row, as per image
        flat = np.concatenate([np.asarray(r, np.float32) for r in regions])
        if settings.confidence == "naive":
            passes = conf.naive(flat, head.predict_proba)
        else:
            passes = conf.mc_dropout(flat, head.predict_proba, settings.passes, settings.dropout_rate, settings.seed)
        merged = conf.aggregate(passes, settings.aggregation, multi_label=True)
        return np.split(merged, np.cumsum([len(r) for r in regions])[:-1])
    if settings.confidence != "mc-perturbation":
        raise ValueError(f"unknown confidence measure {settings.confidence!r}; choose from {', '.join(conf.MEASURES)}")
    if perturb is None:
        raise ValueError("mc-perturbation needs the images (a perturb function), not only embeddings")
    out = []
    for i in range(len(regions)):
        views = perturb(i, settings.passes, settings.seed)
        out.append(conf.aggregate(np.stack([head.predict_proba(v) for v in views]), settings.aggregation))
    return out


def labels_from_confidences(confidences: Sequence[np.ndarray], original: np.ndarray, settings: RelabelSettings,
                            calibration: Calibration, keep_original: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels (N, K) bool, image scores (N, K)) by the settings' rule; with the replace rule's
    margins in `calibration`, confidently wrong originals are then swapped for the top class."""
    scores = image_scores(confidences)
    if settings.rule == "argmax":  # the seed's: naive ignores the threshold
        chosen = argmax_union(confidences, None if settings.confidence == "naive" else settings.threshold)
        labels = apply_original(chosen, original, keep_original)
    elif settings.rule == "learned":
        if calibration.learned is None:
            raise ValueError("--label learned needs held-out labeled images (--holdout) to learn from")
        labels = calibration.learned.labels(scores, original, keep_original)
    else:
        labels = label_images(scores, original, settings.rule, settings.threshold, calibration.thresholds,
                              keep_original)
    if calibration.margins is not None:
        labels = apply_replacements(labels, scores, original, calibration.margins)
    return labels, scores


def holdout_originals(head: ClassifierHead, holdout: Holdout) -> np.ndarray:
    """Return the held-out images' single labels: the given ones when the holdout has them, else a stand-in,
    the true class the head ranks highest on the whole image.

    The stand-in is never wrong, so it makes keep-original look perfectly precise and a round that replaces
    wrong originals can never win on it (ImageNet: 7 836 of 50 000 val labels are outside their ReaL set);
    give the holdout its original labels to validate that (warned once per call)."""
    if holdout.original is not None:
        return np.asarray(holdout.original, np.int64)
    log.warning("holdout without original labels: keep-original is estimated with a noise-free stand-in "
                "(the true class the head ranks first), so replacing wrong labels cannot be validated")
    proba = head.predict_proba(np.stack([r[0] for r in holdout.regions]))
    return np.where(holdout.truth, proba, -np.inf).argmax(axis=1)


def validate(head: ClassifierHead, holdout: Holdout, settings: RelabelSettings, calibration: Calibration,
             score_held=None) -> dict:
    """Return the held-out estimate of the labels the round produces: the set metrics (val_*) of the rule
    applied to held-out images scored by `score_held` (`held_out_scorer`; default: by `head`), with their
    given (or stand-in) original, kept or dropped as in the settings; and `head`'s ReaL-style top-1 (head_top1)."""
    confidences = score_held(holdout) if score_held else region_confidences(head, holdout.regions, settings)
    originals = holdout_originals(head, holdout)
    predicted, _ = labels_from_confidences(confidences, originals, settings, calibration, settings.keep_original)
    whole = np.stack([r[0] for r in holdout.regions])
    metrics = {"head_top1": real_top1(head.predict_proba(whole), holdout.truth)}
    metrics.update({f"val_{k}": v for k, v in set_metrics(predicted, holdout.truth).items()})
    return metrics


def keep_original_estimate(head: ClassifierHead, holdout: Holdout) -> dict:
    """Return the held-out set metrics (val_*) of the keep-the-original-label baseline."""
    single = np.zeros(holdout.truth.shape, bool)
    single[np.arange(len(single)), holdout_originals(head, holdout)] = True
    return {f"val_{k}": v for k, v in set_metrics(single, holdout.truth).items()}


def class_thresholds(head: ClassifierHead, settings: RelabelSettings, calibration: Holdout | None,
                     held_scores: np.ndarray | None = None) -> np.ndarray | None:
    """Return per-class thresholds calibrated on `calibration` for the per-class rule, else None.

    With the original label kept, the thresholds are calibrated on the labels *added* beside the held-out
    images' originals (their own, or the stand-in), and a class whose added labels never reach the target
    precision adds none (threshold 1.0): the original is there anyway, so only the additions decide whether
    the round helps. Raises ValueError for the per-class rule without held-out labeled images."""
    if settings.rule != "per-class":
        return None
    if calibration is None:
        raise ValueError("--label per-class needs held-out labeled images (--holdout) to calibrate on")
    held_scores = _held_scores(head, settings, calibration, held_scores)
    if not settings.keep_original:
        return calibrate_thresholds(held_scores, calibration.truth, settings.target_precision,
                                    fallback=settings.threshold)
    originals = np.zeros(calibration.truth.shape, bool)
    originals[np.arange(len(originals)), holdout_originals(head, calibration)] = True
    return calibrate_thresholds(held_scores, calibration.truth, settings.target_precision, fallback=1.0,
                                exclude=originals)


def replace_margins(head: ClassifierHead, settings: RelabelSettings, calibration: Holdout | None,
                    held_scores: np.ndarray | None = None) -> np.ndarray | None:
    """Return the replace rule's per-class margins calibrated on `calibration` (its given originals) for
    `settings.replace_precision`, or None when the rule is off. Raises ValueError without held-out images, or
    when the holdout has no given labels (a swap can only be judged against the label the dataset gave)."""
    if settings.replace_precision is None:
        return None
    if calibration is None or calibration.original is None:
        raise ValueError("--replace-precision needs held-out images with their given labels (--holdout with an "
                         "\"original\" on every row) to calibrate the swaps on")
    return calibrate_replacements(_held_scores(head, settings, calibration, held_scores), calibration.truth,
                                  calibration.original, settings.replace_precision)


def learned_rule(head: ClassifierHead, settings: RelabelSettings, calibration: Holdout | None,
                 held_scores: np.ndarray | None = None) -> LearnedRule | None:
    """Return the learned rule (labelers.relabel.learned) fitted on `calibration` with this head's scores for
    the learned rule, else None. Raises ValueError without held-out labeled images."""
    if settings.rule != "learned":
        return None
    if calibration is None:
        raise ValueError("--label learned needs held-out labeled images (--holdout) to learn from")
    return fit_learned_rule(_held_scores(head, settings, calibration, held_scores), holdout_originals(head, calibration),
                            calibration.truth, settings.keep_original, settings.target_recall, settings.seed,
                            settings.threshold_by)


def calibrate(head: ClassifierHead, settings: RelabelSettings, calibration: Holdout | None,
              score_held=None) -> Calibration:
    """Return what the settings' rules learn from the calibration images, scoring them once (by `score_held`,
    `held_out_scorer`; default: by `head`)."""
    held_scores = None
    if calibration is not None and (settings.rule in ("per-class", "learned") or settings.replace_precision):
        held_scores = image_scores(score_held(calibration)) if score_held else _held_scores(head, settings,
                                                                                               calibration)
    return Calibration(class_thresholds(head, settings, calibration, held_scores),
                       replace_margins(head, settings, calibration, held_scores),
                       learned_rule(head, settings, calibration, held_scores))


def _held_scores(head, settings, calibration: Holdout, held_scores=None) -> np.ndarray:
    if held_scores is not None:
        return held_scores
    return image_scores(region_confidences(head, calibration.regions, settings))


def fold_heads(whole: np.ndarray, labels: np.ndarray, class_names: Sequence[str], settings: RelabelSettings
               ) -> list[ClassifierHead]:
    """Return `settings.folds` heads: head f is fitted on the whole-image embeddings (N, D) and labels (N, K)
    of the images outside fold f (fold of image i: i % folds)."""
    n = len(whole)
    return [fit_head(whole[np.arange(n) % settings.folds != fold], labels[np.arange(n) % settings.folds != fold],
                     class_names, settings) for fold in range(settings.folds)]


def out_of_fold_confidences(whole: np.ndarray, labels: np.ndarray, regions: Sequence[np.ndarray],
                            class_names: Sequence[str], settings: RelabelSettings, perturb=None,
                            heads: Sequence[ClassifierHead] | None = None) -> list[np.ndarray]:
    """Return one (R_i, K) confidence array per image, each scored by a head that did not train on it.

    Image i is scored by head i % folds of `heads` (default `fold_heads`). Why: a head scoring its own
    training images parrots their labels (1280 features, a few thousand images: measured 0.83 in-sample vs
    0.64 out-of-sample top-1 on 5000 CIFAR scenes), while the rule is calibrated on held-out images, i.e. on
    out-of-sample scores; applying it to in-sample scores mismatches the two."""
    heads = list(heads) if heads is not None else fold_heads(whole, labels, class_names, settings)
    n = len(regions)
    out: list[np.ndarray | None] = [None] * n
    for fold, head in enumerate(heads):
        scored = np.arange(fold, n, len(heads))
        if not len(scored):  # fewer images than folds (a small holdout half)
            continue
        fold_perturb = None if perturb is None else (lambda j, p, s, idx=scored: perturb(int(idx[j]), p, s))
        for i, confidences in zip(scored, region_confidences(head, [regions[i] for i in scored], settings,
                                                             fold_perturb)):
            out[i] = confidences
    return out


def held_out_scorer(head: ClassifierHead, heads: Sequence[ClassifierHead] | None, settings: RelabelSettings):
    """Return holdout -> its (R_i, K) confidences: with fold heads, held-out image j is scored by head
    j % folds, a head trained on as many images as the ones scoring the relabeled images, so the rule is
    calibrated and validated on scores distributed like those it is applied to (scored by the head fitted on
    all images, held-out recall ran about 0.01 above the relabeled images' on CIFAR scenes); else by `head`."""
    if not heads:
        return lambda holdout: region_confidences(head, holdout.regions, settings)
    return lambda holdout: out_of_fold_confidences(None, None, holdout.regions, None, settings, heads=heads)


def relabel_once(head: ClassifierHead, regions: Sequence[np.ndarray], original: np.ndarray,
                 settings: RelabelSettings, calibration: Holdout | None, perturb=None,
                 whole: np.ndarray | None = None, labels: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None):
    """Return (labels (N, K) bool, image scores (N, K), what was calibrated, the held-out scorer) of one pass.

    With `settings.folds` >= 2 and the training data (`whole`, `labels`, `class_names`) the images are scored
    out of fold (`out_of_fold_confidences`) and so are the held-out images (`held_out_scorer`); else `head`
    scores both."""
    use_folds = settings.folds >= 2 and whole is not None and len(regions) >= settings.folds
    heads = fold_heads(whole, labels, class_names, settings) if use_folds else None
    score_held = held_out_scorer(head, heads, settings)
    calibrated = calibrate(head, settings, calibration, score_held)
    if heads:
        confidences = out_of_fold_confidences(whole, labels, regions, class_names, settings, perturb, heads)
    else:
        confidences = region_confidences(head, regions, settings, perturb)
    new_labels, scores = labels_from_confidences(confidences, original, settings, calibrated, settings.keep_original)
    return new_labels, scores, calibrated, score_held


def run_rounds(regions: Sequence[np.ndarray], original: np.ndarray, class_names: Sequence[str],
               settings: RelabelSettings, rounds: int = 3, holdout: Holdout | None = None,
               output_dir: str | Path | None = None, img_paths: Sequence[str] | None = None,
               resume: bool = False, perturb=None, progress: bool = False,
               inputs: dict | None = None) -> list[RoundResult]:
    """Run up to `rounds` relabel rounds and return every round's result (round 0 = the original labels).

    Round r labels the images with the head trained on round r-1's labels. With a holdout (its even rows
    calibrate per-class thresholds, its odd rows validate), round r's val_* metrics estimate the quality of
    its labels: the same head and rule applied to held-out images; round 0's are the keep-original
    baseline's. A round is accepted only when its `settings.stop_metric` beats the best accepted round by more
    than `min_delta`; the first round that does not is recorded (accepted False) and the run stops, so the
    result is never estimated worse than keeping the original labels. Without a holdout every round is
    accepted. With `output_dir`, round r is written to round_<r>.json (relabel JSON + metrics + scores) and
    rounds.json; with `resume`, finished rounds are read back and the run continues after the last one, after
    checking (`check_resumable`) that the settings and `inputs` (what produced the regions: data, region method,
    embedder, ...) are the saved ones."""
    from tqdm.auto import tqdm

    original = np.asarray(original, np.int64)
    k = len(class_names)
    whole = np.stack([r[0] for r in regions])
    out = Path(output_dir) if output_dir else None
    img_paths = list(img_paths) if img_paths is not None else [f"image_{i}" for i in range(len(regions))]
    calibration, validation = holdout.halves() if holdout else (None, None)
    history: list[RoundResult] = []
    if resume and out and (out / "rounds.json").exists():
        saved_run = json.loads((out / "rounds.json").read_text())
        check_resumable(saved_run, settings, inputs, out / "rounds.json")
        for entry in saved_run["rounds"]:
            saved = json.loads((out / f"round_{entry['round']}.json").read_text())
            rows = read_relabel_json(out / f"round_{entry['round']}.json", k)
            scores = saved.get("scores")
            history.append(RoundResult(entry["round"], [labels for _, labels in rows], entry["metrics"],
                                       None if scores is None else np.asarray(scores)))
        log.info("resuming after round %d", history[-1].round)
        if history[-1].metrics.get("stopped"):
            return history
    labels = multi_hot(best_round(history).labels, k) if history else multi_hot([[int(o)] for o in original], k)
    head = fit_head(whole, labels, class_names, settings)
    if not history:
        metrics = keep_original_estimate(head, validation) if holdout else {}
        history.append(RoundResult(0, to_lists(labels), {**metrics, "cardinality": float(labels.sum(1).mean()),
                                                         "accepted": True}))
        _write(out, history, img_paths, settings, inputs)
    best = _best_so_far(history, settings.stop_metric)
    for r in tqdm(range(history[-1].round + 1, rounds + 1), desc="relabel rounds", disable=not progress):
        new_labels, scores, calibrated, score_held = relabel_once(head, regions, original, settings, calibration,
                                                                  perturb, whole, labels, class_names)
        metrics = validate(head, validation, settings, calibrated, score_held) if holdout else {}
        if calibrated.learned is not None:
            metrics["learned_threshold"] = calibrated.learned.threshold
        metrics["cardinality"] = float(new_labels.sum(1).mean())
        metrics["changed_images"] = int((new_labels != labels).any(axis=1).sum())
        value = metrics.get(settings.stop_metric)
        if holdout is None:
            # nothing to validate against: say so where the round's numbers are read, not only in the log
            metrics["validated"] = False
            metrics["warning"] = UNVALIDATED
            log.warning("round %d: %s", r, UNVALIDATED)
        metrics["accepted"] = best is None or value > best + settings.min_delta
        metrics["stopped"] = not metrics["accepted"]
        history.append(RoundResult(r, to_lists(new_labels), metrics, scores))
        _write(out, history, img_paths, settings, inputs)
        if metrics["stopped"]:
            log.info("round %d: held-out %s %.4f does not beat %.4f; stopping", r, settings.stop_metric, value, best)
            break
        labels, best = new_labels, value
        head = fit_head(whole, labels, class_names, settings)
    return history


UNVALIDATED = ("accepted WITHOUT validation: no held-out labeled images (--holdout), so nothing checks that these "
               "labels are better than the originals")


def check_resumable(saved_run: dict, settings: RelabelSettings, inputs: dict | None, where: Path) -> None:
    """Raise ValueError naming every key whose saved value (in rounds.json) differs from this run's.

    Rounds continued with other settings or other regions would mix two runs in one history."""
    now = {**asdict(settings), **(inputs or {})}
    before = {**saved_run.get("settings", {}), **saved_run.get("inputs", {})}
    differing = sorted(k for k in set(now) | set(before) if _jsonable(now.get(k)) != before.get(k))
    if differing:
        detail = "; ".join(f"{k}: saved {before.get(k)!r}, now {_jsonable(now.get(k))!r}" for k in differing)
        raise ValueError(f"{where}: cannot --resume, the settings differ from the saved run's ({detail}); "
                         f"use the same options or another --output-dir")


def _jsonable(value):
    """Return `value` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def _best_so_far(history: Sequence[RoundResult], metric: str) -> float | None:
    values = [h.metrics[metric] for h in history if h.metrics.get("accepted", True) and metric in h.metrics]
    return max(values) if values else None


def best_round(history: Sequence[RoundResult]) -> RoundResult:
    """Return the last accepted round (round 0, the original labels, is always accepted)."""
    return [h for h in history if h.metrics.get("accepted", True)][-1]


def _write(out: Path | None, history: list[RoundResult], img_paths: Sequence[str], settings: RelabelSettings,
           inputs: dict | None = None) -> None:
    if out is None:
        return
    last = history[-1]
    payload = {"data": [{"img_path": p, "labels": labels} for p, labels in zip(img_paths, last.labels)],
               "metrics": last.metrics}
    if last.scores is not None:  # kept so --resume and the Label Studio suggestions need no re-scoring
        payload["scores"] = np.round(last.scores, 5).tolist()
    atomic_write_json(out / f"round_{last.round}.json", payload)
    atomic_write_json(out / "rounds.json", {"settings": asdict(settings), "inputs": _jsonable(inputs or {}),
                                            "rounds": [{"round": h.round, "metrics": h.metrics} for h in history]})
