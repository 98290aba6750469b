"""Training a project's head on its annotations, and publishing it as the next model_version.

Run by the background queue (backend.training.TrainingQueue), one project at a time. A run that raises changes
nothing that is served; a new head is saved to a fresh folder and switched to in one SQLite transaction.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from typing import Any

import numpy as np

from backend.accuracy import describe, estimate_accuracy
from backend.events import usable
from backend.heads import HeadCache, head_digest, label_probabilities, prior_head
from backend.labels import ImageClassification, LabelConfigError, parse_label_config
from backend.learners import STATE_KEY as LEARNER_KEY, LearnerFit, SavedWithPool
from backend.logs import Redactor
from backend.predictor import PredictorRules
from backend.routing import Route
from backend.store import Annotation, Store
from backend.versions import head_version
from labelers.formats.label_studio import labels_by_control

log = logging.getLogger(__name__)

PUSH_CHUNK = 500  # tasks predicted and sent to Label Studio per import_predictions call
NOT_RETRAINED = "box projects are not retrained (backend.boxes)"  # as /webhook answers their annotations
# Why a retrain pushes nothing, by what /predict serves the project with (backend.routing.Route): the head's
# classifications would be predictions of another kind than the ones Label Studio asks /predict for.
NOT_PUSHED = {"vlm": "the VLM pre-annotates this project",
              "relabel": "/predict serves this project relabel suggestions (Retrieve Predictions asks for them)",
              "boxes": "/predict serves this project box pre-annotations"}


def training_set(store: Store, project: str, target: ImageClassification) -> tuple[list[int], list[list[str]]]:
    """Return (task ids, labels per task) from the stored annotations: the newest annotation of each task
    wins; labels the config does not list are dropped, and tasks left without a label are skipped."""
    latest: dict[int, Annotation] = {}
    for ann in store.list_annotations(project):
        latest[ann.task_id] = ann  # ordered by id, so the newest wins
    task_ids, labels = [], []
    for task_id, ann in sorted(latest.items()):
        chosen = target.labels_in(ann.result)
        if chosen:
            task_ids.append(task_id)
            labels.append(chosen if target.multiple else chosen[:1])
    return task_ids, labels


def labels_not_in_config(store: Store, project: str, target: ImageClassification) -> dict[str, int]:
    """Return {label: annotations} for labels the stored annotations of this control use that the label
    config no longer lists (a class removed after annotating): they are not learnt from, and the run says so."""
    unknown: dict[str, int] = {}
    for ann in store.list_annotations(project):
        for label in labels_by_control(ann.result).get(target.from_name, []):
            if label not in target.labels:
                unknown[label] = unknown.get(label, 0) + 1
    return unknown


def training_fingerprint(embedder_spec: str, target: ImageClassification, task_ids: list[int],
                         labels: list[list[str]], media: dict[int, tuple[str | None, str | None]],
                         learner: str = "head") -> str:
    """Return a hash of everything a head is fitted on: the embedder, the label config's classes, each
    annotated task with its labels and image URL, and the configured learner (backend.learners). Two runs
    with the same fingerprint fit the same head."""
    rows = [[t, sorted(chosen), media.get(t, (None, None))[0]] for t, chosen in zip(task_ids, labels)]
    parts = [embedder_spec, list(target.labels), target.multiple, rows] + ([learner] if learner != "head" else [])
    blob = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class HeadTrainer:
    """Trains and publishes heads; owns the re-read of annotations and the optional push of predictions."""

    def __init__(self, store: Store, embeddings, heads: HeadCache, ls, version_sync, rules: PredictorRules,
                 push_predictions: bool = False, redactor: Redactor | None = None, suspects=None, learner=None):
        self.store, self.embeddings, self.heads, self.ls = store, embeddings, heads, ls
        self.learner = learner  # backend.learners.PoolLearner: label spreading beside the head (None: head only)
        self.after_publish = None  # f(project) queued after a trained version is published (backend.warmer)
        self.suspects = suspects  # backend.suspects.SuspectAuditor, run after each publish (never fails it)
        self.version_sync, self.rules = version_sync, rules
        self.push_enabled = push_predictions
        self.redactor = redactor or Redactor()

    def __call__(self, project: str, full_sync: bool, reasons: set) -> tuple[str | None, int, str | None]:
        """The queue's train function: `train(project, full_sync)`."""
        return self.train(project, full_sync=full_sync)

    def train(self, project_id: str, full_sync: bool = False) -> tuple[str | None, int, str | None]:
        """Fit a new head on the stored annotations and publish it as the next version.

        Returns (new model_version or None when there is nothing to learn from, annotations used, note);
        None also for a box project, which is not retrained (a retrain queued before its /setup made it one).
        Raises on any failure, leaving the served version untouched.
        """
        stored = self.store.get_project(project_id)
        if Route(self.rules, stored.label_config, stored.extra_params).boxes is not None:
            log.info("project %s: %s", project_id, NOT_RETRAINED)
            return None, 0, NOT_RETRAINED
        notes = []
        if full_sync and self.ls.configured:
            try:
                self.sync_annotations(project_id)
            except Exception as exc:  # Label Studio unreachable: train on what the webhooks delivered
                log.warning("project %s: could not list annotations in Label Studio (%s); training on the %d "
                            "stored ones", project_id, self.redactor.error(exc),
                            self.store.count_annotations(project_id))
                notes.append(f"annotations not re-read from Label Studio ({type(exc).__name__})")
        project = self.store.get_project(project_id)
        target = parse_label_config(project.label_config)
        task_ids, labels = training_set(self.store, project_id, target)
        dropped = labels_not_in_config(self.store, project_id, target)
        if dropped:  # the label config changed after annotating: say what is not learnt from
            listed = ", ".join(f"{label!r} ({n})" for label, n in sorted(dropped.items()))
            log.warning("project %s: annotations use labels the label config no longer has, not learnt from: %s",
                        project_id, listed)
            notes.append(f"labels not in the label config, not learnt from: {listed}")
        urls = self.store.content_keys(project_id, task_ids)
        configured = self.rules.learner(project.extra_params) if self.learner is not None else "head"
        diversity = self.rules.diversity(project.extra_params) if self.learner is not None else None
        self_train = self.rules.self_train(project.extra_params) if self.learner is not None else 0
        asked = (configured + (f"+{diversity}{self.rules.settings.kmeans_batch}" if diversity else "")
                 + (f"+self{self_train}" if self_train else ""))
        fingerprint = training_fingerprint(project.embedder, target, task_ids, labels, urls, asked)
        served = self.store.get_version(project_id, project.model_version)
        if served is not None and served.fingerprint == fingerprint and not self.heads.intact(served):
            # Same training set, but the served head is damaged on disk (refused when served): publish it anew.
            log.warning("project %s: the head of %s is damaged on disk; retraining on the same annotations",
                        project_id, served.model_version)
            notes.append(f"the head of {served.model_version} was damaged on disk: trained again")
        elif served is not None and served.fingerprint == fingerprint:
            # A burst's second run (LS's own START_TRAINING after the webhooks) or Start Training with nothing new.
            note = f"training set unchanged since {served.model_version}: nothing published"
            log.info("project %s: %s", project_id, note)
            return None, len(task_ids), "; ".join(notes + [note])
        if not task_ids:
            if project.revision == 0:
                return None, 0, "no usable annotations (none, all skipped, or no label from this config)"
            # Every annotation was deleted: go back to the untrained prior rather than keep serving old labels.
            prior = prior_head(target, self.embeddings.embedder(project), self.heads.priors)
            version = self.publish(project_id, prior, 0, fingerprint)
            self._record_learner(project_id, version, LearnerFit(configured, "head", reason="no annotations"))
            return version, 0, "no annotations left: back to the prior"
        tasks = [{"id": t, "data": {target.data_key: urls.get(t, (None, None))[0]}} for t in task_ids]
        embedded = self.embeddings.embed(project, tasks, target.data_key)
        rows = np.flatnonzero(embedded.ok)
        if not len(rows):
            raise RuntimeError(f"none of the {len(task_ids)} annotated images could be read: "
                               + "; ".join(list(embedded.errors.values())[:3]))
        features, y = embedded.features[rows], _targets(target, [labels[i] for i in rows])
        head = prior_head(target, embedded.embedder, self.heads.priors)  # the same prior as r0
        head.fit(features, y, warm_start=self._warm_start(project_id, served, target, embedded.embedder, head))
        fit = LearnerFit("head", "head") if self.learner is None else self.learner.fit(
            project_id, configured, target, embedded.embedder.id, [embedded.keys[i] for i in rows], y, head,
            self.rules.strategy(project.extra_params), diversity, self.rules.settings.kmeans_batch, self_train,
            features, lambda x, labels, warm: prior_head(target, embedded.embedder, self.heads.priors).fit(
                x, labels, warm_start=warm))  # "+self": the same head fit, on annotations + pseudo-labels
        version = self.publish(project_id, SavedWithPool(fit.head or head, fit.pool), len(rows), fingerprint,
                               fit.tag)
        self._record_learner(project_id, version, fit)
        if self.after_publish is not None:
            self.after_publish(project_id)
        if fit.used != fit.configured:
            notes.append(f"learner {fit.configured} not used ({fit.reason}): head probabilities served")
        elif fit.reason:
            notes.append(fit.reason)
        if fit.pseudo_labels is not None:
            notes.append(f"+self: head refitted on {len(rows)} annotations + {fit.pseudo_labels} pseudo-labels")
        # Estimated after publishing: the k-fold fits must not delay the version annotators are waiting for.
        accuracy = self.estimate(target, embedded.embedder, features, y, self.heads.priors)
        if accuracy is not None:
            self.store.set_accuracy(project_id, version, accuracy)
        log.info("project %s: %s %s%s", project_id, version, describe(accuracy),
                 f", estimated in {accuracy['seconds']:.2f}s" if accuracy else "")
        notes.append(describe(accuracy))
        if embedded.errors:
            notes.append(f"{len(embedded.errors)} annotated image(s) unreadable")
        if self.push_enabled and self.ls.configured:
            notes.append(self._push_after_publish(project_id))
        if self.suspects is not None:  # same features and labels as the head: no image is read again
            notes.append(self.suspects.after_publish(project_id, version, [task_ids[i] for i in rows], features,
                                                     y, target))
        return version, int(len(rows)), "; ".join(notes) or None

    def _warm_start(self, project_id: str, served, target: ImageClassification, embedder, head):
        """Return the served head when the new one can start from it (a trained head of the same labels and
        prior on the same embedder: the same problem, so the same solution in fewer steps), else None."""
        if served is None or not served.head_dir:
            return None
        try:
            previous = self.heads.get(project_id, served, target, embedder)
        except (OSError, ValueError) as exc:  # an unreadable served folder: the fit starts from the prior
            log.warning("project %s: training from the prior, not from %s (%s)", project_id, served.model_version, exc)
            return None
        return previous if head.accepts_warm_start(previous) else None

    @staticmethod
    def estimate(target: ImageClassification, embedder, features: np.ndarray, y: np.ndarray,
                 priors=None) -> dict | None:
        """Return the k-fold accuracy of the head this retrain fits (backend.accuracy), or None when there are
        too few annotations or the estimate fails (it never blocks a publish; the log says why)."""
        try:
            return estimate_accuracy(features, y, lambda: prior_head(target, embedder, priors),  # as published
                                     lambda head, x: label_probabilities(head, target, x), target.multiple)
        except Exception as exc:  # a fold with one class the solver rejects, say: publish without a figure
            log.warning("accuracy not estimated (%s: %s)", type(exc).__name__, exc)
            return None

    def sync_annotations(self, project_id: str) -> int:
        """Replace the stored annotations with the project's annotations in Label Studio; returns the count."""
        data_key = parse_label_config(self.store.get_project(project_id).label_config).data_key
        annotations, task_urls = [], []
        for task in self.ls.iter_tasks(project_id):
            url = (task.get("data") or {}).get(data_key)
            task_urls.append((int(task["id"]), url if isinstance(url, str) else None))
            for ann in task.get("annotations") or []:
                ann = ann if isinstance(ann, dict) else dict(ann)
                if usable(ann):
                    annotations.append(Annotation(int(ann["id"]), int(task["id"]), ann["result"]))
        self.store.remember_tasks(project_id, task_urls)
        return self.store.replace_annotations(project_id, annotations)

    def _record_learner(self, project_id: str, version: str, fit: LearnerFit) -> None:
        """Keep the learner the version was published with for /metrics and `labelloop status`."""
        self.store.kv_set(project_id, LEARNER_KEY, json.dumps(fit.state(version)))

    def publish(self, project_id: str, head, n_annotations: int, fingerprint: str | None = None,
                learner: str = "head") -> str:
        """Save `head` to a fresh folder, then switch the project to it in one SQLite transaction; returns
        the new version (naming `learner` unless it is the head alone). Label Studio's project version
        follows once it has predictions of it (VersionSync)."""
        store = self.store
        project = store.get_project(project_id)
        revision = store.next_revision(project_id)
        version = head_version(project.embedder, project_id, revision, learner)
        heads_dir = store.heads_dir(project_id)
        final = heads_dir / f"r{revision}"
        staging = heads_dir / f".r{revision}-{uuid.uuid4().hex[:8]}"
        try:
            head.save(staging)
        except BaseException:  # a full disk, say: leave no half-written folder behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if final.exists():  # left behind by a run that crashed after saving but before publishing
            shutil.rmtree(final)
        staging.rename(final)
        store.publish_version(project_id, revision, version, str(final), n_annotations, fingerprint,
                              head_sha256=head_digest(final))
        log.info("project %s: published %s (%d annotations)", project_id, version, n_annotations)
        # No project-version update here: Label Studio refuses it until predictions of this version exist.
        # It follows after the push below, or after the first /predict of the new version.
        return version

    # -- pushing predictions after a retrain -------------------------------------------------------------------
    def _push_after_publish(self, project_id: str) -> str:
        """Push the new head's predictions when /predict serves the project with the head; returns the note
        saying how many were pushed, or why none were (logged too)."""
        project = self.store.get_project(project_id)
        try:
            kind = Route(self.rules, project.label_config, project.extra_params).kind
        except LabelConfigError as exc:  # changed since the run read it: /predict answers 422 for it now
            log.warning("project %s: predictions not pushed: /predict refuses this project (%s)", project_id, exc)
            return f"predictions not pushed: /predict refuses this project ({exc})"
        if kind in NOT_PUSHED:
            log.info("project %s: predictions not pushed: %s", project_id, NOT_PUSHED[kind])
            return f"predictions not pushed: {NOT_PUSHED[kind]}"
        try:
            pushed = self.push_predictions(project_id)
        except Exception as exc:  # the version is published either way; Retrieve Predictions still works
            log.warning("project %s: pushing predictions to Label Studio failed (%s)", project_id,
                        self.redactor.error(exc))
            return f"predictions not pushed ({type(exc).__name__})"
        return f"{pushed} prediction(s) pushed to Label Studio"

    def push_predictions(self, project_id: str) -> int:
        """Predict every task of the project with the current head and store the predictions in Label Studio
        (projects.import_predictions), then set the project's model_version to it.

        Returns how many predictions were stored; tasks whose image cannot be read are left out. Raises on
        Label Studio errors. Lets the score column and uncertainty sort refresh without a Retrieve Predictions.
        """
        pushed, batch = 0, []
        for task in self.ls.iter_tasks(project_id):
            batch.append(task)
            if len(batch) >= PUSH_CHUNK:
                pushed += self._push(project_id, batch)
                batch = []
        if batch:
            pushed += self._push(project_id, batch)
        if pushed:
            self.version_sync.predictions_stored(project_id, self.store.current_version(project_id), now=True)
        return pushed

    def _push(self, project_id: str, tasks: list[dict[str, Any]]) -> int:
        project = self.store.get_project(project_id)
        target = parse_label_config(project.label_config)
        version = self.store.get_version(project_id, project.model_version)
        embedded = self.embeddings.embed(project, tasks, target.data_key)
        items = self.heads.predictions(project_id, version, target, embedded,
                                       self.rules.strategy(project.extra_params))
        rows = [{"task": int(task["id"]), "result": p.result, "score": p.score, "model_version": p.model_version}
                for task, p in zip(tasks, items) if p and (p.result or p.score is not None)]
        if rows:
            self.ls.import_predictions(project_id, rows)
        return len(rows)


def _targets(target: ImageClassification, labels: list[list[str]]) -> np.ndarray:
    """Return class indices (single choice) or a 0/1 matrix (multiple choice) in the label config's order."""
    index = {label: k for k, label in enumerate(target.labels)}
    if not target.multiple:
        return np.asarray([index[chosen[0]] for chosen in labels])
    y = np.zeros((len(labels), len(target.labels)), np.float32)
    for j, chosen in enumerate(labels):
        y[j, [index[label] for label in chosen]] = 1.0
    return y
