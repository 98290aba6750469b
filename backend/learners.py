"""The learner behind a project's probabilities: the linear head alone, label spreading over a k-NN graph of
the project's cached embeddings ("lp"), or the mean of both ("mix", the default: benchmarks/RESULTS.md,
"al_semi_supervised_*", and docs/backend.md §4 "Learner").

Everything costly happens in the retrain, never in /predict:

- `GraphCache.graph` returns the k-NN graph (labelers.propagation.knn_graph) over the project's embedded
  images: reused while the pool is unchanged or grew by less than REBUILD_FRACTION, rebuilt in full
  otherwise; kept in memory and in MODEL_DIR/graphs (so a restart or the other worker does not rebuild it).
- `PoolLearner.fit` spreads the annotations over that graph and returns a `PoolScores`: the (N, K) spread
  scores of the graph's rows, by content key. The trainer saves it into the version's head folder
  (LEARNER_FILE), so it is published, digested and served together with the head.
- "+self<N>" (backend.learner_fit): the head is refitted on the annotations plus the N unannotated pool rows
  per class the mix is surest of (labelers.self_training), and that head is published ("-mix-self-").
- At /predict, `PoolScores.combine` looks a task's lp part up by content key; a task embedded after the graph
  was built gets it from its k nearest graph rows (labelers.propagation.predict_from_neighbours), searched
  once per version and content key: by the warmer (`PoolScores.prepare`, backend.warmer) after it embeds the
  task or after a retrain publishes, else by the first /predict that shows it.

A learner that cannot run (a multi-label project, annotations of fewer than two classes, too few embedded
images, a graph build that raises) falls back to the head LOUDLY: an error or warning in the log, a published
version without the learner's name, and /metrics `learner` {"configured", "used", "reason"}.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from backend.row_memo import RowMemo

log = logging.getLogger(__name__)

LEARNERS = ("head", "mix", "lp")
LEARNER_FILE = "learner.npz"
STATE_KEY = "learner"  # the project's kv entry that /metrics and `labelloop status` read
# The graph is rebuilt in full when the embedded pool grew by this fraction since it was built (cold_start's
# rule); smaller arrivals get their lp part from their nearest graph rows, which is what predict_new is for.
REBUILD_FRACTION = 0.25
LATE_ROWS = 100_000  # label spreading rows kept for tasks outside the graph (K floats each); past it, start over
# Modifiers of the simulator's strategy specs (labelers.simulate.parse_strategy) that name a learner.
LEARNER_MODIFIERS = {"head": "head", "mix": "mix", "lp": "lp"}
# The simulator's other batch modifiers: not served (the backend's cold-start order already covers the pool
# before the head has evidence, docs/backend.md §4a, which is what +typical / +cover<N> do).
UNSERVED_MODIFIERS = ("balance", "typical", "cover<N>", "nn<N>")


@dataclass(frozen=True)
class StrategySpec:
    """A parsed strategy spec: "margin+kmeans+mix" -> base "margin", learner "mix", diversity "kmeans"."""

    base: str
    learner: str | None = None     # None: the learner setting decides
    diversity: str | None = None   # "kmeans": the top of the list is a k-means-diverse batch (KmeansBatch)
    self_train: int = 0            # "+self<N>": the head refitted on N pseudo-labels per class (0: off)


def _self_modifier(modifier: str) -> int:
    """Return the per-class count of a "+self" / "+self<N>" modifier (N >= 1), or 0 for any other modifier."""
    from labelers.self_training import DEFAULT_PER_CLASS

    if modifier == "self":
        return DEFAULT_PER_CLASS
    rest = modifier[4:] if modifier.startswith("self") else ""
    return int(rest) if rest.isdigit() and int(rest) > 0 else 0


def parse_strategy(spec: str, strategies: tuple[str, ...]) -> StrategySpec:
    """Parse "margin", "margin+mix", "margin+kmeans", "margin+kmeans+mix" or "margin+kmeans+mix+self"
    ("+self<N>": N pseudo-labels per class; modifiers in any order).

    Raises ValueError naming the accepted values for an unknown strategy or modifier, a modifier given twice,
    two learners, or "+self" with "+head" (self-training needs the pool scores of mix, see check_self_train)."""
    base, *modifiers = str(spec).strip().split("+")
    accepted = (f"accepted: {', '.join(map(repr, strategies))}, optionally with '+kmeans', '+self' (or "
                f"'+self<N>', N >= 1) and one learner modifier {', '.join(repr('+' + m) for m in LEARNER_MODIFIERS)}"
                " (e.g. 'margin+kmeans+mix+self')")
    if base not in strategies:
        raise ValueError(f"unknown strategy {base!r} in {spec!r}; {accepted}")
    others = [m for m in modifiers if m not in LEARNER_MODIFIERS and m != "kmeans" and not _self_modifier(m)]
    if others:
        raise ValueError(f"strategy {spec!r}: modifier(s) {', '.join('+' + m for m in others)} not served by the "
                         f"backend (the simulator's +{', +'.join(UNSERVED_MODIFIERS)} included); {accepted}")
    learners = [LEARNER_MODIFIERS[m] for m in modifiers if m in LEARNER_MODIFIERS]
    selfs = [_self_modifier(m) for m in modifiers if _self_modifier(m)]
    if len(learners) > 1 or len(selfs) > 1 or len(set(modifiers)) < len(modifiers):
        raise ValueError(f"strategy {spec!r} repeats a modifier or names two learners; {accepted}")
    parsed = StrategySpec(base, learners[0] if learners else None, "kmeans" if "kmeans" in modifiers else None,
                          selfs[0] if selfs else 0)
    if parsed.learner:
        check_self_train(parsed.self_train, parsed.learner, spec)
    return parsed


def check_self_train(self_train: int, learner: str, spec: str) -> None:
    """Raise ValueError when strategy `spec` asks for "+self" (`self_train` > 0) with a learner other than mix:
    the pseudo-labels come from the pool's mix probabilities (head + label spreading) and refit the head, so
    the head alone has no pool scores to take them from, and lp serves no head to refit."""
    if self_train and learner != "mix":
        why = ("the head learner has no pool scores to take pseudo-labels from" if learner == "head" else
               "the lp learner serves label spreading alone, so a refitted head would change nothing served")
        raise ValueError(f"strategy {spec!r}: '+self' refits the head on the mix learner's surest pool rows; {why}"
                         " (use the mix learner, e.g. 'margin+kmeans+mix+self')")


def resolve_learner(spec_learner: str | None, extra_learner: Any, default: str) -> str:
    """Return the learner of a project: the strategy's modifier, else extra_params "learner", else `default`.

    Raises ValueError for a learner not in LEARNERS or a strategy modifier that contradicts extra_params."""
    if extra_learner is not None and extra_learner not in LEARNERS:
        raise ValueError(f"extra_params learner {extra_learner!r} is not one of {', '.join(LEARNERS)}")
    if spec_learner and extra_learner and spec_learner != extra_learner:
        raise ValueError(f"extra_params strategy names learner {spec_learner!r} but extra_params learner is "
                         f"{extra_learner!r}; give one of them")
    return spec_learner or extra_learner or default


# -- what a version serves -------------------------------------------------------------------------------------
@dataclass
class PoolScores:
    """A version's label spreading: spread `scores` (N, K, classes in `labels` order) of the graph's rows."""

    learner: str                 # "mix" | "lp" | "head" (a head version with a k-means batch only)
    keys: list[str]              # content key of each graph row ([] for "head")
    scores: np.ndarray | None    # (N, K) float32, labelers.propagation.spread output (None for "head")
    labels: tuple[str, ...]
    embedder_id: str
    k: int
    power: float
    batch: "KmeansBatch | None" = None
    row: dict[str, int] = field(default_factory=dict, repr=False)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # content key -> label spreading row of a task embedded after the graph: its neighbour search (100-165 ms
    # per 100 tasks on 10k graph rows) runs once per version, not in every /predict that shows the task
    _late: RowMemo = field(default_factory=lambda: RowMemo(LATE_ROWS, "label spreading rows of late tasks"),
                           repr=False)

    def __post_init__(self):
        self.row = {key: i for i, key in enumerate(self.keys)}

    def save(self, folder: str | Path) -> None:
        """Write LEARNER_FILE into `folder` (the head's staging folder)."""
        meta = {"learner": self.learner, "labels": list(self.labels), "embedder_id": self.embedder_id,
                "k": self.k, "power": self.power, "batch": self.batch.keys if self.batch else None}
        scores = np.zeros((0, len(self.labels)), np.float32) if self.scores is None else self.scores
        rest = self.batch.rest if self.batch else np.zeros(0)
        with open(Path(folder) / LEARNER_FILE, "wb") as fh:
            np.savez(fh, scores=scores.astype(np.float32), keys=np.asarray(self.keys, dtype=str),
                     meta=np.asarray(json.dumps(meta)), rest=rest.astype(np.float64))

    @classmethod
    def load(cls, folder: str | Path) -> "PoolScores | None":
        """Return the PoolScores saved in `folder`, or None when it has none (a head-only version)."""
        path = Path(folder) / LEARNER_FILE
        if not path.exists():
            return None
        with np.load(path) as data:  # plain arrays (keys as fixed-width text): no pickle
            meta = json.loads(str(data["meta"]))
            batch = KmeansBatch(meta["batch"], data["rest"]) if meta.get("batch") is not None else None
            scores = None if meta["learner"] == "head" else data["scores"]
            return cls(meta["learner"], [str(k) for k in data["keys"]], scores, tuple(meta["labels"]),
                       meta["embedder_id"], int(meta["k"]), float(meta["power"]), batch)

    def combine(self, head_probs: np.ndarray, keys: list[str | None], features: np.ndarray,
                vectors: Callable[[str, list[str]], dict[str, np.ndarray]]) -> np.ndarray:
        """Return the learner's (M, K) probabilities for M tasks from the head's (`head_probs`, label order):
        "mix" their mean with label spreading, "lp" label spreading alone.

        A task in the graph reads its row; one embedded later (or without a key) is predicted from its k
        nearest graph rows, whose vectors `vectors(embedder_id, keys)` reads once (from the embedding cache).
        Raises ValueError when the graph's vectors are no longer all cached (the caller serves the head)."""
        from labelers.propagation import scores_to_proba

        if self.learner == "head":
            return head_probs
        lp = np.empty_like(head_probs, dtype=np.float64)
        rows = [self.row.get(key) if key is not None else None for key in keys]
        known = np.asarray([r is not None for r in rows], bool)
        if known.any():
            lp[known] = scores_to_proba(self.scores[[r for r in rows if r is not None]])
        if not known.all():
            lp[~known] = self._late_rows([keys[i] for i in np.flatnonzero(~known)], features[~known], vectors)
        return lp if self.learner == "lp" else 0.5 * (np.asarray(head_probs, np.float64) + lp)

    def unsearched(self, keys: list[str]) -> list[str]:
        """Return the keys among `keys` outside the graph whose spread row is not memoised ([] for "head")."""
        if self.learner == "head":
            return []
        return [key for key in self._late.missing(keys) if key not in self.row]

    def prepare(self, keys: list[str], features: np.ndarray, vectors, chunk: int = 256) -> int:
        """Search, ahead of /predict, the neighbours of the tasks among `keys` (content keys, `features` their
        rows) that are outside the graph and not searched yet, and keep their spread rows in the memo that
        `combine` reads (the warmer calls this after embedding new tasks, and after a retrain publishes a
        version: backend.warmer). Returns how many were searched. Raises what `combine` raises for them (the
        graph's vectors no longer all cached); a /predict that comes first searches them itself."""
        if self.learner == "head":
            return 0
        todo = {key: i for i, key in enumerate(keys)  # each content key once
                if key is not None and key not in self.row and key not in self._late}
        rows = list(todo.values())
        for start in range(0, len(rows), chunk):  # bounded temporaries: chunk x graph rows of similarities
            part = rows[start:start + chunk]
            self._late_rows([keys[i] for i in part], features[part], vectors)
        return len(rows)

    def _late_rows(self, keys: list[str | None], features: np.ndarray, vectors) -> np.ndarray:
        """Return the spread rows (M, K) of tasks outside the graph: from their k nearest graph rows, searched
        once per content key (kept in `_late`; a task without key is searched every time)."""
        from labelers.propagation import predict_from_neighbours

        found, _ = self._late.rows(keys, lambda todo: predict_from_neighbours(
            self.scores, self._neighbours(features[todo], vectors)))
        return np.stack(found)

    def _neighbours(self, features: np.ndarray, vectors) -> tuple[np.ndarray, np.ndarray]:
        from labelers.propagation import KnnGraph, new_neighbours
        from labelers.similarity import normalize

        with self._lock:
            if self._vectors is None:
                got = vectors(self.embedder_id, self.keys)
                missing = [key for key in self.keys if key not in got]
                if missing:
                    raise ValueError(f"{len(missing)} of the graph's {len(self.keys)} embeddings are no longer "
                                     "cached")
                self._vectors = normalize(np.stack([got[key] for key in self.keys]), "graph embeddings")
        # Only the pool's vectors, k and power are read by new_neighbours: the matrix is not needed here.
        return new_neighbours(KnnGraph(None, self._vectors, self.k, self.power), features)


def published_learner(store, project: str) -> tuple[str, str | None, int] | None:
    """Return (learner, diversity, self-training per class) the project's served version was configured with,
    or None before any retrain."""
    raw = store.kv_get(project, STATE_KEY)
    state = json.loads(raw) if raw else None
    if not state or state.get("model_version") != store.current_version(project):
        return None
    return state.get("configured"), state.get("configured_diversity"), int(state.get("configured_self_train") or 0)


def learner_status(store, project: str) -> dict[str, Any] | None:
    """Return /metrics `learner` of a project: {"configured", "used", "fallback", "model_version", "graph"} of
    the version it serves, or None before its first retrain."""
    raw = store.kv_get(project, STATE_KEY)
    state = json.loads(raw) if raw else None
    if state and state.get("model_version") != store.current_version(project):
        state["stale"] = "recorded for another version (one published before learners were recorded)"
    return state


@dataclass
class KmeansBatch:
    """The "+kmeans" order of a version: `keys`, a k-means-diverse batch of the most uncertain unlabelled
    tasks (labelers.strategies.select_batch, diversity "kmeans"), comes first; every other task follows by its
    strategy score, placed among `rest`, the sorted scores of the pool's other tasks at the retrain.

    A task's exported score is its place in that order divided by its length (in [0, 1), lowest first), as
    the cold-start order's: a rank, not a confidence; each pre-selected region still carries its probability."""

    keys: list[str]
    rest: np.ndarray
    place: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.keys = [str(k) for k in self.keys]
        self.rest = np.sort(np.asarray(self.rest, np.float64))
        self.place = {key: i for i, key in enumerate(self.keys)}

    def ranks(self, keys: list[str | None], scores: np.ndarray) -> np.ndarray:
        """Return the rank score of each task from its content key and its strategy score (see the class)."""
        total = len(self.keys) + len(self.rest) + 1
        after = len(self.keys) + np.searchsorted(self.rest, np.asarray(scores, np.float64), side="left")
        placed = [self.place.get(key) if key is not None else None for key in keys]
        return np.asarray([p if p is not None else a for p, a in zip(placed, after)], np.float64) / total


def kmeans_batch(keys: list[str], probs: np.ndarray, features: np.ndarray, labeled: set[str], strategy: str,
                 size: int, seed: int, score_fn: Callable[[np.ndarray, list[str]], np.ndarray]) -> KmeansBatch:
    """Return the KmeansBatch of a pool (`keys`, the learner's `probs`, `features`): `size` picks among the
    rows not in `labeled`, then the strategy scores (`score_fn(probs, keys)`) of every other row."""
    from labelers.strategies import select_batch

    open_rows = np.asarray([i for i, key in enumerate(keys) if key not in labeled], np.int64)
    picks = open_rows[select_batch(probs[open_rows], size, strategy, features=features[open_rows],
                                   diversity="kmeans", seed=seed)] if len(open_rows) else open_rows
    others = np.setdiff1d(np.arange(len(keys)), picks)
    scores = score_fn(probs[others], [keys[i] for i in others]) if len(others) else np.zeros(0)
    return KmeansBatch([keys[i] for i in picks], scores)


# -- built in the retrain ----------------------------------------------------------------------------------------
@dataclass
class LearnerFit:
    """What a retrain's learner step gives the trainer: the learner used and why, and what to publish."""

    configured: str
    used: str
    pool: PoolScores | None = None
    reason: str | None = None    # why `used` differs from `configured` (or the k-means batch is missing)
    graph: dict[str, Any] | None = None  # {"rows", "built_seconds" | "reused", "new_since"}
    diversity: str | None = None  # "kmeans" when the version carries a KmeansBatch
    configured_diversity: str | None = None
    configured_self_train: int = 0  # "+self<N>": pseudo-labels per class asked for (0: off)
    pseudo_labels: int | None = None  # how many the published head was refitted on (None: no self-training)
    head: Any = None  # the head to publish when self-training refitted it (None: the retrain's plain head)

    @property
    def tag(self) -> str:
        """What the version name says: "head" (nothing), "mix", "lp", "kmeans", "mix-kmeans", "mix-self",
        "mix-self-kmeans", ..."""
        parts = (([] if self.used == "head" else [self.used]) + (["self"] if self.pseudo_labels is not None else [])
                 + ([self.diversity] if self.diversity else []))
        return "-".join(parts) or "head"

    def state(self, model_version: str) -> dict[str, Any]:
        """The /metrics `learner` entry of the version published with this fit."""
        return {"configured": self.configured, "used": self.used, "fallback": self.reason,
                "diversity": self.diversity, "configured_diversity": self.configured_diversity,
                "configured_self_train": self.configured_self_train, "pseudo_labels": self.pseudo_labels,
                "model_version": model_version, "graph": self.graph}


class SavedWithPool:
    """A head whose `save` also writes the version's PoolScores: what HeadTrainer.publish saves."""

    def __init__(self, head, pool: PoolScores | None):
        self.head, self.pool = head, pool

    def save(self, folder):
        out = self.head.save(folder)
        if self.pool is not None:
            self.pool.save(folder)
        return out


def _pool_digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


class GraphCache:
    """The k-NN graph of each project's embedded pool: in memory, and in `folder` across restarts/workers."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._graphs: dict[tuple[str, str], tuple[list[str], Any]] = {}
        self._lock = threading.Lock()
        self.built = 0  # how many graphs were built (tests check a retrain on an unchanged pool reuses it)

    def graph(self, project: str, embedder_id: str, keys: list[str],
              load: Callable[[], tuple[list[str], np.ndarray | None]],
              k: int) -> tuple[list[str], Any, dict[str, Any]]:
        """Return (graph keys, KnnGraph without its vectors, info) for the pool `keys` (embedded content keys):
        the cached graph when the pool is unchanged or grew by less than REBUILD_FRACTION (and lost no row),
        else one built over `load()` -> (keys, features) (read only then: 10k x 1280 floats take a while).
        Raises ValueError when fewer than 3 images are embedded."""
        from labelers.propagation import knn_graph

        with self._lock:
            entry = self._graphs.get((project, embedder_id)) or self._read(project, embedder_id, keys)
        if entry is not None:
            old_keys, graph = entry
            current = set(keys)
            new = len(current) - len(current.intersection(old_keys))
            if set(old_keys) <= current and graph.k == k and new < REBUILD_FRACTION * len(old_keys):
                return old_keys, graph, {"rows": len(old_keys), "reused": True, "new_since": new}
        keys, features = load()
        if features is None or len(keys) < 3:
            raise ValueError(f"{len(keys)} embedded image(s): a k-NN graph needs at least 3")
        started = time.perf_counter()
        graph = knn_graph(features, k=min(k, len(keys) - 1))
        graph.vectors = None  # 50 MB at 10k x 1280: serving reads them from the cache only when it needs them
        seconds = round(time.perf_counter() - started, 3)
        self.built += 1
        log.info("project %s: k-NN graph over %d embedded images built in %.2fs (k=%d, %s search)", project,
                 len(keys), seconds, k, getattr(graph, "search", "exact"))
        with self._lock:
            self._graphs[(project, embedder_id)] = (list(keys), graph)
        self._write(project, embedder_id, keys, graph)
        return list(keys), graph, {"rows": len(keys), "built_seconds": seconds, "new_since": 0}

    def _path(self, project: str, embedder_id: str) -> Path:
        name = hashlib.sha256(f"{project}\0{embedder_id}".encode()).hexdigest()[:16]
        return self.folder / f"graph-{name}.npz"

    def _write(self, project: str, embedder_id: str, keys: list[str], graph) -> None:
        """Best effort: a graph not saved is rebuilt by the next process that needs it (logged)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(project, embedder_id)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                m = graph.matrix.tocsr()
                np.savez(fh, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.asarray(m.shape),
                         keys=np.asarray(keys, dtype=str), k=graph.k, power=graph.power,
                         digest=np.asarray(_pool_digest(keys)))
            tmp.replace(path)
        except OSError as exc:
            log.warning("project %s: k-NN graph not saved (%s); the next process rebuilds it", project, exc)

    def _read(self, project: str, embedder_id: str, keys: list[str]):
        """Return (keys, KnnGraph) saved for the project when its rows are still all in the pool, else None."""
        import scipy.sparse as sp
        from labelers.propagation import KnnGraph

        path = self._path(project, embedder_id)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                saved = [str(k) for k in data["keys"]]
                if not set(saved) <= set(keys):
                    return None
                matrix = sp.csr_matrix((data["data"], data["indices"], data["indptr"]), shape=tuple(data["shape"]))
                graph = KnnGraph(matrix, None, int(data["k"]), float(data["power"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("project %s: saved k-NN graph %s unreadable (%s); rebuilding it", project, path, exc)
            return None
        self._graphs[(project, embedder_id)] = (saved, graph)
        return saved, graph
