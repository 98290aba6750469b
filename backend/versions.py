"""The version a project's predictions carry: "<model>-p<project>-r<n>" for its head ("<model>-mix-p<project>-r<n>"
when another learner than the head alone made its probabilities, backend.learners), or its VLM's version;
relabel suggestions and box pre-annotations add a suffix naming their settings ("-relabel-<hash>", "-boxes-<hash>").

`ServedVersion` is the one function that names it; the model, /metrics and the Label Studio version sync all
call it, so they never disagree. It names what /predict's own rule (backend.routing.Route) says serves the
project, so it cannot disagree with /predict either (relabel suggestions are the head's, whatever the predictor).
"""
from __future__ import annotations

from backend.boxes import box_settings, box_version, pipeline_settings
from backend.embedders import version_prefix
from backend.labels import LabelConfigError
from backend.predictor import PredictorRules
from backend.relabel_suggestions import relabel_version
from backend.routing import Route


def head_version(embedder_spec: str, project: str, revision: int, learner: str = "head") -> str:
    """Return "<model>-p<project>-r<revision>", the version of a project's head revision, with the learner
    after the model when it is not the head alone ("<model>-mix-p1-r3"): Label Studio then shows another
    version when the learner changes."""
    name = version_prefix(embedder_spec) + ("" if learner == "head" else f"-{learner}")
    return f"{name}-p{project}-r{revision}"


def initial_version(embedder_spec: str, project: str) -> str:
    """Return the version a project starts with: "<model>-p<project>-r0"."""
    return head_version(embedder_spec, project, 0)


class ServedVersion:
    """`served(project)` -> the version its predictions carry now, or None for a project never connected."""

    def __init__(self, store, rules: PredictorRules, pseudo_config: str | None = None):
        self.store, self.rules, self.pseudo_config = store, rules, pseudo_config

    def __call__(self, project: str, label_config: str | None = None, extra_params: dict | None = None
                 ) -> str | None:
        """Read from SQLite on every call (never stale across workers). `label_config`/`extra_params` override
        the stored ones. The version names what /predict serves the project with, decided by /predict's own
        rule (backend.routing.Route), so the two never disagree. A project whose config /predict refuses keeps
        its head's version."""
        stored = self.store.get_project(project)
        if stored is None:
            return None
        route = Route(self.rules, label_config or stored.label_config,
                      stored.extra_params if extra_params is None else extra_params)
        try:
            return self._version(route, stored, project)
        except LabelConfigError:
            return stored.model_version

    def _version(self, route: Route, stored, project: str) -> str:
        """Return the version of what `route.kind` names; raises LabelConfigError as the route does."""
        kind = route.kind
        if kind == "head":
            return stored.model_version
        if kind == "relabel":  # the head scores the regions, whatever the predictor: its version, suffixed
            return relabel_version(stored.model_version, route.relabel)
        vlm = self.rules.vlm_version(route.choice, route.target, project) if route.choice.predictor == "vlm" \
            else None
        if kind == "vlm":
            return vlm
        # A box project's version names its box pipeline too: Label Studio asks again when it changes.
        settings = box_settings(route.extra_params)
        return box_version(vlm or stored.model_version, route.boxes, settings,
                           pipeline_settings(self.pseudo_config, settings), vlm or "head")
