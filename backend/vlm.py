"""The VLM as a project's pre-annotator: ordinary choices with scores, complementary labels into a second control.

The VLM only pre-annotates: retraining still fits the embedding head on the annotations, and a project can
switch back to it with {"predictor": "head"} (see backend.predictor for how a project chooses). A VLM's answers
never change with annotations, so a VLM project's `model_version` names the model and its question instead of
a head revision: Label Studio asks again only when one of those changes.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np

from backend.embedding import fetch_deadline
from backend.fetching import Fetcher
from backend.heads import choose, scores
from backend.labels import ImageClassification
from backend.predictor import PredictorChoice
from backend.schemas import PredictionValue
from backend.vlm_models import VLMPool

log = logging.getLogger(__name__)

CHUNK = 32  # tasks fetched and labeled together; the predict budget is checked between chunks


def vlm_class_names(target: ImageClassification) -> list[str]:
    """Return the names the VLM is shown, one per label: the first `predicted_values` name (taxonomy: the
    leaf), unless two labels would then look the same to the model, in which case the labels themselves."""
    names = [names[0] for names in target.model_names]
    return names if len({n.lower() for n in names}) == len(names) else list(target.labels)


def complementary_score(answers: Sequence, strategy: str, key: str) -> float | None:
    """Return the mean confidence of a task's complementary answers over their shown options (None without
    option probabilities), with the same strategy semantics as the head's score."""
    from labelers.strategies import prediction_score

    rows = [answer.option_probs for answer in answers if answer.option_probs]
    if not rows:
        return None
    keys = [f"{key}#r{i}" for i in range(len(rows))]
    return float(prediction_score(np.asarray(rows), strategy, keys=keys).mean())


def label_images(labeler, images: list, keys: list[str], target: ImageClassification, choice: PredictorChoice,
                 strategy: str, sampler=None) -> list[tuple[list[dict[str, Any]], float | None]]:
    """Return (result regions, score) per image from the VLM.

    Ordinary: the option probabilities give the choice (one class, `model_score_threshold` honoured, also on a
    multiple-choice control: the VLM answers with one class) and the score. Complementary: the R answers, as
    class names, go to the complementary control; when they are the only output they also give the score.
    """
    names = vlm_class_names(target)
    out: list[tuple[list[dict[str, Any]], float | None]] = [([], None) for _ in images]
    if choice.ordinary:
        probs = labeler.classify(images, names)
        ok = ~np.isnan(probs).any(axis=1)  # an unparseable generate answer has no probabilities
        rows = np.flatnonzero(ok)
        row_scores = scores(probs[rows], strategy, False, keys=[keys[i] for i in rows]) if len(rows) else []
        single = replace(target, multiple=False)
        for j, i in enumerate(rows):
            labels = choose(probs[i], single)
            out[i] = ([target.region(labels)] if labels else [], round(float(row_scores[j]), 6))
    if choice.complementary:
        answers = labeler.complementary(images, names, keys=keys, sampler=sampler)
        for i, rounds in enumerate(answers):
            labels = [target.labels[a.choice] for a in rounds if a.choice is not None]
            regions, score = out[i]
            if labels:
                regions = regions + [target.complementary_region(labels)]
            if not choice.ordinary:
                score = complementary_score(rounds, strategy, keys[i])
                score = None if score is None else round(score, 6)
            out[i] = (regions, score)
    return out


class VLMPredictor:
    """Pre-annotates tasks with a project's VLM, within the predict budget."""

    def __init__(self, vlms: VLMPool, fetcher: Fetcher, fetch_timeout: float = 20.0):
        self.vlms, self.fetcher, self.fetch_timeout = vlms, fetcher, fetch_timeout

    @property
    def clock(self) -> Callable[[], float]:
        return self.fetcher.clock

    def predict(self, project: str, tasks: list[dict[str, Any]], target: ImageClassification,
                choice: PredictorChoice, strategy: str, version: str, budget: float | None = None):
        """Return (one item per task in task order, counts). An item is a PredictionValue (empty result and
        score None when the image cannot be read), or [] for a task not reached within `budget` seconds.
        Counts: {"tasks_predicted", "tasks_failed", "tasks_not_predicted", "images_fetched"}.
        Raises VLMUnavailable when the model cannot be loaded."""
        from labelers.cache import content_key
        from labelers.images import ImageLoadError, load_image
        from labelers.vlm.sampling import CandidateSampler

        start_time = self.clock()
        deadline = None if budget is None else fetch_deadline(start_time, budget, self.fetch_timeout)
        labeler = self.vlms.get(choice.model)
        lock = self.vlms.compute_locks.get(choice.model) or threading.Lock()
        items: list[Any] = [PredictionValue(result=[], score=None, model_version=version) for _ in tasks]
        ids, urls, errors = self.fetcher.media.task_sources(tasks, target.data_key)
        todo = [i for i in range(len(tasks)) if i not in errors]
        sampler = None
        if choice.complementary:  # one sampler per request, so -R balancing spreads CLs over the whole batch
            cfg = labeler.settings.complementary
            sampler = CandidateSampler(len(target.labels), choice.num_options, choice.rounds, len(todo),
                                       cfg.distinct, cfg.balance, cfg.quota_floor, cfg.seed)
        fetched, not_reached = 0, []
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            if deadline is not None and self.clock() >= deadline:
                not_reached = todo[start:]
                break
            got = self.fetcher.fetch_all({i: urls[i] for i in chunk}, {i: ids[i] for i in chunk}, deadline)
            errors.update(got.errors)
            fetched += len(got.blobs)
            rows, images = [], []
            for i in sorted(got.blobs):
                try:
                    images.append(load_image(got.blobs[i], name=f"task {ids[i]}"))
                    rows.append(i)
                except ImageLoadError as exc:
                    errors[i] = str(exc)
            if rows:
                keys = [content_key(got.blobs[i]) for i in rows]
                with lock:  # one labeler, one forward pass at a time
                    outputs = label_images(labeler, images, keys, target, choice, strategy, sampler)
                for i, (result, score) in zip(rows, outputs):
                    items[i] = PredictionValue(result=result, score=score, model_version=version)
            if got.not_started:
                not_reached = sorted(got.not_started) + todo[start + CHUNK:]
                break
        for i in not_reached:
            items[i] = []
        for i, message in sorted(errors.items()):
            log.warning("project %s: no VLM prediction for %s", project, message)
        counts = {"tasks_predicted": len(tasks) - len(errors) - len(not_reached), "tasks_failed": len(errors),
                  "tasks_not_predicted": len(not_reached), "images_fetched": fetched}
        return items, counts
