"""Classifier heads per project version, kept in memory per process and reloaded when the version changes.

Version r0 is built on demand: zero-shot from the embedder's text tower (CLIP), or a uniform prior before any
annotation (image-only embedders). Later versions are loaded from their safetensors folder in MODEL_DIR.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from backend.labels import ImageClassification

log = logging.getLogger(__name__)


def prior_head(target: ImageClassification, embedder):
    """Return an untrained head for `target`: zero-shot text weights when the embedder has a text tower,
    else all-zero weights (uniform probabilities)."""
    from labelers.head import ClassifierHead

    head = ClassifierHead(list(target.labels), multi_label=target.multiple)
    if getattr(embedder, "has_text", False):
        head.init_from_text(text_weights(target, embedder), embedder.logit_scale)
    else:
        head.logits(np.zeros((1, embedder.dim), np.float32))  # initialises the zero prior at the right size
    return head


def text_weights(target: ImageClassification, embedder) -> np.ndarray:
    """Return one unit vector per label: the mean zero-shot weight over the label's model names."""
    rows = []
    for names in target.model_names:
        mean = embedder.zero_shot_weights(list(names)).mean(axis=0)
        rows.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(rows).astype(np.float32)


class HeadCache:
    """(project, model_version, labels) -> head; thread-safe. Old entries of a project are dropped on reload."""

    def __init__(self):
        self._heads: dict[str, tuple[tuple, Any]] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times a head was built or read from disk (tests check it stays put)

    def get(self, project: str, version, target: ImageClassification, embedder):
        """Return the head serving `version` (a store.Version) for `target`; raises on an unreadable folder."""
        key = (version.model_version, target.labels, target.multiple, embedder.id)
        with self._lock:
            entry = self._heads.get(project)
            if entry and entry[0] == key:
                return entry[1]
        from labelers.head import ClassifierHead

        if version.head_dir:
            head = ClassifierHead.load(version.head_dir)
        else:
            head = prior_head(target, embedder)
        with self._lock:
            self._heads[project] = (key, head)
            self.loads += 1
        log.info("project %s: serving head %s", project, version.model_version)
        return head


def label_probabilities(head, target: ImageClassification, features: np.ndarray) -> np.ndarray:
    """Return probabilities (N, len(target.labels)) in the label config's order.

    A head trained before the label config changed may know other classes: labels it does not know get 0
    (single choice rows are renormalised), classes the config no longer has are dropped.
    """
    probs = head.predict_proba(features)
    if list(head.class_names) == list(target.labels):
        return probs
    index = {name: j for j, name in enumerate(head.class_names)}
    out = np.zeros((len(features), len(target.labels)), np.float64)
    for k, label in enumerate(target.labels):
        if label in index:
            out[:, k] = probs[:, index[label]]
    if not target.multiple:
        total = out.sum(axis=1, keepdims=True)
        out = np.where(total > 0, out / np.where(total > 0, total, 1), 1.0 / len(target.labels))
    return out


def scores(probs: np.ndarray, strategy: str, multiple: bool, keys: list | None = None) -> np.ndarray:
    """Return the confidence score per row for Label Studio (low = most informative).

    Multi-label rows are scored as K yes/no questions; the least confident question sets the row's score.
    """
    from labelers.strategies import prediction_score

    if not multiple:
        if probs.shape[1] < 2:
            return np.ones(len(probs))
        return prediction_score(probs, strategy, keys=keys)
    n, k = probs.shape
    binary = np.stack([probs.reshape(-1), 1.0 - probs.reshape(-1)], axis=1)
    per_class_keys = [f"{key}:{j}" for key in (keys or range(n)) for j in range(k)] if strategy == "random" else None
    per_class = prediction_score(binary, strategy, keys=per_class_keys).reshape(n, k)
    return per_class.min(axis=1)


def choose(probs_row: np.ndarray, target: ImageClassification) -> list[str]:
    """Return the labels to pre-select for one task: the top class (single choice) or every class whose
    probability clears the threshold (multiple choice, 0.5 unless model_score_threshold says otherwise)."""
    threshold = target.score_threshold
    if target.multiple:
        cut = 0.5 if threshold is None else threshold
        return [label for label, p in zip(target.labels, probs_row) if p >= cut]
    best = int(np.argmax(probs_row))
    if threshold is not None and probs_row[best] < threshold:
        return []
    return [target.labels[best]]


def head_predictions(head, target: ImageClassification, embedded, strategy: str, model_version: str):
    """Return one item per task of `embedded` (a backend.embedding.TaskEmbeddings): a PredictionValue with the
    head's labels and score; an empty result with score None for an unreadable image; [] for a task still
    pending (not predicted: Label Studio stores nothing and asks again)."""
    from backend.schemas import PredictionValue

    items: list = [PredictionValue(result=[], score=None, model_version=model_version)
                   for _ in range(len(embedded.features))]
    rows = np.flatnonzero(embedded.ok)
    if len(rows):
        probs = label_probabilities(head, target, embedded.features[rows])
        row_scores = scores(probs, strategy, target.multiple, keys=[embedded.keys[i] for i in rows])
        for j, i in enumerate(rows):
            labels = choose(probs[j], target)
            items[i] = PredictionValue(result=[target.region(labels)] if labels else [],
                                       score=round(float(row_scores[j]), 6), model_version=model_version)
    for i in embedded.pending:
        items[i] = []
    return items
