"""Classifier heads per project version, kept in memory per process and reloaded when the version changes.

Version r0 is built on demand: zero-shot from the embedder's text tower (CLIP); with EfficientNet-Lite0 (no
text tower) the label names mapped onto its ImageNet classes through WordNet (labelers.imagenet_prior) are
the prior of the labels that match, the others keep the uniform prior. Retrained heads start from the same
prior. Later versions are loaded from their safetensors folder in MODEL_DIR.

Before the head has evidence (image-only embedder, fewer than COLD_START_PER_LABEL annotations per label),
the score is the project's cold-start order (backend.cold_start), and a label is pre-checked only when the
model has evidence for it: see `choose`.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from backend.labels import ImageClassification
from backend.prior_cache import PriorCache

log = logging.getLogger(__name__)

# The cold-start order ranks tasks until the served head was trained on this many annotations per label.
COLD_START_PER_LABEL = 2
# Without annotations, a label is pre-checked from the ImageNet prior only at this probability or more
# (and at least twice the uniform 1/K): below it the pre-check would be wrong more often than right.
PRIOR_PRECHECK = 0.7  # r0 on CIFAR-10 at 224 px: a third pre-checked, 75 % right (RESULTS.md)


def has_imagenet_classifier(embedder) -> bool:
    """True for an embedder ending in an ImageNet-1k classifier (EfficientNet-Lite0), which gives a prior."""
    fc = getattr(getattr(embedder, "model", None), "_fc", None)
    return getattr(fc, "out_features", None) == 1000


class ImageNetPriors:
    """The WordNet -> ImageNet prior of each label set, computed once per (labels, embedder); thread-safe.

    `status()` is what /health says: per label set, which labels got a prior (and from which classes)."""

    def __init__(self):
        self._priors: dict[tuple, Any] = {}
        self._status: dict[tuple, dict[str, Any]] = {}
        self._lock = threading.Lock()  # guards the dicts only: /health never waits for a prior being built
        self._building: dict[tuple, threading.Lock] = {}  # one lock per label set while its prior is built
        self.built = 0  # how many priors were computed (tests check one per label set)

    def get(self, target: ImageClassification, embedder):
        """Return the ClassifierPrior for `target`'s labels, or None when the embedder has a text tower or no
        ImageNet classifier, or WordNet is missing (logged as a warning: the head starts uniform).

        Computed once per (labels, embedder): a second caller waits for the first (the background build
        started by /setup, see LabelloopModel.setup) instead of computing it again."""
        if getattr(embedder, "has_text", False) or not has_imagenet_classifier(embedder):
            return None
        key = (target.labels, target.model_names, embedder.id)
        with self._lock:
            if key in self._priors:
                return self._priors[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._priors:
                    return self._priors[key]
            prior, status = self._build(target, embedder)
            with self._lock:
                self._priors[key] = prior
                self._status[key] = {"labels": list(target.labels), "embedder": embedder.id, **status}
                self._building.pop(key, None)
                self.built += 1
            return prior

    @staticmethod
    def _build(target: ImageClassification, embedder):
        """Return (prior or None, status) for `target`'s labels: the WordNet mapping, 5-10 s on a small CPU."""
        from labelers.imagenet_prior import WordNetMissing, imagenet_prior

        try:
            prior = imagenet_prior(list(target.labels), embedder, [list(n) for n in target.model_names])
            return prior, {"matched": prior.matched, "details": prior.details}
        except WordNetMissing as exc:
            log.warning("no ImageNet prior for labels %s (%s): predictions start uniform until annotations "
                        "arrive", list(target.labels), exc)
            return None, {"matched": [], "error": str(exc)}

    def status(self) -> list[dict[str, Any]]:
        """Return one entry per label set seen: {"labels", "embedder", "matched", "details" | "error"}."""
        with self._lock:
            return list(self._status.values())


PRIORS = ImageNetPriors()  # process-wide: the mapping reads WordNet once per label set


def prior_head(target: ImageClassification, embedder, priors: ImageNetPriors | None = None):
    """Return an untrained head for `target`: zero-shot text weights when the embedder has a text tower,
    else the ImageNet prior (labels with no ImageNet class keep the uniform share), else all-zero weights
    (uniform probabilities)."""
    from labelers.head import ClassifierHead

    head = ClassifierHead(list(target.labels), multi_label=target.multiple)
    prior = (priors or PRIORS).get(target, embedder)
    if getattr(embedder, "has_text", False):
        head.init_from_text(text_weights(target, embedder), embedder.logit_scale)
    elif prior is not None:
        head.init_from_prior(prior)
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


def evidence(head) -> set[str] | None:
    """Return the labels the head has evidence for: None for all (trained, or zero-shot from text), the
    prior's matched labels for an untrained head with an ImageNet prior, else the empty set."""
    if getattr(head, "n_trained", 0) > 0:
        return None
    if getattr(head, "prior", None) is not None:
        return set(head.prior.matched)
    weight = getattr(head, "prior_weight", None)
    if weight is not None and bool((weight != 0).any()):
        return None  # text zero-shot weights
    return set()


def in_cold_start(version, embedder, target: ImageClassification) -> bool:
    """True while the score should be the cold-start order: an image-only embedder and a served version
    trained on fewer than COLD_START_PER_LABEL annotations per label (r0 has none)."""
    if getattr(embedder, "has_text", False):
        return False  # CLIP zero-shot: the head already ranks by its own uncertainty
    return version.n_annotations < COLD_START_PER_LABEL * len(target.labels)


def head_digest(folder: str | Path) -> str:
    """Return the SHA-256 over a head folder's files (names and bytes, in name order): recorded when a version
    is published and checked before its head is served, so a damaged file is refused, not served."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class HeadUnreadable(RuntimeError):
    """A published head folder cannot be served: missing, unreadable, or not the bytes that were published."""


class HeadCache:
    """(project, model_version, labels) -> head; thread-safe. Old entries of a project are dropped on reload.

    A head whose folder cannot be read, or whose files no longer match the digest recorded at publish, is
    refused with an error in the log (and in /health, `problems`); the newest earlier version whose head
    loads is served instead, and its version is what the predictions carry. The next publish replaces it.
    """

    def __init__(self, cold_start=None, priors: ImageNetPriors | None = None, store=None, cache=None):
        self._heads: dict[str, tuple[tuple, Any, Any]] = {}
        self._pools: dict[tuple[str, str], Any] = {}  # (project, version) -> its backend.learners.PoolScores
        self.cache = cache  # the embedding cache: graph vectors for tasks embedded after the graph was built
        self._learner_problems: dict[str, str] = {}  # project -> why its version's learner is not served
        self._lock = threading.Lock()
        self.loads = 0  # how many times a head was built or read from disk (tests check it stays put)
        self.cold_start = cold_start  # a backend.cold_start.ColdStartOrder, or None (strategy scores only)
        self.priors = priors or PRIORS
        self.prior_cache = PriorCache()  # the ImageNet prior's probabilities per image (backend.prior_cache)
        self.store = store  # a backend.store.Store: the earlier versions to fall back on (None: no fallback)
        self._refused: dict[tuple[str, str], str] = {}  # (project, model_version) -> why it was refused

    def get(self, project: str, version, target: ImageClassification, embedder):
        """Return the head serving `version` (a store.Version) for `target` (see `serving`)."""
        return self.serving(project, version, target, embedder)[0]

    def serving(self, project: str, version, target: ImageClassification, embedder):
        """Return (head, the store.Version it is): `version`'s head, or when that is refused the newest
        earlier version's that loads. Raises HeadUnreadable when none does (r0 always loads)."""
        key = (version.model_version, target.labels, target.multiple, embedder.id)
        with self._lock:
            entry = self._heads.get(project)
            if entry and entry[0] == key:
                return entry[1], entry[2]
        head, used = self._load_good(project, version, target, embedder)
        pool = self._load_pool(project, used)
        with self._lock:
            self._heads[project] = (key, head, used)
            self._pools = {k: v for k, v in self._pools.items() if k[0] != project}
            if pool is not None:
                self._pools[(project, used.model_version)] = pool
            self.loads += 1
        log.info("project %s: serving head %s", project, used.model_version)
        return head, used

    def _load_pool(self, project: str, version):
        """Return the version's PoolScores (label spreading, backend.learners), or None for a head-only one.
        An unreadable file serves the head, with an error in the log and in /health."""
        from backend.learners import PoolScores

        self._learner_problems.pop(project, None)  # a newly served version starts clean
        if not version.head_dir:
            return None
        try:
            return PoolScores.load(version.head_dir)
        except Exception as exc:  # digest-checked with the head, so only a changed format lands here
            self._learner_problem(project, f"learner file of {version.model_version} unreadable ({exc})")
            return None

    def _learner_problem(self, project: str, why: str) -> None:
        if self._learner_problems.get(project) != why:
            log.error("project %s: %s; serving the head's probabilities", project, why)
        self._learner_problems[project] = why

    def pool(self, project: str, version):
        """Return the PoolScores serving `version` of `project` (after `serving`), or None."""
        with self._lock:
            return self._pools.get((project, version.model_version))

    def _load_good(self, project: str, version, target: ImageClassification, embedder):
        earlier = [] if self.store is None else sorted(
            (v for v in self.store.list_versions(project) if v.revision < version.revision),
            key=lambda v: -v.revision)
        candidates = [version, *earlier]
        for i, candidate in enumerate(candidates):
            try:
                return self._load(candidate, target, embedder), candidate
            except HeadUnreadable as exc:
                self._refused[(project, candidate.model_version)] = str(exc)
                log.error("project %s: refused head %s: %s; %s", project, candidate.model_version, exc,
                          "trying the version before it" if i + 1 < len(candidates) else "no version to serve")
                if i + 1 == len(candidates):
                    raise

    def _load(self, version, target: ImageClassification, embedder):
        from labelers.head import ClassifierHead

        if not version.head_dir:
            return prior_head(target, embedder, self.priors)
        try:
            if version.head_sha256 and head_digest(version.head_dir) != version.head_sha256:
                raise HeadUnreadable(f"the files in {version.head_dir} are not the ones published (SHA-256 "
                                     "differs): damaged or replaced on disk")
            return ClassifierHead.load(version.head_dir)
        except HeadUnreadable:
            raise
        except Exception as exc:  # missing folder, truncated safetensors, bad JSON: all unservable
            raise HeadUnreadable(f"cannot read {version.head_dir} ({type(exc).__name__}: {exc})") from None

    def intact(self, version) -> bool:
        """True when `version`'s head can be served: r0, or a folder that matches its published digest (read
        whole for a version published before digests were recorded)."""
        if not version.head_dir:
            return True
        try:
            if version.head_sha256:
                return head_digest(version.head_dir) == version.head_sha256
            from labelers.head import ClassifierHead

            ClassifierHead.load(version.head_dir)
            return True
        except Exception:  # unreadable in any way: not servable
            return False

    def problems(self) -> list[str]:
        """Return one line per head this process refused (for /health), naming the version and why."""
        current = {} if self.store is None else {p: self.store.current_version(p) for p, _ in self._refused}
        refused = [f"project {project}: head {version} refused ({why}); an earlier version is served"
                   for (project, version), why in sorted(self._refused.items())
                   if self.store is None or current[project] == version]  # a newer publish ends the problem
        return refused + [f"project {project}: {why}; the head's probabilities are served"
                          for project, why in sorted(self._learner_problems.items())]

    def predictions(self, project: str, version, target: ImageClassification, embedded, strategy: str,
                    similar_scores: dict[str, float] | None = None):
        """Return the items `head_predictions` returns for `embedded` with the head serving `version`, scored
        by `similar_scores` when given ({content key: score}, backend.similar: "more like this"), else by the
        project's cold-start order while `in_cold_start` holds, else by `strategy`."""
        head, version = self.serving(project, version, target, embedded.embedder)
        cold = similar_scores
        if cold is None and self.cold_start is not None and in_cold_start(version, embedded.embedder, target):
            cold = self.cold_start.scores(project, embedded.embedder.id, len(target.labels))
        pool = self.pool(project, version)
        return head_predictions(head, target, embedded, strategy, version.model_version, cold_scores=cold,
                                mix=self._mixer(project, version, target),
                                ranks=pool.batch.ranks if pool is not None and pool.batch is not None else None,
                                prior_cache=self.prior_cache)

    def _mixer(self, project: str, version, target: ImageClassification):
        """Return f(head_probs, keys, features) -> the version's learner probabilities, or None (head only)."""
        pool = self.pool(project, version)
        if pool is None or pool.learner == "head":
            return None
        if tuple(pool.labels) != tuple(target.labels):
            self._learner_problem(project, f"{version.model_version}'s label spreading knows labels "
                                  f"{list(pool.labels)}, the label config {list(target.labels)}")
            return None

        def vectors(embedder_id: str, keys: list[str]) -> dict:
            return self.cache.get_many(embedder_id, keys) if self.cache is not None else {}

        def mix(head_probs, keys, features):
            try:
                return pool.combine(head_probs, keys, features, vectors)
            except Exception as exc:  # the graph's vectors left the cache, say: serve the head, loudly
                self._learner_problem(project, f"{pool.learner} of {version.model_version} not applied to new "
                                      f"tasks ({type(exc).__name__}: {exc})")
                return head_probs
        return mix


def label_probabilities(head, target: ImageClassification, features: np.ndarray,
                        prior_probs: np.ndarray | None = None) -> np.ndarray:
    """Return probabilities (N, len(target.labels)) in the label config's order.

    A head trained before the label config changed may know other classes: labels it does not know get 0
    (single choice rows are renormalised), classes the config no longer has are dropped. `prior_probs`:
    the head's prior's probabilities for `features` when already known (backend.prior_cache), else computed.
    """
    probs = head.predict_proba(features) if prior_probs is None else head.predict_proba(features, prior_probs)
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


def choose(probs_row: np.ndarray, target: ImageClassification, evident: set[str] | None = None) -> list[str]:
    """Return the labels to pre-select for one task: the top class (single choice) or every class whose
    probability clears the threshold (multiple choice, 0.5 unless model_score_threshold says otherwise).

    `evident`: the labels the model has evidence for (see `evidence`); None for all. Without evidence for
    all labels (an untrained head on an image-only embedder), only an evident label is pre-checked, and only
    at PRIOR_PRECHECK or more and twice the uniform 1/K: no prior, no pre-check."""
    threshold = target.score_threshold
    if evident is not None:
        floor = max(PRIOR_PRECHECK, 2.0 / len(target.labels), threshold or 0.0)
        ranked = [int(j) for j in np.argsort(-probs_row, kind="stable")]
        picks = [target.labels[j] for j in ranked if target.labels[j] in evident and probs_row[j] >= floor]
        return picks if target.multiple else picks[:1]
    if target.multiple:
        cut = 0.5 if threshold is None else threshold
        return [label for label, p in zip(target.labels, probs_row) if p >= cut]
    best = int(np.argmax(probs_row))
    if threshold is not None and probs_row[best] < threshold:
        return []
    return [target.labels[best]]


def choose_all(probs: np.ndarray, target: ImageClassification, evident: set[str] | None = None) -> list[list[str]]:
    """Return `choose(row, target, evident)` for every row of `probs` (N, K), the same lists, at a fraction of
    the cost per row: the comparisons and the argmax run once over the batch, and only rows with more than
    one pick are sorted."""
    n, labels, threshold = len(probs), target.labels, target.score_threshold
    if n == 0:
        return []
    if evident is not None:
        floor = max(PRIOR_PRECHECK, 2.0 / len(labels), threshold or 0.0)
        allowed = np.array([label in evident for label in labels], bool)
        mask = (probs >= floor) & allowed
    elif target.multiple:
        mask = probs >= (0.5 if threshold is None else threshold)
    else:
        best = np.argmax(probs, axis=1)
        if threshold is None:
            return [[labels[j]] for j in best.tolist()]
        keep = (probs[np.arange(n), best] >= threshold).tolist()
        return [[labels[j]] if ok else [] for j, ok in zip(best.tolist(), keep)]
    out: list[list[str]] = [[] for _ in range(n)]
    for i in np.flatnonzero(mask.any(axis=1)).tolist():
        picks = np.flatnonzero(mask[i])
        if evident is None:  # multiple choice without the prior's rule: in label order
            out[i] = [labels[j] for j in picks.tolist()]
            continue
        # descending probability, ties in label order: `choose`'s stable argsort of -p, restricted to picks
        ranked = picks[np.argsort(-probs[i, picks], kind="stable")].tolist()
        out[i] = [labels[j] for j in ranked] if target.multiple else [labels[ranked[0]]]
    return out


def head_predictions(head, target: ImageClassification, embedded, strategy: str, model_version: str,
                     cold_scores: dict[str, float] | None = None, mix=None, ranks=None, prior_cache=None):
    """Return one item per task of `embedded` (a backend.embedding.TaskEmbeddings): a PredictionValue with the
    head's labels and score; an empty result with score None for an unreadable image; [] for a task still
    pending (not predicted: Label Studio stores nothing and asks again).

    `cold_scores` ({content key: score}, backend.cold_start): when given, a task's score is its cold-start
    score instead of the strategy's, and each pre-checked region carries the head's probability as "score"
    (the task's score is then a rank, not a confidence).

    `mix` (HeadCache._mixer): f(head probabilities, content keys, features) -> the probabilities of the
    version's learner (head + label spreading); labels, region scores and the strategy's score use them.
    `ranks` (a backend.learners.KmeansBatch's): f(content keys, strategy scores) -> the "+kmeans" order's
    rank scores, used as the tasks' scores (each pre-checked region then carries its probability).
    `prior_cache` (a backend.prior_cache.PriorCache): where the head's ImageNet prior's probabilities per
    image are read from instead of being computed in every call."""
    from backend.schemas import PredictionValue

    items: list = [None] * len(embedded.features)  # built once each (an unread row: after the loop)
    rows = np.flatnonzero(embedded.ok)
    if len(rows):
        keys = [embedded.keys[i] for i in rows.tolist()]
        features = embedded.features[rows]
        prior = getattr(head, "prior", None)
        prior_probs = None
        if prior is not None and prior_cache is not None and embedded.embedder is not None:
            prior_probs = prior_cache.probabilities(prior, embedded.embedder.id, keys, features)
        probs = label_probabilities(head, target, features, prior_probs)
        if mix is not None:
            probs = mix(probs, keys, features)
        row_scores = scores(probs, strategy, target.multiple, keys=keys)
        if ranks is not None and cold_scores is None:
            row_scores = ranks(keys, row_scores)
        chosen = choose_all(probs, target, evidence(head))
        rank_scored = cold_scores is not None or ranks is not None  # each region then carries its probability
        column = {label: k for k, label in reversed(list(enumerate(target.labels)))}  # first index, as .index
        for j, (i, score, labels) in enumerate(zip(rows.tolist(), np.asarray(row_scores).tolist(), chosen)):
            region = target.region(labels) if labels else None
            if cold_scores is not None:
                score = _cold_score(cold_scores, keys[j], score)
            if region is not None and rank_scored:
                region["score"] = round(float(max(probs[j, column[x]] for x in labels)), 6)
            items[i] = PredictionValue(result=[region] if region else [], score=round(float(score), 6),
                                       model_version=model_version)
    for i, item in enumerate(items):
        if item is None:
            items[i] = PredictionValue(result=[], score=None, model_version=model_version)
    for i in embedded.pending:
        items[i] = []
    return items


def _cold_score(cold_scores: dict[str, float], key: str | None, fallback: float) -> float:
    """The cold-start score of an image, or `fallback` (the strategy's) for one the order does not hold:
    only a task without id or content key, since the order is recomputed after each /predict embeds."""
    return cold_scores.get(key, fallback) if key is not None else fallback
