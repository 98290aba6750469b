"""The VLM as a project's pre-annotator: ordinary choices with scores, complementary labels into a second control.

A project picks its predictor through the backend settings (`predictor`, `vlm_model`, `vlm_mode`) or per project
through `extra_params` ({"predictor": "vlm", "vlm_model": ..., "vlm_mode": ..., "vlm_rounds": ...,
"vlm_num_options": ...}), the way the strategy is overridden. The VLM only pre-annotates: retraining still fits
the embedding head on the annotations, and a project can switch back to it with {"predictor": "head"}.

A VLM's answers never change with annotations, so a VLM project's `model_version` names the model and its
question (model, mode, prompts, rounds, classes) instead of a head revision: Label Studio asks again only when
one of those changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from backend.config import PREDICTORS, VLM_MODES, Settings
from backend.heads import choose, scores
from backend.labels import ImageClassification, LabelConfigError
from backend.loading import LoadOncePool
from backend.schemas import PredictionValue

log = logging.getLogger(__name__)

CHUNK = 32  # tasks fetched and labeled together; the predict budget is checked between chunks
EXTRA_KEYS = ("predictor", "vlm_model", "vlm_mode", "vlm_rounds", "vlm_num_options")


class VLMUnavailable(RuntimeError):
    """The project's VLM cannot be loaded here (answered as 503; visible in /health and /metrics)."""


class VLMTooSlow(RuntimeError):
    """The VLM could not label the whole batch within the predict budget (Label Studio would store nothing)."""


@dataclass(frozen=True)
class PredictorChoice:
    """What pre-annotates a project: the head, or a VLM in one mode."""

    predictor: str          # "head" | "vlm"
    model: str              # VLM preset, hub name or folder
    mode: str               # "ordinary" | "complementary" | "both" ("auto" already resolved)
    rounds: int             # complementary labels per task
    num_options: int        # candidates shown per complementary round

    @property
    def ordinary(self) -> bool:
        return self.mode in ("ordinary", "both")

    @property
    def complementary(self) -> bool:
        return self.mode in ("complementary", "both")


def _int_param(extra: dict[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise LabelConfigError(f"extra_params {key} must be a whole number, got {value!r}")
    return int(value)


def predictor_choice(settings: Settings, extra: dict[str, Any] | None, target: ImageClassification,
                     vlm_settings) -> PredictorChoice:
    """Return the project's predictor from `extra` (its extra_params) over `settings`.

    Raises LabelConfigError (answered 422 at /setup) for an unknown predictor or mode, complementary labels
    without a complementary control, or rounds/options the classes cannot supply. Never loads a model.
    """
    extra = extra or {}
    predictor = extra.get("predictor") or settings.predictor
    if predictor not in PREDICTORS:
        raise LabelConfigError(f"extra_params predictor {predictor!r} is not one of {', '.join(PREDICTORS)}")
    mode = extra.get("vlm_mode") or settings.vlm_mode
    if mode not in VLM_MODES:
        raise LabelConfigError(f"extra_params vlm_mode {mode!r} is not one of {', '.join(VLM_MODES)}")
    if mode == "auto":
        mode = "both" if target.complementary_from else "ordinary"
    cfg = vlm_settings.complementary
    choice = PredictorChoice(predictor, str(extra.get("vlm_model") or settings.vlm_model), mode,
                             _int_param(extra, "vlm_rounds", cfg.rounds),
                             _int_param(extra, "vlm_num_options", cfg.num_options))
    if predictor == "vlm" and choice.complementary:
        _check_complementary(choice, target, cfg)
    return choice


def _check_complementary(choice: PredictorChoice, target: ImageClassification, cfg) -> None:
    from labelers.vlm.sampling import CandidateSampler

    if not target.complementary_from:
        raise LabelConfigError(
            f"vlm_mode {choice.mode!r} needs a second control for the complementary labels, e.g. <Choices "
            f"name=\"not_label\" toName=\"{target.to_name}\" choice=\"multiple\" model_complementary=\"true\"> "
            f"with the classes of {target.from_name!r}")
    if choice.rounds > 1 and not target.complementary_multiple:
        raise LabelConfigError(f"{choice.rounds} complementary labels per task need choice=\"multiple\" on "
                               f"{target.complementary_from!r}")
    try:  # the sampler owns the rule (options <= K; distinct rounds need rounds - 1 + options <= K)
        CandidateSampler(len(target.labels), choice.num_options, choice.rounds, 1, cfg.distinct)
    except ValueError as exc:
        raise LabelConfigError(f"complementary labels: {exc}") from None


def vlm_version(choice: PredictorChoice, target: ImageClassification, project: str, vlm_settings) -> str:
    """Return "vlm-<model>-<question hash>-p<project>": stable while the model and its question are."""
    question = [choice.model, choice.mode, choice.rounds, choice.num_options, asdict(vlm_settings.prompts),
                vlm_settings.method, asdict(vlm_settings.complementary), target.labels, target.model_names,
                target.from_name, target.complementary_from, target.multiple, target.score_threshold]
    digest = hashlib.sha256(json.dumps(question, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(choice.model.rstrip("/")).name).strip("-") or "model"
    return f"vlm-{name}-{digest}-p{project}"


def vlm_class_names(target: ImageClassification) -> list[str]:
    """Return the names the VLM is shown, one per label: the first `predicted_values` name (taxonomy: the
    leaf), unless two labels would then look the same to the model, in which case the labels themselves."""
    names = [names[0] for names in target.model_names]
    return names if len({n.lower() for n in names}) == len(names) else list(target.labels)


class VLMPool(LoadOncePool):
    """VLM labelers loaded lazily, once per process (never in /setup); one forward pass per model at a time."""

    kind = "VLM"

    def __init__(self, settings: Settings, loader=None):
        super().__init__(loader)
        self.settings = settings
        self.compute_locks: dict[str, threading.Lock] = {}

    def _load(self, spec: str):
        from labelers.vlm.labeler import shared_labeler

        try:
            return shared_labeler(spec, self.settings.vlm_device, self.settings.vlm_dtype, self.settings.vlm_config)
        except Exception as exc:  # missing weights, no network, no chat template, bad YAML: one clear message
            raise VLMUnavailable(f"cannot load VLM {spec!r} ({type(exc).__name__}: {exc})") from None

    def _unavailable(self, message: str) -> Exception:
        return VLMUnavailable(f"{message} (not retried for a minute)")

    def _ready(self, spec: str, labeler) -> None:
        self.compute_locks[spec] = threading.Lock()
        log.info("VLM %s ready: %s", spec, getattr(labeler, "model_id", spec))

    def status(self) -> dict[str, Any]:
        """Return what /health and /metrics say about VLMs (never loads one)."""
        specs = sorted(set(self._objects) | set(self._errors) | {self.settings.vlm_model})
        return {"predictor": self.settings.predictor, "model": self.settings.vlm_model,
                "models": {spec: {"loaded": spec in self._objects, "error": self._errors.get(spec)}
                           for spec in specs}}


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


def predict_with_vlm(runtime, project: str, tasks: list[dict[str, Any]], target: ImageClassification,
                     choice: PredictorChoice, strategy: str, version: str,
                     deadline: float | None = None) -> list[PredictionValue]:
    """Return one prediction per task from the project's VLM, in task order.

    Raises VLMUnavailable when the model cannot be loaded and VLMTooSlow when the batch cannot be labeled
    before `deadline` (time.monotonic()). A task whose image cannot be read gets an empty result, score None.
    """
    from labelers.cache import content_key
    from labelers.images import ImageLoadError, load_image
    from labelers.vlm.sampling import CandidateSampler

    labeler = runtime.vlms.get(choice.model)
    lock = runtime.vlms.compute_locks.get(choice.model) or threading.Lock()
    predictions = [PredictionValue(result=[], score=None, model_version=version) for _ in tasks]
    ids, urls, errors = runtime.media.task_sources(tasks, target.data_key)
    todo = [i for i in range(len(tasks)) if i not in errors]
    sampler = None
    if choice.complementary:  # one sampler per request, so -R balancing spreads CLs over the whole batch
        cfg = labeler.settings.complementary
        sampler = CandidateSampler(len(target.labels), choice.num_options, choice.rounds, len(todo), cfg.distinct,
                                   cfg.balance, cfg.quota_floor, cfg.seed)
    fetched = 0
    for start in range(0, len(todo), CHUNK):
        if deadline is not None and time.monotonic() >= deadline:
            raise VLMTooSlow(f"the VLM labeled {start} of {len(todo)} tasks within the "
                             f"{runtime.settings.predict_budget_seconds:g} s budget (LABELLOOP_PREDICT_BUDGET); "
                             "Label Studio would store nothing, so select fewer tasks per Retrieve Predictions")
        chunk = todo[start:start + CHUNK]
        blobs, fetch_errors = runtime.media.fetch_many({i: urls[i] for i in chunk}, {i: ids[i] for i in chunk},
                                                       runtime.settings.threads)
        errors.update(fetch_errors)
        fetched += len(blobs)
        rows, images = [], []
        for i in sorted(blobs):
            try:
                images.append(load_image(blobs[i], name=f"task {ids[i]}"))
                rows.append(i)
            except ImageLoadError as exc:
                errors[i] = str(exc)
        if not rows:
            continue
        keys = [content_key(blobs[i]) for i in rows]
        with lock:  # one labeler, one forward pass at a time
            outputs = label_images(labeler, images, keys, target, choice, strategy, sampler)
        for i, (result, score) in zip(rows, outputs):
            predictions[i] = PredictionValue(result=result, score=score, model_version=version)
    runtime.counters.add(tasks_predicted=len(tasks) - len(errors), tasks_failed=len(errors),
                         images_fetched=fetched, vlm_tasks=len(tasks) - len(errors))
    for i, message in sorted(errors.items()):
        log.warning("project %s: no VLM prediction for %s", project, message)
    return predictions
