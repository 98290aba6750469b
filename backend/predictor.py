"""What pre-annotates a project and how its score is computed: the rules over settings and extra_params.

A project picks its predictor through the backend settings (`predictor`, `vlm_model`, `vlm_mode`) or per project
through Label Studio's `extra_params` ({"predictor": "vlm", "vlm_model": ..., "vlm_mode": ..., "vlm_rounds": ...,
"vlm_num_options": ..., "strategy": ..., "learner": ...}). `extra_params` come from whoever can edit the project in Label
Studio, so `vlm_model` may only name a model the operator configured: LABELLOOP_VLM_MODEL or a preset of the
VLM config (configs/vlm.yaml merged with LABELLOOP_VLM_CONFIG). Never loads a model.

What serves a project's /predict (boxes, relabel suggestions, or the predictor chosen here) is decided by
backend.routing.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backend.config import PREDICTORS, STRATEGIES, VLM_MODES, Settings
from backend.labels import ImageClassification, LabelConfigError
from backend.learners import StrategySpec, check_self_train, parse_strategy, resolve_learner


@dataclass(frozen=True)
class PredictorChoice:
    """What pre-annotates a project: the head, or a VLM in one mode."""

    predictor: str          # "head" | "vlm"
    model: str              # VLM preset or the configured hub name / folder
    mode: str               # "ordinary" | "complementary" | "both" ("auto" already resolved)
    rounds: int             # complementary labels per task
    num_options: int        # candidates shown per complementary round

    @property
    def ordinary(self) -> bool:
        return self.mode in ("ordinary", "both")

    @property
    def complementary(self) -> bool:
        return self.mode in ("complementary", "both")


class PredictorRules:
    """Reads a project's strategy, predictor and VLM version from its extra_params over the settings."""

    def __init__(self, settings: Settings, vlm_settings):
        self.settings, self.vlm_settings = settings, vlm_settings

    @property
    def allowed_vlms(self) -> tuple[str, ...]:
        """The VLMs a project may ask for: the configured one and the VLM config's presets."""
        return tuple(dict.fromkeys([self.settings.vlm_model, *sorted(self.vlm_settings.presets)]))

    def strategy(self, extra: dict[str, Any] | None) -> str:
        """Return the strategy name of extra_params["strategy"], else of the configured one ("margin" for
        "margin+mix"); raises LabelConfigError naming the accepted values for others."""
        return self._spec(extra).base

    def learner(self, extra: dict[str, Any] | None) -> str:
        """Return the project's learner (backend.learners): extra_params["strategy"]'s modifier ("margin+lp"),
        else extra_params["learner"], else LABELLOOP_STRATEGY's modifier, else LABELLOOP_LEARNER; raises
        LabelConfigError for an unknown learner, a strategy modifier contradicting extra_params["learner"], or
        a "+self" strategy with a learner other than mix (backend.learners.check_self_train)."""
        spec = self._spec(extra)
        spec_learner = spec.learner if (extra or {}).get("strategy") else None
        configured = self._spec(None).learner or self.settings.learner  # LABELLOOP_STRATEGY's, else LEARNER
        try:
            learner = resolve_learner(spec_learner, (extra or {}).get("learner"), configured)
            check_self_train(spec.self_train, learner, (extra or {}).get("strategy") or self.settings.strategy)
        except ValueError as exc:
            raise LabelConfigError(str(exc)) from None
        return learner

    def self_train(self, extra: dict[str, Any] | None) -> int:
        """Return the pseudo-labels per class of the project's "+self<N>" strategy (0 without "+self")."""
        return self._spec(extra).self_train

    def diversity(self, extra: dict[str, Any] | None) -> str | None:
        """Return "kmeans" when the project's strategy ("margin+kmeans") asks for a k-means-diverse batch at the
        top of the list (backend.learners.KmeansBatch), else None."""
        return self._spec(extra).diversity

    def _spec(self, extra: dict[str, Any] | None) -> StrategySpec:
        chosen = (extra or {}).get("strategy") or self.settings.strategy
        try:
            return parse_strategy(chosen, STRATEGIES)
        except ValueError as exc:
            raise LabelConfigError(f"extra_params strategy: {exc}") from None

    def choice(self, extra: dict[str, Any] | None, target: ImageClassification) -> PredictorChoice:
        """Return the project's predictor from `extra` over the settings.

        Raises LabelConfigError (answered 422 at /setup) for an unknown predictor or mode, a VLM the operator
        did not configure, complementary labels without a complementary control, or rounds/options the
        classes cannot supply.
        """
        extra = extra or {}
        predictor = extra.get("predictor") or self.settings.predictor
        if predictor not in PREDICTORS:
            raise LabelConfigError(f"extra_params predictor {predictor!r} is not one of {', '.join(PREDICTORS)}")
        mode = extra.get("vlm_mode") or self.settings.vlm_mode
        if mode not in VLM_MODES:
            raise LabelConfigError(f"extra_params vlm_mode {mode!r} is not one of {', '.join(VLM_MODES)}")
        if mode == "auto":
            mode = "both" if target.complementary_from else "ordinary"
        model = str(extra.get("vlm_model") or self.settings.vlm_model)
        if model not in self.allowed_vlms:
            raise LabelConfigError(
                f"extra_params vlm_model {model!r} is not a VLM this backend offers; choose one of "
                f"{', '.join(self.allowed_vlms)} (the operator sets LABELLOOP_VLM_MODEL and the presets of "
                "LABELLOOP_VLM_CONFIG)")
        cfg = self.vlm_settings.complementary
        choice = PredictorChoice(predictor, model, mode, _int_param(extra, "vlm_rounds", cfg.rounds),
                                 _int_param(extra, "vlm_num_options", cfg.num_options))
        if predictor == "vlm" and choice.complementary:
            _check_complementary(choice, target, cfg)
        return choice

    def vlm_version(self, choice: PredictorChoice, target: ImageClassification, project: str) -> str:
        """Return "vlm-<model>-<question hash>-p<project>": stable while the model and its question are."""
        vlm = self.vlm_settings
        question = [choice.model, choice.mode, choice.rounds, choice.num_options, asdict(vlm.prompts),
                    vlm.method, asdict(vlm.complementary), target.labels, target.model_names,
                    target.from_name, target.complementary_from, target.multiple, target.score_threshold]
        digest = hashlib.sha256(json.dumps(question, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(choice.model.rstrip("/")).name).strip("-") or "model"
        return f"vlm-{name}-{digest}-p{project}"


def _int_param(extra: dict[str, Any], key: str, default: int) -> int:
    value = extra.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise LabelConfigError(f"extra_params {key} must be a whole number, got {value!r}")
    return int(value)


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
