"""Active-learning simulation with an oracle: how many labels does each strategy need?

Every strategy sees the same fixed test set, the same initial labeled pool per seed (a paired design)
and the same head training, so differences come from the query strategy alone.
A strategy spec is a base strategy plus optional modifiers: "margin", "margin+kmeans", "entropy+balance",
"gaussian+nn4" (each pick brings its 4 nearest neighbours: Active-Labeler's sampling_nn), "margin+lp" (the
learner is label spreading over the pool's k-NN graph, `labelers.propagation`, instead of the linear head:
it both scores the pool and predicts the test set), "margin+mix" (the mean of the label-spreading and
linear-head probabilities: spreading wins at a few labels per class, the head from a few dozen on, and the
mean follows the better of the two), "margin+mix+self" (self-training: each round the head is refitted on
the labels plus each class's 100 surest pseudo-labels, `labelers.self_training`; "+self<N>": N per class),
"margin+lp+typical" (this strategy's initial pool is
drawn by k-means typicality instead of the seed's shared one), "margin+cover2" (TypiClust coverage picks,
`labelers.coverage`, until 2 labels per class, then the base strategy). Compare a "+lp" strategy with "random+lp":
the same learner, so the difference is the query strategy's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .datasets import DatasetError, FeatureDataset
from .head import ClassifierHead
from .strategies import STRATEGIES, cold_start, seed_from_reference, select_batch


@dataclass
class SimulationSettings:
    """Budget schedule and protocol of one simulation."""

    strategies: tuple[str, ...] = ("random", "margin", "entropy", "least")
    initial: int = 20
    batch_size: int = 20
    rounds: int = 10
    seeds: int = 10
    test_fraction: float = 0.2
    init: str = "random"  # how the initial pool is drawn: random | typical
    l2: float = 100.0
    # Reference-image seeding: the initial pool's first `seed_nn` labels are the reference's nearest
    # neighbours (all of `initial` when seed_nn is None), the rest drawn by `init`.
    reference: np.ndarray | None = None
    seed_nn: int | None = None
    # Two-choice projects: the label index of the positive class ("Accept"); its F1 is recorded per round
    # as `positive_f1` (accuracy alone flatters a head that answers "Reject" for a rare positive class).
    positive: int | None = None
    first_seed: int = 0  # seeds run are first_seed .. first_seed + seeds - 1 (to add seeds to a saved run)


def parse_strategy(spec: str) -> tuple[str, dict]:
    """Split "margin+kmeans+balance+nn2" into ("margin", {"diversity": "kmeans", "class_balance": True,
    "n_closest": 2}). Raises ValueError naming an unknown strategy or modifier."""
    base, *modifiers = spec.split("+")
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {base!r} in {spec!r}; choose from {', '.join(STRATEGIES)}")
    options: dict = {}
    for modifier in modifiers:
        if modifier == "kmeans":
            options["diversity"] = "kmeans"
        elif modifier == "balance":
            options["class_balance"] = True
        elif modifier == "lp":
            options["learner"] = "propagation"
        elif modifier == "mix":
            options["learner"] = "mix"
        elif modifier == "typical":
            options["init"] = "typical"
        elif modifier == "self":
            from .self_training import DEFAULT_PER_CLASS

            options["self_train"] = DEFAULT_PER_CLASS
        elif modifier.startswith("self") and modifier[4:].isdigit() and int(modifier[4:]) > 0:
            options["self_train"] = int(modifier[4:])
        elif modifier.startswith("cover") and modifier[5:].isdigit() and int(modifier[5:]) > 0:
            options["cover_per_class"] = int(modifier[5:])
        elif modifier.startswith("nn") and modifier[2:].isdigit() and int(modifier[2:]) > 0:
            options["n_closest"] = int(modifier[2:])
        else:
            raise ValueError(f"unknown modifier {modifier!r} in {spec!r}; use +kmeans, +balance, +lp, +mix, +typical, "
                             "+self, +self<N>, +cover<N> or +nn<N>")
    return base, options


def check_strategies(specs) -> None:
    """Raise ValueError on the first spec that does not parse (call before any embedding or training)."""
    if not specs:
        raise ValueError("no strategies given")
    for spec in specs:
        parse_strategy(spec)


def binary_dataset(dataset: FeatureDataset, positive: str) -> FeatureDataset:
    """Return the dataset as a two-choice project: class names ("Reject", "Accept"), label 1 for `positive`.

    Active-Labeler's setting (one positive class against everything else). Raises DatasetError when the
    class is unknown.
    """
    if positive not in dataset.class_names:
        raise DatasetError(f"positive class {positive!r} is not one of {', '.join(dataset.class_names)}")
    c = dataset.class_names.index(positive)
    test = None if dataset.test_labels is None else (dataset.test_labels == c).astype(np.int64)
    return FeatureDataset(dataset.features, (dataset.labels == c).astype(np.int64), ["Reject", "Accept"],
                          dataset.test_features, test)


def initial_pool(features: np.ndarray, settings: SimulationSettings, seed: int) -> np.ndarray:
    """Return the initial labeled rows of one seed: reference neighbours first when a reference is set."""
    if settings.reference is None:
        return cold_start(features, settings.initial, settings.init, seed=seed)
    n_nn = settings.initial if settings.seed_nn is None else settings.seed_nn
    near = seed_from_reference(features, settings.reference, n_nn, seed=seed)
    rest = np.setdiff1d(np.arange(len(features)), near)
    if settings.initial == n_nn:
        return near
    extra = rest[cold_start(features[rest], settings.initial - n_nn, settings.init, seed=seed)]
    return np.concatenate([near, extra])


def describe(dataset: FeatureDataset, settings: SimulationSettings, test_source: str) -> str:
    """Return the protocol line the CLI logs: pool, test set, schedule, seeds."""
    total = settings.initial + settings.rounds * settings.batch_size
    if settings.reference is None:
        start = f"{settings.initial} ({settings.init})"
    else:
        n_nn = settings.initial if settings.seed_nn is None else settings.seed_nn
        start = f"{settings.initial} ({n_nn} nearest to the reference, {settings.initial - n_nn} {settings.init})"
    return (f"pool: {len(dataset.labels)} images, {len(dataset.class_names)} classes; "
            f"test: {len(dataset.test_labels)} images ({test_source}); "
            f"schedule: {start} then {settings.rounds} rounds of {settings.batch_size} = {total} labels; "
            f"{settings.seeds} seeds; strategies: {', '.join(settings.strategies)}")


def split_learner_options(options: dict) -> tuple[str, str | None, dict]:
    """Return (learner, init override or None, the options `select_batch` takes) from parsed modifiers
    (the coverage switch `cover_per_class` and the self-training count `self_train` stay in the last dict;
    `run_one` takes them out)."""
    options = dict(options)
    return options.pop("learner", "linear"), options.pop("init", None), options


def split_test(dataset: FeatureDataset, fraction: float, seed: int = 0) -> FeatureDataset:
    """Return the dataset with a fixed stratified test split (kept if the dataset already has one)."""
    if dataset.test_features is not None:
        return dataset
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DatasetError(f"test fraction must be in (0, 1), got {fraction}")
    train, test = train_test_split(np.arange(len(dataset.labels)), test_size=fraction, random_state=seed,
                                   stratify=dataset.labels)
    return FeatureDataset(dataset.features[train], dataset.labels[train], dataset.class_names,
                          dataset.features[test], dataset.labels[test])


class Learner:
    """The model a strategy trains each round: the linear head ("linear"), label spreading over the pool
    graph ("propagation"), or the mean of their probabilities ("mix").

    `fit(labeled)` trains on the oracle's answers for those pool rows; `pool_proba(rows)` returns class
    probabilities of pool rows (what the strategy ranks); `test_predictions()` classifies the fixed test set.
    `self_train` > 0 (the "+self<N>" modifier): after the first fit the head is refitted on the labels plus,
    per class, the `self_train` unlabeled pool rows the learner is surest of (`labelers.self_training`)."""

    KINDS = ("linear", "propagation", "mix")

    def __init__(self, kind: str, dataset: FeatureDataset, settings: SimulationSettings, seed: int, graph=None,
                 self_train: int = 0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown learner {kind!r}; use one of {', '.join(self.KINDS)}")
        if kind != "linear" and graph is None:
            raise ValueError(f"the {kind} learner needs the pool's k-NN graph")
        if self_train and kind == "propagation":
            raise ValueError("self-training refits the linear head; the propagation learner has none (use +mix)")
        self.kind, self.dataset, self.settings, self.seed, self.graph = kind, dataset, settings, seed, graph
        self.self_train = self_train
        if kind != "linear" and getattr(graph, "test_neighbours", None) is None:
            from .propagation import new_neighbours

            graph.test_neighbours = new_neighbours(graph, dataset.test_features)  # fixed: find them once

    def fit(self, labeled: np.ndarray) -> Learner:
        d = self.dataset
        if self.kind != "linear":
            from .propagation import spread

            self.scores = spread(self.graph, labeled, d.labels[labeled], len(d.class_names))
        if self.kind != "propagation":
            self.head = self._fit_head(d.features[labeled], d.labels[labeled])  # the oracle's answers
        if self.self_train:
            from .self_training import confident_pseudo_labels

            rows, pseudo = confident_pseudo_labels(self.pool_proba(np.arange(len(d.labels))), labeled, self.self_train)
            self.head = self._fit_head(np.concatenate([d.features[labeled], d.features[rows]]),
                                       np.concatenate([d.labels[labeled], pseudo]), warm_start=self.head)
        return self

    def _fit_head(self, features: np.ndarray, labels: np.ndarray, warm_start=None) -> ClassifierHead:
        head = ClassifierHead(self.dataset.class_names, l2=self.settings.l2, calibrate=False, seed=self.seed)
        return head.fit(features, labels, warm_start=warm_start)

    def _combine(self, spread_proba, head_features) -> np.ndarray:
        if self.kind == "propagation":
            return spread_proba()
        head = self.head.predict_proba(head_features)
        return head if self.kind == "linear" else 0.5 * (head + spread_proba())

    def pool_proba(self, rows: np.ndarray) -> np.ndarray:
        from .propagation import scores_to_proba

        return self._combine(lambda: scores_to_proba(self.scores[rows]), self.dataset.features[rows])

    def test_predictions(self) -> np.ndarray:
        """Return the predicted class of every test row."""
        from .propagation import predict_from_neighbours

        d = self.dataset
        proba = self._combine(lambda: predict_from_neighbours(self.scores, self.graph.test_neighbours),
                              d.test_features)
        return proba.argmax(axis=1)


def positive_f1(truth: np.ndarray, predicted: np.ndarray, positive: int) -> float:
    """Return the F1 of class `positive` (0.0 when it is neither predicted nor present, as scikit-learn)."""
    tp = int(((predicted == positive) & (truth == positive)).sum())
    denominator = int((predicted == positive).sum() + (truth == positive).sum())
    return 2.0 * tp / denominator if denominator else 0.0


def run_one(dataset: FeatureDataset, spec: str, seed: int, settings: SimulationSettings,
            initial: np.ndarray, graph=None) -> list[dict]:
    """Run one strategy for one seed from a given initial pool; return one dict per round.

    `graph` is the pool's k-NN graph (`labelers.propagation.knn_graph`), needed by "+lp" strategies."""
    base, options = parse_strategy(spec)
    kind, init, options = split_learner_options(options)
    cover_until = options.pop("cover_per_class", 0) * len(dataset.class_names)
    self_train = options.pop("self_train", 0)
    if init is not None:
        initial = cold_start(dataset.features, len(initial), init, seed=seed)
    labeled = np.zeros(len(dataset.labels), dtype=bool)
    labeled[initial] = True
    rows = []
    for round_ in range(settings.rounds + 1):
        learner = Learner(kind, dataset, settings, seed, graph, self_train).fit(np.flatnonzero(labeled))
        predicted = learner.test_predictions()
        rows.append({"strategy": spec, "seed": seed, "round": round_, "n_labeled": int(labeled.sum()),
                     "accuracy": float((predicted == dataset.test_labels).mean())})
        if settings.positive is not None:
            rows[-1]["positive_f1"] = positive_f1(dataset.test_labels, predicted, settings.positive)
        if round_ == settings.rounds:
            break
        if labeled.sum() < cover_until:  # too few labels to trust uncertainty: cover the pool (TypiClust)
            from .coverage import typiclust_batch

            labeled[typiclust_batch(dataset.features, np.flatnonzero(labeled), settings.batch_size,
                                    seed=seed * 1000 + round_)] = True
            continue
        pool = np.flatnonzero(~labeled)
        probs = learner.pool_proba(pool)
        picks = select_batch(probs, settings.batch_size, base, features=dataset.features[pool],
                             seed=seed * 1000 + round_, **options)
        labeled[pool[picks]] = True
    return rows


def needs_graph(specs) -> bool:
    """True when some strategy spec trains a learner with label spreading (so the k-NN graph must be built)."""
    return any(split_learner_options(parse_strategy(s)[1])[0] != "linear" for s in specs)


def simulate(dataset: FeatureDataset, settings: SimulationSettings, progress: bool = True,
             graph=None) -> pd.DataFrame:
    """Run every strategy for every seed; return the learning curves (strategy, seed, round, n_labeled,
    accuracy). Raises DatasetError when the budget does not fit the pool (split it first with `split_test`
    to know the pool; an unsplit dataset is split here). `graph`: the pool's k-NN graph
    (`labelers.propagation.knn_graph` of the split dataset's features), to reuse one built before; built here
    when a strategy needs it and none is given."""
    from tqdm.auto import tqdm

    check_strategies(settings.strategies)  # fail before any work on a typo
    if settings.seed_nn is not None and not 0 <= settings.seed_nn <= settings.initial:
        raise DatasetError(f"--seed-nn {settings.seed_nn} must be between 0 and --initial {settings.initial}")
    dataset = split_test(dataset, settings.test_fraction)
    needed = settings.initial + settings.rounds * settings.batch_size
    if needed > len(dataset.labels):
        raise DatasetError(f"the schedule needs {needed} pool images but the pool has {len(dataset.labels)}")
    if graph is not None and graph.matrix.shape[0] != len(dataset.labels):
        raise DatasetError(f"the k-NN graph has {graph.matrix.shape[0]} rows but the pool {len(dataset.labels)}")
    if graph is None and needs_graph(settings.strategies):
        from .propagation import knn_graph

        graph = knn_graph(dataset.features)  # once: it depends on the pool's embeddings only
    rows = []
    bar = tqdm(total=settings.seeds * len(settings.strategies), desc="simulate", unit="run", disable=not progress)
    for seed in range(settings.first_seed, settings.first_seed + settings.seeds):
        initial = initial_pool(dataset.features, settings, seed)
        for spec in settings.strategies:
            rows += run_one(dataset, spec, seed, settings, initial, graph)
            bar.update()
    bar.close()
    return pd.DataFrame(rows)
