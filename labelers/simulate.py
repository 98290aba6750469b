"""Active-learning simulation with an oracle: how many labels does each strategy need?

Every strategy sees the same fixed test set, the same initial labeled pool per seed (a paired design)
and the same head training, so differences come from the query strategy alone.
A strategy spec is a base strategy plus optional modifiers: "margin", "margin+kmeans", "entropy+balance".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .datasets import DatasetError, FeatureDataset
from .head import ClassifierHead
from .strategies import STRATEGIES, cold_start, select_batch


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


def parse_strategy(spec: str) -> tuple[str, dict]:
    """Split "margin+kmeans+balance" into ("margin", {"diversity": "kmeans", "class_balance": True})."""
    base, *modifiers = spec.split("+")
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {base!r} in {spec!r}; choose from {', '.join(STRATEGIES)}")
    options: dict = {}
    for modifier in modifiers:
        if modifier == "kmeans":
            options["diversity"] = "kmeans"
        elif modifier == "balance":
            options["class_balance"] = True
        else:
            raise ValueError(f"unknown modifier {modifier!r} in {spec!r}; use +kmeans or +balance")
    return base, options


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


def _accuracy(head: ClassifierHead, features: np.ndarray, labels: np.ndarray) -> float:
    return float((head.predict(features) == labels).mean())


def run_one(dataset: FeatureDataset, spec: str, seed: int, settings: SimulationSettings,
            initial: np.ndarray) -> list[dict]:
    """Run one strategy for one seed from a given initial pool; return one dict per round."""
    base, options = parse_strategy(spec)
    labeled = np.zeros(len(dataset.labels), dtype=bool)
    labeled[initial] = True
    rows = []
    for round_ in range(settings.rounds + 1):
        head = ClassifierHead(dataset.class_names, l2=settings.l2, calibrate=False, seed=seed)
        head.fit(dataset.features[labeled], dataset.labels[labeled])  # the oracle's answers
        rows.append({"strategy": spec, "seed": seed, "round": round_, "n_labeled": int(labeled.sum()),
                     "accuracy": _accuracy(head, dataset.test_features, dataset.test_labels)})
        if round_ == settings.rounds:
            break
        pool = np.flatnonzero(~labeled)
        probs = head.predict_proba(dataset.features[pool])
        picks = select_batch(probs, settings.batch_size, base, features=dataset.features[pool],
                             seed=seed * 1000 + round_, **options)
        labeled[pool[picks]] = True
    return rows


def simulate(dataset: FeatureDataset, settings: SimulationSettings, progress: bool = True) -> pd.DataFrame:
    """Run every strategy for every seed; return the learning curves (strategy, seed, round, n_labeled,
    accuracy). Raises DatasetError when the budget does not fit the pool."""
    from tqdm.auto import tqdm

    for spec in settings.strategies:
        parse_strategy(spec)  # fail before any work on a typo
    dataset = split_test(dataset, settings.test_fraction)
    needed = settings.initial + settings.rounds * settings.batch_size
    if needed > len(dataset.labels):
        raise DatasetError(f"the schedule needs {needed} pool images but the pool has {len(dataset.labels)}")
    rows = []
    bar = tqdm(total=settings.seeds * len(settings.strategies), desc="simulate", unit="run", disable=not progress)
    for seed in range(settings.seeds):
        initial = cold_start(dataset.features, settings.initial, settings.init, seed=seed)
        for spec in settings.strategies:
            rows += run_one(dataset, spec, seed, settings, initial)
            bar.update()
    bar.close()
    return pd.DataFrame(rows)
