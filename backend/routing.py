"""What serves a project's /predict: box pre-annotations, relabel suggestions, the VLM or the head.

`Route(rules, label_config, extra_params).kind` is the one place that decides it, in /predict's order: a box project
(backend.boxes) first, then relabel suggestions (backend.relabel_suggestions), then the predictor the project
chose (backend.predictor). /predict (backend.model) follows it, and so does the warmer (backend.warmer), which
prepares ahead only what the head will read: the two cannot disagree about which projects the head serves.
So do the version a project is told it is served with (backend.versions.ServedVersion) and the push of the
head's predictions after a retrain (backend.head_trainer), which skips every project the head does not serve.
(Not a method of PredictorRules: backend.boxes imports backend.vlm, which imports backend.predictor.)
"""
from __future__ import annotations

from functools import cached_property
from typing import Any

from backend.boxes import BoxTarget, box_target
from backend.labels import ImageClassification, parse_label_config
from backend.predictor import PredictorChoice, PredictorRules
from backend.relabel_suggestions import RelabelSettings, relabel_settings

ROUTES = ("boxes", "relabel", "vlm", "head")  # what can serve a project's /predict, in the order it is decided


class Route:
    """What serves one project's /predict, from its label config and extra_params, and the parts that decided it.

    Nothing is parsed when it is made. Each part is worked out when first read (and then kept), so a caller
    reading only `target` parses only the config, and the first LabelConfigError raised is the one of the first
    unusable part in /predict's order: the config's box control, its classification control, the predictor
    choice, the relabel settings."""

    def __init__(self, rules: PredictorRules, label_config: str | None, extra_params: dict[str, Any] | None):
        self.rules, self.label_config, self.extra_params = rules, label_config, extra_params

    @cached_property
    def boxes(self) -> BoxTarget | None:
        """The <RectangleLabels> control of a box project (backend.boxes.box_target), else None."""
        return box_target(self.label_config, self.extra_params)

    @cached_property
    def target(self) -> ImageClassification:
        """The control served (a box project: its labels as classes); raises LabelConfigError when none."""
        return self.boxes.classes if self.boxes else parse_label_config(self.label_config)

    @cached_property
    def choice(self) -> PredictorChoice:
        """The predictor ("head" | "vlm") and its VLM settings (`PredictorRules.choice`)."""
        return self.rules.choice(self.extra_params, self.target)

    @cached_property
    def relabel(self) -> RelabelSettings | None:
        """Relabel suggestions asked for by extra_params "relabel" (never for a box project), else None."""
        return None if self.boxes else relabel_settings(self.extra_params, self.target)

    @property
    def kind(self) -> str:
        """Return one of ROUTES: "boxes" for a box project, else "relabel" when it asks for relabel suggestions,
        else the predictor ("vlm" | "head"). Raises LabelConfigError when /predict refuses the project (422):
        the predictor choice is checked for every project, box and relabel ones too."""
        choice = self.choice
        if self.boxes is not None:
            return "boxes"
        return "relabel" if self.relabel is not None else choice.predictor
