"""Settings of a pseudo-label run: configs/pseudo.yaml merged with a user YAML and overrides."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from configs import read_mapping


class PseudoSettingsError(ValueError):
    """A pseudo-label setting is unknown or has the wrong value."""


@dataclass
class SamSettings:
    model: str = "facebook/sam-vit-huge"
    points_per_side: int = 32
    pred_iou_thresh: float = 0.7
    stability_score_thresh: float = 0.85
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 1
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 100
    points_per_batch: int = 64


@dataclass
class FelzenszwalbSettings:
    scale: float = 200.0
    sigma: float = 0.8
    min_size: int = 100


@dataclass
class FilterSettings:
    min_score: float = 0.7
    mask_nms_iou: float = 0.8
    inner_cover: float = 0.85
    outer_cover: float = 0.5
    inner_score: float = 0.5
    fallback_top_k: int = 3
    min_box_area: float = 10000


@dataclass
class VisualPromptSettings:
    blur_kernel: int = 31
    saturation: float = 1.5
    value: float = 1.2
    box_colour: tuple = (0, 255, 0)
    box_width: int = 2


@dataclass
class QuestionSettings:
    object: str
    object_options: list
    category: str
    foreground: str
    foreground_options: list
    option: str = "{letter}. {name}"
    option_separator: str = "\n"
    min_object_prob: Optional[float] = None
    batch_size: int = 8
    # open vocabulary (no label set): the category is generated, parsed strictly, re-asked when unparseable
    open_category: str = "What is the object inside the green box? Answer with its category in one or two words."
    open_retry: str = ("{question}\nYour answer \"{previous}\" was not a category name. Answer with the category "
                       "name only, in one or two words.")
    open_max_words: int = 2
    open_max_new_tokens: int = 8
    open_max_retries: int = 2


@dataclass
class PseudoSettings:
    questions: QuestionSettings
    proposer: str = "sam"
    sam: SamSettings = field(default_factory=SamSettings)
    felzenszwalb: FelzenszwalbSettings = field(default_factory=FelzenszwalbSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    visual_prompt: VisualPromptSettings = field(default_factory=VisualPromptSettings)
    model: str = "qwen2-vl"


_SECTIONS = {"sam": SamSettings, "felzenszwalb": FelzenszwalbSettings, "filters": FilterSettings,
             "visual_prompt": VisualPromptSettings, "questions": QuestionSettings}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_pseudo_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PseudoSettings:
    """Return the packaged defaults merged with the YAML at ``path`` and nested ``overrides``.

    Raises PseudoSettingsError naming the file and key for unknown keys or impossible values.
    """
    text = resources.files("configs").joinpath("pseudo.yaml").read_text(encoding="utf-8")
    data, source = read_mapping(text, "configs/pseudo.yaml", PseudoSettingsError), "configs/pseudo.yaml"
    if path is not None:
        source = str(path)
        data = _merge(data, read_mapping(Path(path).read_text(encoding="utf-8"), source, PseudoSettingsError))
    data = _merge(data, overrides or {})
    try:
        sections = {name: cls(**data.pop(name, {})) for name, cls in _SECTIONS.items()}
        settings = PseudoSettings(**sections, **data)
    except TypeError as exc:
        raise PseudoSettingsError(f"{source}: {exc}") from None
    if settings.proposer not in ("sam", "felzenszwalb"):
        raise PseudoSettingsError(f"{source}: proposer must be sam or felzenszwalb, got {settings.proposer!r}")
    if settings.visual_prompt.blur_kernel % 2 != 1:
        raise PseudoSettingsError(f"{source}: visual_prompt.blur_kernel must be odd, got "
                                  f"{settings.visual_prompt.blur_kernel}")
    if "{category}" not in settings.questions.foreground:
        raise PseudoSettingsError(f"{source}: questions.foreground must contain {{category}} (CoT-PL's defect "
                                  "was a placeholder never filled)")
    if settings.questions.open_max_retries < 0 or settings.questions.open_max_words < 1:
        raise PseudoSettingsError(f"{source}: questions.open_max_retries must be >= 0 and open_max_words >= 1")
    return settings
