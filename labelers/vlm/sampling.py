"""Complementary-label candidate sets: k random classes per image and round.

Plain sampling draws k distinct classes uniformly. ``distinct`` excludes the classes already
chosen as this image's complementary labels, so its labels never repeat. ``balance`` is the seed's
"-R" scheme: every class starts with a quota of R*N/K, loses one each time it is chosen, and
candidates are drawn without replacement with probability proportional to max(quota, floor); this
spreads complementary labels evenly over the classes even when the model favours one of them.

Each (image, round) draws from its own seeded generator, so a resumed run draws the same sets.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def stable_key(text: str) -> int:
    """Return a 64-bit integer from ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


class CandidateSampler:
    """Draws candidate sets and tracks the per-class quota.

    Raises ValueError when the settings cannot be met, e.g. more options than classes, or distinct
    labels over more rounds than classes can supply (rounds - 1 + num_options > K).
    """

    def __init__(self, num_classes: int, num_options: int = 4, rounds: int = 3, num_images: int = 1,
                 distinct: bool = True, balance: bool = True, quota_floor: float = 1.0, seed: int = 1126):
        if not 2 <= num_options <= num_classes:
            raise ValueError(f"num_options must be between 2 and the number of classes ({num_classes}), "
                             f"got {num_options}")
        if distinct and rounds - 1 + num_options > num_classes:
            raise ValueError(f"distinct complementary labels over {rounds} rounds with {num_options} options "
                             f"need at least {rounds - 1 + num_options} classes, have {num_classes}")
        if quota_floor <= 0:
            raise ValueError(f"quota_floor must be > 0 so that no class is ever excluded, got {quota_floor}")
        self.num_classes, self.num_options, self.rounds = num_classes, num_options, rounds
        self.distinct, self.balance, self.quota_floor, self.seed = distinct, balance, quota_floor, seed
        self.quota = np.full(num_classes, rounds * num_images / num_classes, dtype=np.float64)

    def candidates(self, image_key: str, round_index: int, previous: Sequence[int] = ()) -> list[int]:
        """Return ``num_options`` distinct class indices for this image and round, in random order.

        ``previous`` are the image's complementary labels from earlier rounds (excluded when distinct).
        """
        rng = np.random.default_rng([self.seed, stable_key(image_key), round_index])
        allowed = np.ones(self.num_classes, dtype=bool)
        if self.distinct:
            allowed[[int(c) for c in previous if c is not None and c >= 0]] = False
        weights = np.maximum(self.quota, self.quota_floor) if self.balance else np.ones(self.num_classes)
        weights = np.where(allowed, weights, 0.0)
        chosen = rng.choice(self.num_classes, size=self.num_options, replace=False, p=weights / weights.sum())
        return [int(c) for c in chosen]

    def record(self, label: int | None) -> None:
        """Count one complementary label against its class's quota (None for an unparseable round)."""
        if label is not None and label >= 0:
            self.quota[int(label)] -= 1

    def processing_order(self, keys: Sequence[str]) -> list[int]:
        """Return the order to label images in: seeded shuffle when balancing (so quotas are not
        used up by whichever classes come first in the input), input order otherwise."""
        order = list(range(len(keys)))
        if self.balance:
            np.random.default_rng(self.seed).shuffle(order)
        return order
