"""LabelloopModel: one Label Studio project as an ML model, in the shape of upstream's LabelStudioMLBase.

Read this class to understand the backend: `setup()` connects a project, `predict()` pre-annotates tasks with
an active-learning score (or, for a box project or one asking for relabel suggestions, hands the tasks to the
pre-annotators that look inside images: `_suggest`), and `fit()` reacts to Label Studio's webhook events by
storing annotations, counting what they kept of our suggestions, and queueing a retrain. The model is handed a few narrow collaborators (built once per process by
backend.runtime): the store (SQLite in MODEL_DIR), an embedding service, the heads, a VLM predictor, a
training queue whose worker is the head trainer, a background warmer and the function that names the served
version. None of them ever builds a model.

Instances are cheap (no weights are loaded here), so the app builds one per request, like upstream.
"""
from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Callable

from backend.boxes import BoxTarget, box_settings
from backend.embedders import describe_spec
from backend.events import TRAIN_EVENTS, EventError, annotation_changes, deleted_ids
from backend.heap import freeze_long_lived
from backend.labels import ImageClassification, LabelConfigError, label_interface
from backend.predictor import PredictorChoice, PredictorRules
from backend.relabel_suggestions import RelabelSettings
from backend.routing import Route
from backend.schemas import ModelResponse, PredictionValue
from backend.similar import PARAM as SIMILAR_PARAM, parse_reference
from backend.versions import initial_version

log = logging.getLogger(__name__)


class LabelloopModel:
    """Image classification on frozen embeddings with a per-project head (or a VLM); see the module docstring."""

    TRAIN_EVENTS = TRAIN_EVENTS

    def __init__(self, project_id: str, label_config: str | None = None, extra_params: dict[str, Any] | None = None,
                 *, store, embeddings, heads, vlm, training, warmer, rules: PredictorRules, similar=None,
                 served_version: Callable[..., str | None], default_embedder: str, counters,
                 predict_budget: float | None = None, retrain_on_submit: bool = True,
                 label_studio_connected: bool = False, on_drift: Callable[[str, str], None] | None = None,
                 suggestions=None):
        self.project_id = str(project_id)
        # An empty config means "not given" everywhere: it is validated as the stored one, so it must not be
        # stored over it either (a /setup with schema "" used to answer 200 and break every later /predict).
        self._label_config, self._extra_params = label_config or None, extra_params
        self.store, self.embeddings, self.heads, self.vlm = store, embeddings, heads, vlm
        self.training, self.warmer, self.rules, self.counters = training, warmer, rules, counters
        self.similar = similar  # a backend.similar.SimilarityOrder: extra_params similar_to
        self.served_version, self.default_embedder = served_version, default_embedder
        self.predict_budget, self.retrain_on_submit = predict_budget, retrain_on_submit
        self.label_studio_connected = label_studio_connected
        self.on_drift = on_drift or (lambda project, message: log.info(message))
        self.suggestions = suggestions  # a backend.runtime.Suggestions: relabel suggestions, boxes, acceptance

    # -- upstream-compatible properties ----------------------------------------------------------------------
    @property
    def label_config(self) -> str | None:
        """The label config XML: the one given to this instance, else the project's stored one."""
        if self._label_config:
            return self._label_config
        project = self._stored
        return project.label_config if project else None

    @cached_property
    def _stored(self):
        """The project as stored when this instance first needed it (None before its first contact): read
        once, not by every property asking for the config or extra_params (~6 reads per /predict). An
        instance serves one request."""
        return self.store.get_project(self.project_id)

    @cached_property
    def label_interface(self):
        """`label_studio_sdk.label_interface.LabelInterface` for the label config (checked by defusedxml)."""
        return label_interface(self.label_config)

    @property
    def parsed_label_config(self) -> dict[str, Any]:
        """{control name: {"type", "to_name", "labels"}} like upstream's parsed_label_config."""
        return {c.name: {"type": c.tag, "to_name": list(c.to_name), "labels": list(c.labels or [])}
                for c in self.label_interface.controls}

    @cached_property
    def route(self) -> Route:
        """What serves this project's /predict (backend.routing: the one rule the warmer follows too)."""
        return Route(self.rules, self.label_config, self.extra_params)

    @property
    def target(self) -> ImageClassification:
        """The control this backend serves (a box project: its labels as classes); raises LabelConfigError
        when the config has none."""
        return self.route.target

    @property
    def boxes(self) -> BoxTarget | None:
        """The <RectangleLabels> control of a box project (backend.boxes), else None."""
        return self.route.boxes

    @property
    def relabel(self) -> RelabelSettings | None:
        """Relabel suggestions asked for by extra_params "relabel" (backend.relabel_suggestions), else None."""
        return self.route.relabel

    @property
    def extra_params(self) -> dict[str, Any]:
        """The ML backend's extra params from Label Studio (/setup), e.g. {"strategy": "entropy"}."""
        if self._extra_params is not None:
            return self._extra_params
        project = self._stored
        return project.extra_params if project else {}

    @property
    def model_version(self) -> str:
        """The version predictions carry: the head's (read from SQLite on every call, never stale across
        workers), or for a VLM project the VLM's (it names the model and its question)."""
        version = self.served_version(self.project_id, self._label_config, self._extra_params)
        return version or initial_version(self.default_embedder, self.project_id)

    @property
    def predictor(self) -> PredictorChoice:
        """What pre-annotates this project ("head" | "vlm"); raises LabelConfigError for unusable choices."""
        return self.route.choice

    @property
    def strategy(self) -> str:
        """The uncertainty strategy behind `score`: extra_params["strategy"], else the configured default."""
        return self.rules.strategy(self.extra_params)

    @property
    def learner(self) -> str:
        """The learner behind the probabilities ("head" | "mix" | "lp", backend.learners): the strategy's
        modifier, else extra_params["learner"], else the configured default."""
        return self.rules.learner(self.extra_params)

    @property
    def similar_to(self) -> int | str | None:
        """The "more like this" reference (extra_params similar_to: a task id or an image URL), or None."""
        return parse_reference(self.extra_params)

    def get(self, key: str) -> str | None:
        return self.store.kv_get(self.project_id, key)

    def set(self, key: str, value: str) -> None:
        self.store.kv_set(self.project_id, key, value)

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    # -- setup -------------------------------------------------------------------------------------------------
    def setup(self) -> str:
        """Connect the project (fast: no weights are loaded) and return its model_version.

        Raises LabelConfigError when the label config or extra_params cannot be served. A newly connected
        project gets its tasks embedded in the background when Label Studio credentials are configured.
        """
        _ = self.target, self.strategy, self.learner, self.predictor, self.relabel  # validate before recording
        _ = self.boxes and box_settings(self.extra_params)
        self._check_reference()
        project, created = self._connect()
        if created or not self.warmer.started(self.project_id):
            self.warmer.warm(self.project_id)  # the head trains on embeddings, VLM project or not
        self._retrain_if_learner_changed()
        if self.predictor.predictor == "head" and not describe_spec(project.embedder)["zero_shot"]:
            # The label set's WordNet -> ImageNet prior takes 5-10 s: built now, not in the first /predict
            # (a CLIP project needs none: its r0 is zero-shot from the text tower).
            self.warmer.run_in_background(self._prepare_prior)
        return self.model_version

    def _retrain_if_learner_changed(self) -> None:
        """Queue a retrain when the served version was published for another learner than the one asked for
        now (a changed LABELLOOP_LEARNER or extra_params): its predictions carry a new version afterwards."""
        from backend.learners import published_learner

        was = published_learner(self.store, self.project_id)
        now = (self.learner, self.rules.diversity(self.extra_params), self.rules.self_train(self.extra_params))
        if was is None or tuple(was) == now or self.predictor.predictor != "head" or self.boxes is not None:
            return
        if not self.retrain_on_submit:  # the manual policy trains on START_TRAINING only
            log.warning("project %s: learner %s asked for, the served version was published for %s; retrain "
                        "policy is manual: Start Training applies it", self.project_id, now, tuple(was))
            return
        log.info("project %s: learner %s asked for, the served version was published for %s: retraining",
                 self.project_id, now, tuple(was))
        self.training.request(self.project_id, "LEARNER_CHANGED")

    def _check_reference(self) -> None:
        """Refuse (LabelConfigError, 422) a similar_to task id that the project's embedded tasks show cannot
        be the reference. Judged at /predict instead when nothing is embedded yet (the warm-up runs after
        /setup) and for an image URL (embedding it needs the weights, which /setup never loads)."""
        if self.relabel is not None and self.predictor.predictor == "vlm":
            raise LabelConfigError("extra_params relabel scores regions with the head; it does not apply to "
                                   "predictor vlm")
        ref = self.similar_to
        if ref is None:
            return
        if self.boxes is not None or self.relabel is not None:
            raise LabelConfigError(f"extra_params {SIMILAR_PARAM} orders classification predictions; it does not "
                                   "apply to relabel suggestions or box pre-annotations")
        if self.predictor.predictor == "vlm":
            raise LabelConfigError(f"extra_params {SIMILAR_PARAM} orders tasks over the head's embeddings; "
                                   "it does not apply to predictor vlm")
        project = self.store.get_project(self.project_id)
        if isinstance(ref, int) and project is not None and project.embedder_id \
                and self.store.embedded_tasks(self.project_id):
            self.similar.task_reference(self.project_id, project.embedder_id, ref)

    def _similar_scores(self, project, embedder) -> dict[str, float] | None:
        """{content key: similarity rank score} while similar_to is set, else None; raises LabelConfigError
        when the reference cannot be found or embedded."""
        ref = self.similar_to
        if ref is None:
            return None

        def embed_url(url: str):
            got = self.embeddings.embed(project, [{"data": {self.target.data_key: url}}], self.target.data_key)
            if not got.ok[0]:
                reason = got.errors.get(0, "not fetched within the predict budget")
                raise LabelConfigError(f"extra_params {SIMILAR_PARAM}: cannot embed {url!r}: {reason}")
            return got.features[0]

        reference = self.similar.reference(self.project_id, embedder.id, ref, embed_url)
        return self.similar.scores(self.project_id, embedder.id, ref, reference)

    def _prepare_prior(self) -> None:
        """Build the ImageNet prior of the project's labels (cached per label set; a no-op once built or
        when the embedder has a text tower). Best effort: a failure is logged and /predict tries again."""
        try:
            project = self.store.get_project(self.project_id)
            embedder = self.embeddings.embedder(project)
            built = self.heads.priors.built
            self.heads.priors.get(self.target, embedder)
            if self.heads.priors.built != built:  # WordNet's objects stay for the process's life (backend.heap)
                freeze_long_lived("building an ImageNet prior")
        except Exception as exc:
            log.warning("project %s: building the ImageNet prior ahead of /predict failed (%s); the first "
                        "/predict builds it", self.project_id, exc)

    def _connect(self):
        """Return (stored project, created), registering it with the default embedder on first contact."""
        spec = self.default_embedder
        project, created = self.store.ensure_project(self.project_id, spec, initial_version(spec, self.project_id),
                                                     label_config=self._label_config,
                                                     extra_params=self._extra_params)
        if created:
            log.info("project %s connected: embedder %s, version %s", self.project_id, project.embedder,
                     project.model_version)
        elif project.embedder != spec:
            self.on_drift(self.project_id, f"project {self.project_id} keeps embedder {project.embedder} "
                          f"(recorded when it connected); the configured embedder {spec} applies to new projects")
        return project, created

    # -- predict -----------------------------------------------------------------------------------------------
    def predict(self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None,
                **kwargs: Any) -> ModelResponse:
        """Return one item per task, in order: a prediction carrying the version that produced it (an empty
        result and score None when the image cannot be read), or [] for a task not reached within the
        predict budget: Label Studio stores nothing for it, and it is embedded in the background so the next
        Retrieve Predictions answers it from the cache. With an image-only embedder and a head without enough
        annotations, the score is the project's cold-start order and nothing is pre-checked without evidence
        (docs/backend.md §4a)."""
        kind = self.route.kind
        if kind in ("boxes", "relabel"):
            return self._suggest(tasks)
        project, _ = self._connect()
        if kind == "vlm":  # raises VLMUnavailable (503) when the model cannot be loaded
            version = self.model_version
            items, counts = self.vlm.predict(self.project_id, tasks, self.target, self.predictor, self.strategy,
                                             version, budget=self.predict_budget)
            self.counters.add(vlm_tasks=counts["tasks_predicted"], **counts)
            return ModelResponse(model_version=version, predictions=items)
        version = self.store.get_version(self.project_id, project.model_version)
        embedded = self.embeddings.embed(project, tasks, self.target.data_key, budget=self.predict_budget)
        # Scored by the project's cold-start order until the head has evidence (backend.heads.in_cold_start).
        items = self.heads.predictions(self.project_id, version, self.target, embedded, self.strategy,
                                       similar_scores=self._similar_scores(project, embedded.embedder))
        if embedded.pending:
            self.warmer.embed_new_tasks(self.project_id, [tasks[i] for i in embedded.pending])
            log.warning("project %s: %d of %d tasks not predicted within the %g s budget "
                        "(LABELLOOP_PREDICT_BUDGET); they are embedded in the background for the next Retrieve "
                        "Predictions", self.project_id, len(embedded.pending), len(tasks), self.predict_budget)
        for i, message in sorted(embedded.errors.items()):
            log.warning("project %s: no prediction for %s", self.project_id, message)
        self.counters.add(tasks_predicted=int(embedded.ok.sum()), tasks_failed=len(embedded.errors),
                          tasks_not_predicted=len(embedded.pending), images_fetched=embedded.fetched)
        return ModelResponse(model_version=version.model_version, predictions=items)

    def _suggest(self, tasks: list[dict[str, Any]]) -> ModelResponse:
        """Box pre-annotations or relabel suggestions (one item per task, as `predict`), remembered so that
        the annotators' acceptance is counted (backend.acceptance)."""
        project, _ = self._connect()
        version, served = self.store.get_version(self.project_id, project.model_version), self.model_version
        if self.boxes is not None:
            items, counts, errors = self.suggestions.boxes.predict(
                project, version, served, tasks, self.boxes, box_settings(self.extra_params), self.predictor,
                budget=self.predict_budget)
        else:
            items, counts, errors = self.suggestions.relabel.predict(
                project, version, served, tasks, self.target, self.relabel, self.strategy, budget=self.predict_budget)
        for i, message in sorted(errors.items()):
            log.warning("project %s: no prediction for %s", self.project_id, message)
        self.counters.add(**counts)
        return ModelResponse(model_version=served, predictions=items)

    # -- fit: webhook events -----------------------------------------------------------------------------------
    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Record what `event` changes and queue a retrain when it should trigger one; returns at once.

        Returns {"status": "queued" | "stored" | "ignored", "detail": ...}. Raises EventError when the payload
        lacks what the event needs.
        """
        if event == "PROJECT_UPDATED":
            # Also the echo of our own projects.update(model_version=...): never a reason to retrain.
            self._connect()
            return {"status": "ignored", "detail": "project settings refreshed; no retrain"}
        if event == "TASKS_CREATED":
            self._connect()
            tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []
            queued = self.warmer.embed_new_tasks(self.project_id, tasks)
            return {"status": "ignored", "detail": f"no retrain; {queued} new task(s) embedded in the background"}
        if event == "TASKS_DELETED":
            return {"status": "ignored", "detail": "no retrain needed"}
        if event not in TRAIN_EVENTS:
            return {"status": "ignored", "detail": f"event {event} is not used by labelloop"}
        self._connect()
        if event == "START_TRAINING" and self.boxes is not None:
            return {"status": "ignored", "detail": "box projects are not retrained (backend.boxes)"}
        if event == "START_TRAINING":
            self.training.request(self.project_id, event, full_sync=self.label_studio_connected)
            return {"status": "queued", "detail": "training queued"}
        if event == "ANNOTATIONS_DELETED":
            ids = deleted_ids(data)
            detail = f"{self.store.delete_annotations(self.project_id, ids)} of {len(ids)} annotation(s) deleted"
        else:
            detail = self._store_annotations(event, data)
        if self.boxes is not None:
            return {"status": "stored", "detail": detail + "; box projects are not retrained"}
        if self.retrain_on_submit:
            self.training.request(self.project_id, event)
            return {"status": "queued", "detail": detail + "; retrain queued"}
        return {"status": "stored", "detail": detail + "; retrain policy is manual"}

    def _store_annotations(self, event: str, data: dict[str, Any]) -> str:
        changes = annotation_changes(event, data, self.target.data_key)
        if changes.task_urls:
            self.store.remember_tasks(self.project_id, changes.task_urls)
        stored = self.store.upsert_annotations(self.project_id, changes.keep)
        if self.suggestions is not None:  # how much of our suggestion each annotation kept
            self.suggestions.ledger.review(self.project_id, changes.keep)
        if changes.drop:
            self.store.delete_annotations(self.project_id, changes.drop)
        dropped = len(changes.drop)
        return f"{stored} annotation(s) stored" + (f", {dropped} cancelled/empty ignored" if dropped else "")


__all__ = ["LabelloopModel", "ModelResponse", "PredictionValue", "EventError", "TRAIN_EVENTS"]
