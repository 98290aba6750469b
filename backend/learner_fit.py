"""The learner's fit in a retrain: label spreading over a project's embedded pool, and the "+kmeans" batch.

Kept apart from backend.learners (the served PoolScores and the settings) because it needs backend.heads'
probabilities, and backend.heads loads PoolScores: one module each way keeps the imports acyclic.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from backend.cold_start import project_embeddings, project_seed
from backend.heads import label_probabilities, scores
from backend.learners import GraphCache, LearnerFit, PoolScores, kmeans_batch

log = logging.getLogger("backend.learners")  # the same logger as the settings and served scores


class PoolLearner:
    """Fits a project's learner in the retrain: label spreading over its embedded pool's k-NN graph."""

    def __init__(self, store, cache, graphs: GraphCache):
        self.store, self.cache, self.graphs = store, cache, graphs

    def fit(self, project: str, configured: str, target, embedder_id: str, labeled_keys: list[str | None],
            y: np.ndarray, head=None, strategy: str = "margin", diversity: str | None = None,
            batch_size: int = 20, self_train: int = 0, features: np.ndarray | None = None,
            refit: Callable | None = None) -> LearnerFit:
        """Return the LearnerFit of `configured` for annotations `y` (class indices in `target.labels` order)
        on the images `labeled_keys`, with the KmeansBatch of `strategy` over the pool when `diversity` is
        "kmeans" (`head`: the version's fitted head).

        `self_train` > 0 ("+self<N>"): once spread, the head is refitted by `refit(features, labels, warm_start)`
        (the retrain's own head fit) on the annotations (`features`, `y`) plus the `self_train` surest unlabelled
        pool rows per class under the mix (labelers.self_training.confident_pseudo_labels), warm-started from
        `head`; the fit then carries that head (`fit.head`) and `fit.pseudo_labels`, and the batch ranks with it.

        Never raises: a learner that cannot run falls back to the head, a self-training or a batch that cannot
        run is left out, each with the reason in the fit and in the log."""
        fit = LearnerFit("head", "head")
        if configured != "head":
            try:
                fit = self._fit(project, configured, target, embedder_id, labeled_keys, y)
            except Exception as exc:  # the head is published either way: never fail the retrain for it
                reason = f"label spreading failed ({type(exc).__name__}: {exc})"
                log.error("project %s: %s; serving the head's probabilities (learner %s not used)", project,
                          reason, configured)
                fit = LearnerFit(configured, "head", reason=reason)
        fit.configured_diversity, fit.configured_self_train = diversity, self_train
        if self_train:
            self._self_train(fit, project, target, embedder_id, labeled_keys, features, y, head, self_train, refit)
        if diversity == "kmeans":
            self._add_batch(fit, project, target, embedder_id, labeled_keys, fit.head or head, strategy,
                            batch_size)
        return fit

    def _self_train(self, fit: LearnerFit, project, target, embedder_id, labeled_keys, features, y, head,
                    per_class: int, refit) -> None:
        """Set `fit.head` to the head refitted on annotations + pseudo-labels (see `fit`), or leave the plain
        head with the reason in `fit.reason` and an error in the log."""
        from labelers.self_training import confident_pseudo_labels

        try:
            if fit.pool is None or fit.pool.scores is None:
                raise ValueError(f"no pool scores to take pseudo-labels from (learner {fit.used} used)")
            keys, pool_features = project_embeddings(self.store, self.cache, project, embedder_id)
            if pool_features is None:
                raise ValueError("no embedded image")
            # The same probabilities /predict serves for these tasks: the head's, mixed with the spreading's.
            proba = fit.pool.combine(label_probabilities(head, target, pool_features), keys, pool_features,
                                     self.cache.get_many)
            labeled = set(labeled_keys)
            rows, classes = confident_pseudo_labels(proba, [i for i, k in enumerate(keys) if k in labeled],
                                                    per_class)
            fit.head = refit(np.concatenate([features, pool_features[rows]]),
                             np.concatenate([np.asarray(y, np.int64), classes]), head)
            fit.pseudo_labels = int(len(rows))
        except Exception as exc:  # the plain head is published: said, never silent
            why = (f"+self not applied ({type(exc).__name__}: {exc}); the head fitted on the annotations alone "
                   "is published")
            log.error("project %s: %s", project, why)
            fit.reason = "; ".join(filter(None, [fit.reason, why]))
            fit.head, fit.pseudo_labels = None, None
            return
        log.info("project %s: head refitted on %d annotations + %d pseudo-labels (+self%d)", project, len(y),
                 fit.pseudo_labels, per_class)

    def _add_batch(self, fit: LearnerFit, project, target, embedder_id, labeled_keys, head, strategy,
                   size) -> None:
        """Attach the KmeansBatch of the version to `fit.pool` (a head-only PoolScores when there is none)."""

        try:
            if target.multiple:
                raise ValueError("a multi-label project: the batch picks one class per task")
            keys, features = project_embeddings(self.store, self.cache, project, embedder_id)
            if features is None:
                raise ValueError("no embedded image")
            probs = label_probabilities(head, target, features)
            if fit.pool is not None:
                probs = fit.pool.combine(probs, keys, features, self.cache.get_many)
            batch = kmeans_batch(keys, probs, features, set(labeled_keys), strategy, size, project_seed(project),
                                 lambda p, k: scores(p, strategy, False, keys=k))
        except Exception as exc:  # the version is published without the batch: said, never silent
            why = f"+kmeans batch not built ({type(exc).__name__}: {exc}); tasks ordered by the strategy's score"
            log.error("project %s: %s", project, why)
            fit.reason = "; ".join(filter(None, [fit.reason, why]))
            return
        if fit.pool is None:
            fit.pool = PoolScores("head", [], None, tuple(target.labels), embedder_id, 0, 0.0)
        fit.pool.batch = batch
        fit.diversity = "kmeans"

    def _fit(self, project, configured, target, embedder_id, labeled_keys, y) -> LearnerFit:
        from labelers.propagation import DEFAULT_K, spread

        def fallback(reason: str) -> LearnerFit:
            log.warning("project %s: learner %s not used: %s; serving the head's probabilities", project,
                        configured, reason)
            return LearnerFit(configured, "head", reason=reason)

        if target.multiple:
            return fallback("a multi-label project: label spreading needs one class per task")
        y = np.asarray(y, np.int64)
        if len(np.unique(y)) < 2:
            return fallback(f"annotations of {len(np.unique(y))} class(es): label spreading needs at least 2")

        keys = sorted(self.store.project_content_keys(project))
        if len(keys) < 3:
            return fallback(f"{len(keys)} embedded image(s): a k-NN graph needs at least 3")
        graph_keys, graph, info = self.graphs.graph(
            project, embedder_id, keys, lambda: project_embeddings(self.store, self.cache, project, embedder_id, keys),
            min(DEFAULT_K, len(keys) - 1))
        row = {key: i for i, key in enumerate(graph_keys)}
        seeds = [(row[key], label) for key, label in zip(labeled_keys, y) if key in row]
        if len({label for _, label in seeds}) < 2:
            return fallback("fewer than 2 annotated classes among the graph's images")
        if len(seeds) < len(y):
            info["labeled_outside_graph"] = len(y) - len(seeds)
        rows, labels = (np.asarray(v) for v in zip(*seeds))
        scores = spread(graph, rows, labels, len(target.labels))
        pool = PoolScores(configured, graph_keys, scores.astype(np.float32), tuple(target.labels), embedder_id,
                          graph.k, graph.power)
        return LearnerFit(configured, configured, pool=pool, graph=info)
