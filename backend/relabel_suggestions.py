"""Multi-label relabel suggestions for a `<Choices choice="multiple">` project (extra_params "relabel").

For each task the relabeler's regions of the image (labelers.relabel.regions: the whole image plus a grid,
random crops or Felzenszwalb segments) are embedded through the embedding cache and scored by the project's
head (sigmoid multi-label head; before the first annotation its zero-shot or ImageNet prior). An image's score
for a label is the highest any region gives it (labelers.relabel.labeling.image_scores); the labels whose score
clears the threshold are suggested in ONE `choices` result with a score per label in `meta.scores`
(labelers.formats.ls_relabel.multichoice_result, the relabeler's Label Studio format).

Conventions as the classification path: the task's `score` is the strategy's confidence over the K yes/no
questions of the image's label scores (low = most informative; no cold-start order here: the regions are
what is scored), an untrained image-only head suggests only labels its prior knows at PRIOR_PRECHECK or more
(backend.heads.choose), and the version is the head's, suffixed
"-relabel-<hash of the settings>" so that Label Studio asks again when the settings change.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from backend.acceptance import choices_suggestion
from backend.embedding import fetch_deadline
from backend.labels import ImageClassification, LabelConfigError, settings_from_params

PARAM = "relabel"
CHUNK = 16  # images whose regions are embedded together; the predict budget is checked between chunks
CONFIDENCE = ("naive", "mc-dropout")  # mc-perturbation re-embeds 25 views per region: `labelloop relabel` only


@dataclass(frozen=True)
class RelabelSettings:
    """extra_params {"relabel": {...}}: which regions, how they are scored, and the suggestion threshold."""

    regions: str = "grid"            # grid | random | felzenszwalb (the whole image is always scored too)
    grid_rows: int = 2               # grid: rows x rows tiles
    num_crops: int = 4               # random: crops; felzenszwalb: at most this many segments
    crop_size: str = "range"         # random: fixed | range | a pixel count (labelers.relabel.regions.crop_side)
    confidence: str = "naive"        # naive (one pass) | mc-dropout (dropout on the features, `passes` passes)
    passes: int = 10
    dropout_rate: float = 0.05
    threshold: float | None = None   # None: the control's model_score_threshold, else 0.5
    seed: int = 0


def relabel_settings(extra: dict[str, Any] | None, target: ImageClassification) -> RelabelSettings | None:
    """Return the project's relabel settings, or None when extra_params has no "relabel" key.

    Raises LabelConfigError naming the key for a control that is not multiple-choice, an unknown key or an
    unusable value."""
    raw = (extra or {}).get(PARAM)
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise LabelConfigError(f"extra_params {PARAM} must be an object such as {{\"regions\": \"grid\"}}, "
                               f"got {raw!r}")
    if not target.multiple or target.kind != "choices":
        raise LabelConfigError(f"extra_params {PARAM} suggests several labels per image: it needs <Choices "
                               f"name={target.from_name!r} choice=\"multiple\">")
    settings = settings_from_params(RelabelSettings, raw, PARAM)
    try:
        _check(settings)
    except ValueError as exc:
        raise LabelConfigError(f"extra_params {PARAM}: {exc}") from None
    return settings


def _check(s: RelabelSettings) -> None:
    from labelers.relabel.regions import METHODS

    if s.regions not in METHODS:
        raise ValueError(f"regions {s.regions!r} is not one of {', '.join(METHODS)}")
    if s.confidence not in CONFIDENCE:
        raise ValueError(f"confidence {s.confidence!r} is not one of {', '.join(CONFIDENCE)} "
                         "(mc-perturbation: use `labelloop relabel`)")
    for name, low, high in (("grid_rows", 1, 8), ("num_crops", 1, 32), ("passes", 1, 50)):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be a whole number in [{low}, {high}], got {value!r}")
    if s.threshold is not None and (isinstance(s.threshold, bool) or not isinstance(s.threshold, (int, float))
                                    or not 0.0 < s.threshold < 1.0):
        raise ValueError(f"threshold must be a number in (0, 1), got {s.threshold!r}")
    if not isinstance(s.dropout_rate, (int, float)) or not 0.0 <= s.dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {s.dropout_rate!r}")
    if not (str(s.crop_size).isdigit() or s.crop_size in ("fixed", "range")):
        raise ValueError(f"crop_size must be fixed, range or a pixel count, got {s.crop_size!r}")


def relabel_version(head_version: str, settings: RelabelSettings) -> str:
    """Return "<head version>-relabel-<6 hex>": new whenever the head or the relabel settings change."""
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:6]
    return f"{head_version}-relabel-{digest}"


def region_scores(images: list, settings: RelabelSettings, embed, proba) -> list[np.ndarray | str]:
    """Return per image its (K,) label scores (max over its regions), or an error message (str) for an image
    the regions cannot be made for. `embed(images, boxes, names) -> [(R_i, D)]`, `proba(features) -> (R, K)`."""
    from labelers.relabel.confidence import aggregate, mc_dropout, naive
    from labelers.relabel.labeling import image_scores
    from labelers.relabel.regions import RegionError, propose

    boxes, ok, out = [], [], [None] * len(images)
    for j, image in enumerate(images):
        try:
            boxes.append(propose(image, settings.regions, settings.num_crops, settings.crop_size,
                                 settings.grid_rows, settings.seed, name=f"image {j}"))
            ok.append(j)
        except RegionError as exc:
            out[j] = str(exc)
    if ok:
        features = embed([images[j] for j in ok], boxes, [f"image {j}" for j in ok])
        for j, region_features in zip(ok, features):
            if settings.confidence == "naive":
                passes = naive(region_features, proba)
            else:
                passes = mc_dropout(region_features, proba, settings.passes, settings.dropout_rate, settings.seed)
            out[j] = image_scores([aggregate(passes, "mean", multi_label=True)])[0]
    return out


class RelabelSuggester:
    """Serves relabel suggestions with a project's head over its embedder (loaded once per process)."""

    def __init__(self, embeddings, heads, cache, fetcher, ledger, fetch_timeout: float = 20.0):
        self.embeddings, self.heads, self.cache, self.fetcher = embeddings, heads, cache, fetcher
        self.ledger, self.fetch_timeout = ledger, fetch_timeout

    def predict(self, project, version, served: str, tasks: list[dict[str, Any]], target: ImageClassification,
                settings: RelabelSettings, strategy: str, budget: float | None = None):
        """Return (one item per task, counts). `project` is a store.Project, `version` the store.Version of
        its head and `served` the version the predictions carry. An item is a PredictionValue (empty result
        and score None for an unreadable image), or [] for a task not reached within `budget`. Raises what
        the embedding service raises when the embedder cannot be loaded."""
        import threading

        from backend.heads import choose, evidence, label_probabilities, scores
        from backend.schemas import PredictionValue
        from backend.task_images import load_task_images
        from labelers.formats.ls_relabel import multichoice_result
        from labelers.relabel.region_features import embed_regions

        embedder = self.embeddings.embedder(project)
        head = self.heads.get(project.id, version, target, embedder)
        # as the VLM path: no chunk of images is started after the deadline, so Label Studio gets an answer
        deadline = None if budget is None else fetch_deadline(self.fetcher.clock(), budget, self.fetch_timeout)
        got = load_task_images(self.fetcher, tasks, target.data_key, budget, self.fetch_timeout)
        lock = self.embeddings.embedders.compute_locks.get(embedder.id) or threading.Lock()

        def embed(images, boxes, names):
            with lock:
                return embed_regions(embedder, self.cache, images, boxes, names)

        scored: list[tuple[int, Any]] = []
        rows = sorted(got.images)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            if deadline is not None and self.fetcher.clock() >= deadline:
                got.not_reached += rows[start:]
                break
            scored += zip(chunk, region_scores([got.images[i] for i in chunk], settings, embed,
                                               lambda f: label_probabilities(head, target, f)))
        items: list[Any] = [PredictionValue(result=[], score=None, model_version=served) for _ in tasks]
        good = []
        for i, value in scored:
            if isinstance(value, str):
                got.errors[i] = f"task {got.ids[i]}: {value}"
            else:
                good.append((i, value))
        threshold = settings.threshold if settings.threshold is not None else target.score_threshold
        rule = replace(target, score_threshold=threshold)
        evident = evidence(head)
        remembered = {}
        if good:
            probs = np.stack([value for _, value in good])
            task_scores = scores(probs, strategy, True, keys=[got.keys.get(i) for i, _ in good])
            for (i, row), score in zip(good, task_scores):
                labels = choose(row, rule, evident)
                per_label = {label: float(row[target.labels.index(label)]) for label in labels}
                result = [multichoice_result(labels, per_label, target.from_name, target.to_name)] if labels else []
                items[i] = PredictionValue(result=result, score=round(float(score), 6), model_version=served)
                if got.ids[i] is not None:
                    remembered[got.ids[i]] = choices_suggestion(target.from_name, labels, served)
        self.ledger.remember(project.id, remembered)
        for i in got.not_reached:
            items[i] = []
        counts = {"tasks_predicted": len(good), "tasks_failed": len(got.errors),
                  "tasks_not_predicted": len(got.not_reached), "images_fetched": got.fetched,
                  "relabel_suggestions": len(good)}
        return items, counts, got.errors
