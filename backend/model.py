"""LabelloopModel: one Label Studio project as an ML model, in the shape of upstream's LabelStudioMLBase.

Read this class to understand the backend: `setup()` connects a project, `predict()` pre-annotates tasks with
an active-learning score, `fit()` reacts to Label Studio's webhook events, and `train()` (run by the background
queue) fits a new head and publishes a new `model_version`. The machinery lives in small collaborators on the
process-wide `Runtime`: the store (SQLite in MODEL_DIR), media fetching, embedders, heads and the queue.

Instances are cheap (no weights are loaded here), so the app builds one per request, like upstream; every
heavy object is loaded once per process and shared through the runtime.
"""
from __future__ import annotations

import logging
import shutil
import time
import uuid
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.embedding import embed_tasks, version_prefix
from backend.events import TRAIN_EVENTS, EventError, annotation_changes, deleted_ids, usable
from backend.heads import choose, label_probabilities, prior_head, scores
from backend.labels import ImageClassification, LabelConfigError, label_interface, parse_label_config
from backend.schemas import ModelResponse, PredictionValue
from backend.store import Annotation
from backend.vlm import PredictorChoice, predict_with_vlm, predictor_choice, vlm_version

if TYPE_CHECKING:
    from backend.runtime import Runtime

log = logging.getLogger(__name__)

class PredictionDeferred(RuntimeError):
    """The batch could not be embedded within the predict budget; the rest is being embedded in the background."""


class EmbedderMismatch(RuntimeError):
    """The project's recorded embedder now loads as a different model (weights changed or moved)."""


def initial_version(embedder_spec: str, project: str) -> str:
    """Return the version a project starts with: "<model>-p<project>-r0"."""
    return f"{version_prefix(embedder_spec)}-p{project}-r0"


class LabelloopModel:
    """Image classification on frozen embeddings with a per-project head; see the module docstring."""

    TRAIN_EVENTS = TRAIN_EVENTS

    def __init__(self, project_id: str, label_config: str | None = None, runtime: "Runtime | None" = None,
                 extra_params: dict[str, Any] | None = None):
        if runtime is None:
            raise ValueError("LabelloopModel needs the process Runtime (backend.runtime.get_runtime())")
        self.project_id = str(project_id)
        self.runtime = runtime
        self._label_config = label_config
        self._extra_params = extra_params

    # -- upstream-compatible properties ----------------------------------------------------------------------
    @property
    def label_config(self) -> str | None:
        """The label config XML: the one given to this instance, else the project's stored one."""
        if self._label_config:
            return self._label_config
        project = self.runtime.store.get_project(self.project_id)
        return project.label_config if project else None

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
    def target(self) -> ImageClassification:
        """The control this backend serves; raises LabelConfigError when the config has none."""
        return parse_label_config(self.label_config)

    @property
    def extra_params(self) -> dict[str, Any]:
        """The ML backend's extra params from Label Studio (/setup), e.g. {"strategy": "entropy"}."""
        if self._extra_params is not None:
            return self._extra_params
        project = self.runtime.store.get_project(self.project_id)
        return project.extra_params if project else {}

    @property
    def model_version(self) -> str:
        """The version predictions carry: the head's, read from SQLite on every call (never stale across
        workers), or for a VLM project the VLM's (it names the model and its question, not a head revision)."""
        choice = self.predictor
        if choice.predictor == "vlm":
            return vlm_version(choice, self.target, self.project_id, self.runtime.vlm_settings)
        version = self.runtime.store.current_version(self.project_id)
        return version or initial_version(self.runtime.default_spec, self.project_id)

    @cached_property
    def predictor(self) -> PredictorChoice:
        """What pre-annotates this project: extra_params["predictor"] ("head" | "vlm"), else the configured one.
        Raises LabelConfigError for values the project cannot use (see backend.vlm.predictor_choice)."""
        return predictor_choice(self.runtime.settings, self.extra_params, self.target, self.runtime.vlm_settings)

    @property
    def strategy(self) -> str:
        """The uncertainty strategy behind `score`: extra_params["strategy"], else the configured default."""
        from backend.config import STRATEGIES

        chosen = (self.extra_params or {}).get("strategy") or self.runtime.settings.strategy
        if chosen not in STRATEGIES:
            raise LabelConfigError(f"extra_params strategy {chosen!r} is not one of {', '.join(STRATEGIES)}")
        return chosen

    def get(self, key: str) -> str | None:
        return self.runtime.store.kv_get(self.project_id, key)

    def set(self, key: str, value: str) -> None:
        self.runtime.store.kv_set(self.project_id, key, value)

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _project(self):
        """Return the stored project, registering it (with the current default embedder) on first contact."""
        runtime = self.runtime
        project, created = runtime.store.ensure_project(
            self.project_id, runtime.default_spec, initial_version(runtime.default_spec, self.project_id),
            label_config=self._label_config, extra_params=self._extra_params)
        if created:
            log.info("project %s connected: embedder %s, version %s", self.project_id, project.embedder,
                     project.model_version)
        elif project.embedder != runtime.default_spec:
            runtime.warn_once(f"embedder-{self.project_id}",
                              "project %s keeps embedder %s (recorded when it connected); the configured "
                              "embedder %s applies to new projects only", self.project_id, project.embedder,
                              runtime.default_spec)
        return project, created

    def setup(self) -> str:
        """Connect the project (fast: no weights are loaded) and return its model_version.

        Raises LabelConfigError when the label config cannot be served. A newly connected project gets its
        tasks embedded in the background when Label Studio credentials are configured.
        """
        self.target  # validate before recording anything
        _ = self.strategy, self.predictor
        project, created = self._project()
        if created or not self.runtime.warmer.started(self.project_id):
            self.runtime.warmer.warm(self.project_id)  # the head still trains on embeddings, VLM or not
        return self.model_version

    def predict(self, tasks: list[dict[str, Any]], context: dict[str, Any] | None = None,
                **kwargs: Any) -> ModelResponse:
        """Return one prediction per task, in order. A task whose image cannot be read gets an empty result
        and score None; every prediction carries the version of the head that produced it."""
        budget = self.runtime.settings.predict_budget_seconds
        deadline = time.monotonic() + budget
        choice = self.predictor
        if choice.predictor == "vlm":  # raises VLMUnavailable (503) when the model cannot be loaded
            self._project()
            version = self.model_version
            predictions = predict_with_vlm(self.runtime, self.project_id, tasks, self.target, choice,
                                           self.strategy, version, deadline=deadline)
            return ModelResponse(model_version=version, predictions=predictions)
        return self._predictions(tasks, deadline=deadline, budget=budget)

    def _predictions(self, tasks: list[dict[str, Any]], deadline: float | None = None,
                     budget: float | None = None) -> ModelResponse:
        runtime, target = self.runtime, self.target
        project, _ = self._project()
        version = runtime.store.get_version(self.project_id, project.model_version)
        embedder = runtime.embedders.get(project.embedder)
        self._check_embedder(project, embedder)
        embedded = embed_tasks(self.project_id, tasks, target.data_key, embedder, store=runtime.store,
                               cache=runtime.cache, media=runtime.media, threads=runtime.settings.threads,
                               batch_size=runtime.settings.embed_batch_size,
                               compute_lock=runtime.embedders.compute_locks.get(embedder.id), deadline=deadline)
        if embedded.pending:
            # Label Studio stores nothing after 100 s anyway; answering with partial (empty) predictions would
            # mark those tasks as predicted for this version. Keep embedding and let the user retry.
            runtime.warmer.embed_new_tasks(self.project_id, [tasks[i] for i in embedded.pending])
            runtime.counters.add(predict_deferred=1)
            raise PredictionDeferred(
                f"{len(tasks) - len(embedded.pending)} of {len(tasks)} task images embedded within the "
                f"{budget:g} s budget (LABELLOOP_PREDICT_BUDGET); the other {len(embedded.pending)} are being "
                "embedded in the background: run Retrieve Predictions again in a few minutes")
        head = runtime.heads.get(self.project_id, version, target, embedder)
        predictions = [PredictionValue(result=[], score=None, model_version=version.model_version) for _ in tasks]
        rows = np.flatnonzero(embedded.ok)
        if len(rows):
            probs = label_probabilities(head, target, embedded.features[rows])
            row_scores = scores(probs, self.strategy, target.multiple, keys=[embedded.keys[i] for i in rows])
            for j, i in enumerate(rows):
                labels = choose(probs[j], target)
                result = [target.region(labels)] if labels else []
                predictions[i] = PredictionValue(result=result, score=round(float(row_scores[j]), 6),
                                                 model_version=version.model_version)
        runtime.counters.add(tasks_predicted=len(rows), tasks_failed=len(embedded.errors),
                             images_fetched=embedded.fetched)
        for i, message in sorted(embedded.errors.items()):
            log.warning("project %s: no prediction for %s", self.project_id, message)
        return ModelResponse(model_version=version.model_version, predictions=predictions)

    def _check_embedder(self, project, embedder) -> None:
        if project.embedder_id is None:
            self.runtime.store.set_embedder_id(self.project_id, embedder.id)
        elif project.embedder_id != embedder.id:
            raise EmbedderMismatch(
                f"project {self.project_id} was embedded with {project.embedder_id} but {project.embedder} now "
                f"loads as {embedder.id}; restore those weights or reconnect the project under a new MODEL_DIR")

    # -- webhook events ------------------------------------------------------------------------------------------
    def fit(self, event: str, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Record what `event` changes and enqueue a retrain when it should trigger one; returns at once.

        Returns {"status": "queued" | "stored" | "ignored", "detail": ...}. Raises EventError when the payload
        lacks what the event needs.
        """
        runtime = self.runtime
        if event == "PROJECT_UPDATED":
            # Also the echo of our own projects.update(model_version=...): never a reason to retrain.
            self._project()
            return {"status": "ignored", "detail": "project settings refreshed; no retrain"}
        if event == "TASKS_CREATED":
            self._project()
            tasks = data.get("tasks") if isinstance(data.get("tasks"), list) else []
            queued = runtime.warmer.embed_new_tasks(self.project_id, tasks)
            return {"status": "ignored", "detail": f"no retrain; {queued} new task(s) embedded in the background"}
        if event == "TASKS_DELETED":
            return {"status": "ignored", "detail": "no retrain needed"}
        if event not in TRAIN_EVENTS:
            return {"status": "ignored", "detail": f"event {event} is not used by labelloop"}
        self._project()
        if event == "START_TRAINING":
            runtime.queue.request(self.project_id, event, full_sync=runtime.ls.configured)
            return {"status": "queued", "detail": "training queued"}
        if event == "ANNOTATIONS_DELETED":
            ids = deleted_ids(data)
            deleted = runtime.store.delete_annotations(self.project_id, ids)
            detail = f"{deleted} of {len(ids)} annotation(s) deleted"
        else:
            detail = self._store_annotations(event, data)
        if runtime.settings.retrain == "on_submit":
            runtime.queue.request(self.project_id, event)
            return {"status": "queued", "detail": detail + "; retrain queued"}
        return {"status": "stored", "detail": detail + "; retrain policy is manual"}

    def _store_annotations(self, event: str, data: dict[str, Any]) -> str:
        store = self.runtime.store
        changes = annotation_changes(event, data, self.target.data_key)
        if changes.task_urls:
            store.remember_tasks(self.project_id, changes.task_urls)
        stored = store.upsert_annotations(self.project_id, changes.keep)
        if changes.drop:
            store.delete_annotations(self.project_id, changes.drop)
        dropped = len(changes.drop)
        return f"{stored} annotation(s) stored" + (f", {dropped} cancelled/empty ignored" if dropped else "")

    # -- training (runs in the background queue) ---------------------------------------------------------------
    def sync_annotations(self) -> int:
        """Replace the stored annotations with the project's annotations in Label Studio; returns the count."""
        data_key = self.target.data_key
        annotations, task_urls = [], []
        for task in self.runtime.ls.iter_tasks(self.project_id):
            url = (task.get("data") or {}).get(data_key)
            task_urls.append((int(task["id"]), url if isinstance(url, str) else None))
            for ann in task.get("annotations") or []:
                ann = ann if isinstance(ann, dict) else dict(ann)
                if usable(ann):
                    annotations.append(Annotation(int(ann["id"]), int(task["id"]), ann["result"]))
        self.runtime.store.remember_tasks(self.project_id, task_urls)
        return self.runtime.store.replace_annotations(self.project_id, annotations)

    def training_set(self) -> tuple[list[int], list[list[str]]]:
        """Return (task ids, labels per task) from the stored annotations: the newest annotation of each task
        wins; labels the config does not list are dropped, and tasks left without a label are skipped."""
        latest: dict[int, Annotation] = {}
        for ann in self.runtime.store.list_annotations(self.project_id):
            latest[ann.task_id] = ann  # ordered by id, so the newest wins
        task_ids, labels = [], []
        for task_id, ann in sorted(latest.items()):
            chosen = self.target.labels_in(ann.result)
            if chosen:
                task_ids.append(task_id)
                labels.append(chosen if self.target.multiple else chosen[:1])
        return task_ids, labels

    def train(self, full_sync: bool = False) -> tuple[str | None, int, str | None]:
        """Fit a new head on the stored annotations and publish it as the next version.

        Returns (new model_version or None when there is nothing to learn from, annotations used, note).
        Raises on any failure, leaving the served version untouched.
        """
        runtime, target = self.runtime, self.target
        notes = []
        if full_sync and runtime.ls.configured:
            try:
                self.sync_annotations()
            except Exception as exc:  # Label Studio unreachable: train on what the webhooks delivered
                log.warning("project %s: could not list annotations in Label Studio (%s); training on the %d "
                            "stored ones", self.project_id, type(exc).__name__,
                            runtime.store.count_annotations(self.project_id))
                notes.append(f"annotations not re-read from Label Studio ({type(exc).__name__})")
        project, _ = self._project()
        task_ids, labels = self.training_set()
        if not task_ids:
            if project.revision == 0:
                return None, 0, "no usable annotations (none, all skipped, or no label from this config)"
            # Every annotation was deleted: go back to the untrained prior rather than keep serving old labels.
            embedder = runtime.embedders.get(project.embedder)
            self._check_embedder(project, embedder)
            return self._publish(prior_head(target, embedder), 0), 0, "no annotations left: back to the prior"
        embedder = runtime.embedders.get(project.embedder)
        self._check_embedder(project, embedder)
        urls = runtime.store.content_keys(self.project_id, task_ids)
        tasks = [{"id": t, "data": {target.data_key: urls.get(t, (None, None))[0]}} for t in task_ids]
        embedded = embed_tasks(self.project_id, tasks, target.data_key, embedder, store=runtime.store,
                               cache=runtime.cache, media=runtime.media, threads=runtime.settings.threads,
                               batch_size=runtime.settings.embed_batch_size,
                               compute_lock=runtime.embedders.compute_locks.get(embedder.id))
        rows = np.flatnonzero(embedded.ok)
        if not len(rows):
            raise RuntimeError(f"none of the {len(task_ids)} annotated images could be read: "
                               + "; ".join(list(embedded.errors.values())[:3]))
        head = prior_head(target, embedder)
        index = {label: k for k, label in enumerate(target.labels)}
        if target.multiple:
            y = np.zeros((len(rows), len(target.labels)), np.float32)
            for j, i in enumerate(rows):
                y[j, [index[label] for label in labels[i]]] = 1.0
        else:
            y = np.asarray([index[labels[i][0]] for i in rows])
        head.fit(embedded.features[rows], y)
        version = self._publish(head, len(rows))
        if embedded.errors:
            notes.append(f"{len(embedded.errors)} annotated image(s) unreadable")
        if runtime.settings.push_predictions and runtime.ls.configured:
            notes.append(self._push_after_publish() if self.predictor.predictor == "head"
                         else "predictions not pushed: the VLM pre-annotates this project")
        return version, int(len(rows)), "; ".join(notes) or None

    def _push_after_publish(self) -> str:
        try:
            pushed = self.push_predictions()
        except Exception as exc:  # the version is published either way; Retrieve Predictions still works
            log.warning("project %s: pushing predictions to Label Studio failed (%s: %s)", self.project_id,
                        type(exc).__name__, exc)
            return f"predictions not pushed ({type(exc).__name__})"
        return f"{pushed} prediction(s) pushed to Label Studio"

    def push_predictions(self, chunk: int = 500) -> int:
        """Predict every task of the project with the current version and store the predictions in Label
        Studio (projects.import_predictions), then set the project's model_version to it.

        Returns how many predictions were stored. Tasks whose image cannot be read are left out. Raises on
        Label Studio errors. Used after a retrain when push_predictions is on, so the score column and
        uncertainty sort refresh without anyone pressing Retrieve Predictions.
        """
        runtime, pushed, batch = self.runtime, 0, []
        for task in runtime.ls.iter_tasks(self.project_id):
            batch.append(task)
            if len(batch) >= chunk:
                pushed += self._push(batch)
                batch = []
        if batch:
            pushed += self._push(batch)
        runtime.version_sync.attempt(self.project_id)
        return pushed

    def _push(self, tasks: list[dict[str, Any]]) -> int:
        response = self._predictions(tasks)
        rows = [{"task": int(task["id"]), "result": p.result, "score": p.score, "model_version": p.model_version}
                for task, p in zip(tasks, response.predictions) if p.result or p.score is not None]
        if rows:
            self.runtime.ls.import_predictions(self.project_id, rows)
        return len(rows)

    def _publish(self, head, n_annotations: int) -> str:
        """Save the head to a fresh folder, then switch the project to it in one SQLite transaction."""
        store = self.runtime.store
        project = store.get_project(self.project_id)
        revision = store.next_revision(self.project_id)
        version = f"{version_prefix(project.embedder)}-p{self.project_id}-r{revision}"
        heads_dir = store.heads_dir(self.project_id)
        final = heads_dir / f"r{revision}"
        staging = heads_dir / f".r{revision}-{uuid.uuid4().hex[:8]}"
        head.save(staging)
        if final.exists():  # left behind by a run that crashed after saving but before publishing
            shutil.rmtree(final)
        staging.rename(final)
        store.publish_version(self.project_id, revision, version, str(final), n_annotations)
        log.info("project %s: published %s (%d annotations)", self.project_id, version, n_annotations)
        # Label Studio accepts the new version once it has predictions of it; retried after each /predict.
        self.runtime.version_sync.schedule(self.project_id)
        return version


__all__ = ["LabelloopModel", "ModelResponse", "PredictionValue", "EventError", "EmbedderMismatch",
           "PredictionDeferred", "TRAIN_EVENTS"]
