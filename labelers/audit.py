"""Label audit: find the annotations (human or VLM) that are probably wrong, from embeddings alone.

Arrays in, rankings out, in the shape of cleanlab's ``find_label_issues(labels, pred_probs)``:

1. Out-of-fold class probabilities from the project's classifier head (``labelers.head.ClassifierHead``,
   the head the backend serves) over a stratified k-fold split: every item is judged by a head that
   never saw its label.
2. A k-nearest-neighbour vote on the same embeddings (cosine, the item itself left out): the share of
   its neighbours' given labels per class, lightly smoothed so no class has probability 0.
3. The two probability matrices are averaged (``neighbour_weight`` sets the mix). The head sees the
   global shape of a class, the vote its local neighbourhood; their errors are only partly shared.
4. cleanlab ranks and flags: ``cleanlab.rank.get_label_quality_scores`` gives each item a quality score
   (low = suspect) and ``cleanlab.filter.find_label_issues`` decides which are flagged. Multi-label
   audits use ``cleanlab.multilabel_classification`` instead.

What cannot be judged is said, not guessed: a class with fewer than ``MIN_CLASS_MEMBERS`` annotations
has no out-of-fold evidence, so its items get no score (``judged`` False) and the class is left out of
the probability matrix; an item without a label is not judged either. ``AuditResult.notes`` lists it all.
I/O (reading label files, embedding images, writing reports) lives in ``trainers.audit_cli``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Two annotations is the least that lets one be held out while the other teaches the head the class.
MIN_CLASS_MEMBERS = 2
# Below this many labels per class the verdicts are mostly noise: on clean CIFAR-10 labels (3 classes,
# EfficientNet-Lite0 features, 8 draws) the audit flagged 49 % of correct labels at 3 per class, 34 % at 5,
# 16 % at 8, 10 % at 12 and 6 % from 20 on. The backend judges from here; `labelloop audit` warns below it.
RELIABLE_PER_CLASS = 10
# Pseudo-count added to every class of the neighbour vote (in neighbours): keeps probabilities off 0,
# which cleanlab's thresholds would otherwise treat as certainty.
VOTE_SMOOTHING = 0.5
# The head's pull towards its prior during an audit: 10x the serving default. Under label noise a weaker
# pull lets the head memorise the wrong labels it is meant to catch (CIFAR-10, 20 % uniform noise, 10k
# items: AUROC 0.958 at 100, 0.967 at 1 000, 0.965 at 10 000; see docs/audit.md).
AUDIT_L2 = 1000.0


class AuditError(ValueError):
    """The labels cannot be audited (too few classes or annotations, labels outside the class list)."""


@dataclass
class AuditResult:
    """Per item (N rows, input order): the verdict of the audit.

    ``given``: the label audited (class index; for multi-label an (N, K) multi-hot array).
    ``suggested``: argmax of the combined out-of-fold probabilities (-1 where not judged; for multi-label
    the (N, K) set of classes with probability >= 0.5). ``quality``: cleanlab's label quality score in
    [0, 1], low = suspect, NaN where not judged. ``flagged``: cleanlab's verdict. ``judged``: False for
    items the audit could not score. ``probabilities``: the combined (N, K) matrix (NaN rows where not
    judged). ``notes``: what could not be judged and what was changed (reduced folds), in words.
    """

    class_names: list[str]
    given: np.ndarray
    suggested: np.ndarray
    quality: np.ndarray
    flagged: np.ndarray
    judged: np.ndarray
    probabilities: np.ndarray
    folds: int
    multi_label: bool = False
    notes: list[str] = field(default_factory=list)

    def ranking(self) -> np.ndarray:
        """Return the indices of judged items, most suspect (lowest quality) first."""
        judged = np.flatnonzero(self.judged)
        return judged[np.argsort(self.quality[judged], kind="stable")]

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())


# ---------------------------------------------------------------- input checks
def _check_single_label(labels, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise AuditError(f"single-label audit needs one class index per item, got shape {labels.shape} "
                         "(pass multi_label=True for multi-hot labels)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise AuditError(f"labels must be class indices (integers), got {labels.dtype}")
    bad = np.flatnonzero((labels < -1) | (labels >= n_classes))
    if len(bad):
        raise AuditError(f"item {bad[0]} has label {labels[bad[0]]}, not in the {n_classes} classes "
                         f"(0..{n_classes - 1}; -1 = no label); {len(bad)} such items")
    return labels.astype(np.int64)


def _check_multi_label(labels, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != n_classes:
        raise AuditError(f"multi-label audit needs an (N, {n_classes}) multi-hot matrix, got shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise AuditError("multi-label labels must be 0/1 (multi-hot)")
    return labels.astype(np.int64)


def _check_features(features, n: int) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) != n:
        raise AuditError(f"features must be (N, D) with one row per label: got {x.shape} for {n} labels")
    if not np.isfinite(x).all():
        raise AuditError("features contain NaN or infinite values (an image that failed to embed?)")
    return x


def _fold_count(counts: np.ndarray, folds: int, notes: list[str], class_names: Sequence[str]) -> int:
    """Return the folds a stratified split can use: at most the smallest judged class's size."""
    if folds < 2:
        raise AuditError(f"folds must be at least 2, got {folds}")
    smallest = int(counts.min())
    if smallest >= folds:
        return folds
    name = class_names[int(np.argmin(counts))]
    message = (f"class {name!r} has only {smallest} annotations, fewer than the {folds} folds asked for: "
               f"using {smallest} folds instead (each fold holds out 1/{smallest} of the labels)")
    warnings.warn(message, stacklevel=3)
    notes.append(message)
    return smallest


# ---------------------------------------------------------------- evidence
def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                              folds: int = 5, multi_label: bool = False, l2: float = AUDIT_L2,
                              seed: int = 0) -> np.ndarray:
    """Return (N, K) probabilities, each row from a ClassifierHead trained on the other folds.

    Single-label splits are stratified by class; multi-label ones by each item's first label. Every
    class must have at least ``folds`` items (``find_label_errors`` reduces the folds to make it so).
    """
    from sklearn.model_selection import StratifiedKFold

    from labelers.head import ClassifierHead

    strata = labels.argmax(axis=1) if multi_label else labels
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.zeros((len(features), len(class_names)), dtype=np.float64)
    with warnings.catch_warnings():
        # Multi-label strata can be smaller than the folds; the split is still valid, only less even.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(features, strata))
    for train, held_out in splits:
        head = ClassifierHead(list(class_names), multi_label=multi_label, l2=l2, seed=seed)
        head.fit(features[train], labels[train])
        probs[held_out] = head.predict_proba(features[held_out])
    return probs


def neighbour_vote(features: np.ndarray, labels: np.ndarray, n_classes: int, neighbours: int = 10,
                   multi_label: bool = False) -> np.ndarray:
    """Return (N, K) class shares among each item's ``neighbours`` nearest others (cosine), smoothed.

    The item itself is left out of its own vote (leave-one-out), so a wrong label cannot vote for itself.
    Multi-label: per class, the smoothed share of neighbours carrying it (rows need not sum to 1).
    """
    from sklearn.neighbors import NearestNeighbors

    k = min(neighbours, len(features) - 1)
    if k < 1:
        raise AuditError("a neighbour vote needs at least two items")
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(features)
    _, found = index.kneighbors(features)
    others = np.empty((len(features), k), dtype=np.int64)
    for row, hits in enumerate(found):
        # Normally the first hit is the item itself; with exact duplicates it may come later.
        kept = hits[hits != row][:k]
        others[row] = kept if len(kept) == k else hits[1:k + 1]
    if multi_label:
        return (labels[others].sum(axis=1) + VOTE_SMOOTHING) / (k + 2 * VOTE_SMOOTHING)
    counts = np.zeros((len(features), n_classes))
    np.add.at(counts, (np.repeat(np.arange(len(features)), k), labels[others].ravel()), 1.0)
    return (counts + VOTE_SMOOTHING) / (k + n_classes * VOTE_SMOOTHING)


def _rank_and_flag(labels: np.ndarray, probs: np.ndarray, multi_label: bool, method: str,
                   filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (quality scores, flagged mask) from cleanlab for labels over the columns of ``probs``."""
    if multi_label:
        from cleanlab.multilabel_classification.filter import find_label_issues
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        label_lists = [list(np.flatnonzero(row)) for row in labels]
        quality = get_label_quality_scores(label_lists, probs, method=method)
        flagged = find_label_issues(label_lists, probs, filter_by=filter_by, n_jobs=1)
        return quality, np.asarray(flagged, dtype=bool)
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method=method)
    # n_jobs=1: cleanlab would otherwise fork one process per core, on a machine the server shares.
    flagged = find_label_issues(labels, probs, filter_by=filter_by, n_jobs=1)
    return quality, np.asarray(flagged, dtype=bool)


# ---------------------------------------------------------------- the audit
def judgeable_classes(labels, class_names: Sequence[str], multi_label: bool = False,
                      min_per_class: int = MIN_CLASS_MEMBERS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (checked labels, indices of the classes that can be judged, notes on those that cannot).

    Cheap (no features needed), so a command can refuse bad input before embedding anything. Raises
    AuditError for fewer than two classes, labels outside ``class_names``, or fewer than two classes
    with ``min_per_class`` annotations (at least MIN_CLASS_MEMBERS).
    """
    min_per_class = max(int(min_per_class), MIN_CLASS_MEMBERS)
    class_names = list(class_names)
    if len(class_names) < 2:
        raise AuditError(f"an audit needs at least two classes to tell apart, got {class_names}")
    given = _check_multi_label(labels, len(class_names)) if multi_label else _check_single_label(
        labels, len(class_names))
    counts = given.sum(axis=0) if multi_label else np.bincount(given[given >= 0], minlength=len(class_names))
    usable = np.flatnonzero(counts >= min_per_class)
    if len(usable) < 2:
        raise AuditError(f"an audit needs at least two classes with {min_per_class}+ annotations each; "
                         f"annotation counts: " + ", ".join(f"{n}={c}" for n, c in zip(class_names, counts)))
    too_few = [f"{class_names[k]!r} ({counts[k]})" for k in range(len(class_names)) if 0 < counts[k] < min_per_class]
    notes = [f"cannot judge class(es) with fewer than {min_per_class} annotations: {', '.join(too_few)}; "
             "their items are not scored and the class is left out of every suggestion"] if too_few else []
    return given, usable, notes


def _judged_rows(given: np.ndarray, usable: np.ndarray, multi_label: bool, notes: list[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows that can be judged, their labels re-indexed over ``usable``); notes say who is left out."""
    if multi_label:
        # An empty label set is a real multi-label answer ("none of these"), so it is judged.
        unusable = np.setdiff1d(np.arange(given.shape[1]), usable)
        rows = np.flatnonzero(~given[:, unusable].any(axis=1))
        y = given[np.ix_(rows, usable)]
        unlabelled = 0
    else:
        rows = np.flatnonzero(np.isin(given, usable))
        remap = np.full(given.max() + 1, -1)
        remap[usable] = np.arange(len(usable))
        y = remap[given[rows]]
        unlabelled = int((given < 0).sum())
    if unlabelled:
        notes.append(f"{unlabelled} items have no label and are not judged")
    skipped = len(given) - len(rows) - unlabelled
    if skipped:
        notes.append(f"{skipped} items carry a class that cannot be judged and are not scored")
    return rows, y


def find_label_errors(features, labels, class_names: Sequence[str], *, multi_label: bool = False,
                      folds: int = 5, neighbours: int = 10, neighbour_weight: float = 0.5, l2: float = AUDIT_L2,
                      method: str = "self_confidence", filter_by: str = "prune_by_noise_rate",
                      seed: int = 0, min_per_class: int = MIN_CLASS_MEMBERS) -> AuditResult:
    """Return the AuditResult of ``labels`` (N class indices, -1 = none; or (N, K) multi-hot) on ``features``.

    ``neighbour_weight`` is the vote's share of the combined probabilities (0 = head only, 1 = vote only);
    ``l2`` the head's pull towards its prior (``AUDIT_L2``, stronger than when serving).
    ``method`` and ``filter_by`` are passed to cleanlab's ranking and filtering.

    Raises AuditError when labels lie outside ``class_names``, features do not match the labels, or fewer
    than two classes have ``min_per_class`` annotations (nothing to tell apart). Classes below that
    size are not guessed at: their items come back unjudged and ``notes`` names them. When the smallest
    judged class has fewer members than ``folds``, the folds are reduced with a warning.
    """
    class_names = list(class_names)
    if not 0.0 <= neighbour_weight <= 1.0:
        raise AuditError(f"neighbour_weight must be in [0, 1], got {neighbour_weight}")
    given, usable, notes = judgeable_classes(labels, class_names, multi_label, min_per_class)
    x = _check_features(features, len(given))

    rows, y = _judged_rows(given, usable, multi_label, notes)
    names = [class_names[k] for k in usable]
    member_counts = y.sum(axis=0) if multi_label else np.bincount(y, minlength=len(usable))
    used_folds = _fold_count(member_counts, folds, notes, names)
    head_probs = out_of_fold_probabilities(x[rows], y, names, used_folds, multi_label, l2, seed)
    vote = neighbour_vote(x[rows], y, len(usable), neighbours, multi_label)
    probs = (1 - neighbour_weight) * head_probs + neighbour_weight * vote
    quality_part, flagged_part = _rank_and_flag(y, probs, multi_label, method, filter_by)

    n, k = len(given), len(class_names)
    quality = np.full(n, np.nan)
    flagged = np.zeros(n, dtype=bool)
    judged = np.zeros(n, dtype=bool)
    full_probs = np.full((n, k), np.nan)
    full_probs[np.ix_(rows, usable)] = probs
    quality[rows], flagged[rows], judged[rows] = quality_part, flagged_part, True
    if multi_label:
        suggested = np.zeros((n, k), dtype=np.int64)
        suggested[np.ix_(rows, usable)] = probs >= 0.5
    else:
        suggested = np.full(n, -1, dtype=np.int64)
        suggested[rows] = usable[probs.argmax(axis=1)]
    for note in notes:
        log.info("audit: %s", note)
    return AuditResult(class_names, given, suggested, quality, flagged, judged, full_probs, used_folds,
                       multi_label, notes)
