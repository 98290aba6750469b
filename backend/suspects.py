"""Suspect labels: after each retrain, the project's annotations that are probably wrong.

Run by HeadTrainer right after a version is published, on the very embeddings and labels the retrain fitted
(no image is fetched again). The audit is labelers.audit.find_label_errors: out-of-fold head probabilities
plus a neighbour vote, ranked and flagged by cleanlab. Its cost is bounded: a few head fits (the folds) and
one k-NN query, and projects above MAX_AUDITED annotations are not audited after each retrain (the summary
says so; `labelloop audit` runs the same audit offline).

The result is stored with the version (store.set_audit), shown in /metrics and `labelloop status`, and, with
LABEL_STUDIO_API_KEY configured, made reviewable in Label Studio: a Data Manager view VIEW_TITLE whose filter
selects exactly the suspect tasks (updated in place after each retrain), and on each suspect task a prediction
of version "<version>-audit" carrying the suggested label, scored by how suspect the annotation is.

Nothing here ever fails or undoes a publish: every failure becomes a summary with state "failed" and a note.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np

from backend.labels import ImageClassification
from backend.logs import Redactor
from labelers.audit import RELIABLE_PER_CLASS, AuditError, find_label_errors

log = logging.getLogger(__name__)

MAX_AUDITED = 20_000     # above this, five head fits per retrain would delay the next retrain noticeably
AUDIT_FOLDS = 5
MIN_JUDGED_PER_CLASS = RELIABLE_PER_CLASS  # below it an annotator's first, correct labels come back "suspect"
VIEW_TITLE = "Suspect labels (labelloop)"
VIEW_KEY = "suspects_view"  # kv: the id of the project's suspects view in Label Studio
AUDIT_SUFFIX = "-audit"     # model_version of the suggested-label predictions: "<version>-audit"
METRICS_TASKS = 50          # suspect task ids listed in /metrics (most suspect first)


def audit_version(task_ids: list[int], features: np.ndarray, y: np.ndarray,
                  target: ImageClassification) -> dict[str, Any]:
    """Return the audit summary of one retrain's training set.

    `y` is what the head was fitted on: class indices (single choice) or a 0/1 matrix (multiple choice), in
    the label config's order. The summary: {"state": "judged" | "not_judged", "annotations", "judged",
    "suspects", "not_judged", "reasons": [why items were not judged], "items": [{"task", "given",
    "suggested", "score"}] most suspect first, "seconds"}. "score" is 1 - cleanlab's label quality (high =
    suspect). Never raises for input the audit cannot judge (too few classes or annotations): that is
    state "not_judged" with the reason.
    """
    started = time.perf_counter()
    n = len(task_ids)
    summary: dict[str, Any] = {"state": "not_judged", "annotations": n, "judged": 0, "suspects": 0,
                               "not_judged": n, "reasons": [], "items": []}
    if n > MAX_AUDITED:
        summary["reasons"].append(f"{n} annotations: more than the {MAX_AUDITED} audited after each retrain; "
                                  "run `labelloop audit` on an export instead")
        return summary
    labels = np.asarray(y).astype(np.int64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reduced folds are reported in result.notes
            result = find_label_errors(features, labels, list(target.labels), multi_label=target.multiple,
                                       folds=AUDIT_FOLDS, min_per_class=MIN_JUDGED_PER_CLASS)
    except AuditError as exc:
        summary["reasons"].append(str(exc))
        summary["seconds"] = round(time.perf_counter() - started, 4)
        return summary
    names = list(target.labels)
    items = []
    for row in result.ranking():
        if not result.flagged[row]:
            continue
        if target.multiple:
            given = [names[k] for k in np.flatnonzero(result.given[row])]
            suggested = [names[k] for k in np.flatnonzero(result.suggested[row])]
        else:
            given, suggested = [names[result.given[row]]], [names[result.suggested[row]]]
        items.append({"task": int(task_ids[row]), "given": given, "suggested": suggested,
                      "score": round(1.0 - float(result.quality[row]), 4)})
    judged = int(result.judged.sum())
    summary.update(state="judged", judged=judged, suspects=len(items), not_judged=n - judged,
                   reasons=list(result.notes), items=items, folds=result.folds,
                   seconds=round(time.perf_counter() - started, 4))
    return summary


def metrics_view(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return the /metrics form of a stored audit: the counts and reasons, and the METRICS_TASKS most suspect
    items ("items", with "tasks" their ids); "suspects" still counts them all."""
    if not audit:
        return None
    shown = dict(audit)
    shown["items"] = audit.get("items", [])[:METRICS_TASKS]
    shown["tasks"] = [item["task"] for item in shown["items"]]
    return shown


def view_filter(task_ids: list[int]) -> dict[str, Any]:
    """Return Data Manager filters selecting exactly `task_ids` (none: a filter no task matches, id -1)."""
    ids = task_ids or [-1]
    return {"conjunction": "or",
            "items": [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(t)}
                      for t in ids]}


def suggestion_predictions(audit: dict[str, Any], target: ImageClassification, version: str) -> list[dict]:
    """Return one Label Studio prediction per suspect task: the suggested label, scored by suspicion."""
    return [{"task": item["task"], "result": [target.region(item["suggested"])], "score": item["score"],
             "model_version": f"{version}{AUDIT_SUFFIX}"} for item in audit["items"] if item["suggested"]]


class SuspectAuditor:
    """Audits a published version's training set, stores the summary and updates Label Studio."""

    def __init__(self, store, ls, enabled: bool = True, redactor: Redactor | None = None):
        self.store, self.ls, self.enabled = store, ls, enabled
        self.redactor = redactor or Redactor()

    def after_publish(self, project_id: str, version: str, task_ids: list[int], features: np.ndarray,
                      y: np.ndarray, target: ImageClassification) -> str:
        """Audit, store the summary with `version` and, when configured, update Label Studio. Returns a note
        for the training run ("3 suspect label(s) of 120 judged", "audit off", ...). Never raises."""
        if not self.enabled:
            return "label audit off (LABELLOOP_AUDIT)"
        try:
            audit = audit_version(task_ids, features, y, target)
        except Exception as exc:  # a bug or a solver failure: the version stays published, the run says why
            log.warning("project %s: label audit of %s failed (%s)", project_id, version, self.redactor.error(exc))
            audit = {"state": "failed", "annotations": len(task_ids), "judged": 0, "suspects": 0,
                     "not_judged": len(task_ids), "reasons": [f"audit failed: {self.redactor.error(exc)}"],
                     "items": []}
        # Not judged: a view made by an earlier audit is emptied, so it never shows another version's suspects
        if self.ls.configured and (audit["state"] == "judged" or self.store.kv_get(project_id, VIEW_KEY)):
            audit["label_studio"] = self._review_in_label_studio(project_id, version, audit, target)
        try:
            self.store.set_audit(project_id, version, audit)
        except Exception as exc:
            log.warning("project %s: could not store the audit of %s (%s)", project_id, version, exc)
        return describe(audit)

    def _review_in_label_studio(self, project_id: str, version: str, audit: dict[str, Any],
                                target: ImageClassification) -> dict[str, Any]:
        """Update the suspects view and import the suggestions; returns {"view", "predictions"} or {"error"}."""
        tasks = [item["task"] for item in audit["items"]]
        try:
            known = self.store.kv_get(project_id, VIEW_KEY)
            view = self.ls.upsert_view(project_id, VIEW_TITLE, view_filter(tasks),
                                       int(known) if known else None)
            self.store.kv_set(project_id, VIEW_KEY, str(view))
            rows = suggestion_predictions(audit, target, version)
            if rows:
                self.ls.import_predictions(project_id, rows)
            return {"view": view, "predictions": len(rows)}
        except Exception as exc:  # Label Studio unreachable or refusing: the counts still stand
            log.warning("project %s: could not show the suspect labels in Label Studio (%s)", project_id,
                        self.redactor.error(exc))
            return {"error": self.redactor.error(exc)}


def describe(audit: dict[str, Any] | None) -> str:
    """Return e.g. "3 suspect label(s) among 120 judged" or "labels not judged: <reason>"."""
    if not audit:
        return "labels not audited"
    if audit["state"] == "judged":
        text = f"{audit['suspects']} suspect label(s) among {audit['judged']} judged"
        if audit["not_judged"]:
            text += f", {audit['not_judged']} not judged"
        return text
    reason = "; ".join(audit.get("reasons") or []) or "no reason given"
    return f"labels {'not judged' if audit['state'] == 'not_judged' else 'audit failed'}: {reason}"
