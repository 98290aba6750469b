"""VLM labeling settings: packaged ``configs/vlm.yaml``, optionally merged with a user YAML file."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from configs import read_mapping


class SettingsError(ValueError):
    """A settings file is unreadable or holds a value of the wrong kind; the message names file and key."""


@dataclass
class Prompts:
    """Question templates (``{options}`` is replaced by the lettered option list) and option format."""
    ordinary: str
    complementary: str
    option: str = "{letter}. {name}"
    option_separator: str = "\n"


@dataclass
class ComplementarySettings:
    num_options: int = 4
    rounds: int = 3
    distinct: bool = True
    balance: bool = True
    quota_floor: float = 1.0
    seed: int = 1126


@dataclass
class VLMSettings:
    """Everything a labeling run needs besides the images and class names."""
    prompts: Prompts
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_model: str = "llava-next"
    answer_prefix: dict[str, str] = field(default_factory=lambda: {"default": ""})
    method: str = "score"
    max_new_tokens: int = 10
    max_retries: int = 2
    batch_size: int = 8
    complementary: ComplementarySettings = field(default_factory=ComplementarySettings)

    def prefix_for(self, model_type: str) -> str:
        """Return the text the assistant's answer starts with for this ``model_type``."""
        return self.answer_prefix.get(model_type, self.answer_prefix.get("default", ""))


def default_settings_text() -> str:
    """Return the packaged ``configs/vlm.yaml`` text."""
    return resources.files("configs").joinpath("vlm.yaml").read_text(encoding="utf-8")


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _parse(text: str, source: str) -> dict:
    return read_mapping(text, source, SettingsError)


def load_settings(path: str | Path | None = None, **overrides: Any) -> VLMSettings:
    """Return settings from the packaged defaults, merged with the YAML at ``path`` and ``overrides``.

    ``overrides`` with value None are ignored, so CLI options can be passed straight through.
    Raises SettingsError naming the file and key for unknown keys or values of the wrong type,
    and FileNotFoundError when ``path`` does not exist.
    """
    data = _parse(default_settings_text(), "configs/vlm.yaml")
    source = "configs/vlm.yaml"
    if path is not None:
        source = str(path)
        data = _merge(data, _parse(Path(path).read_text(encoding="utf-8"), source))
    data = _merge(data, {key: value for key, value in overrides.items() if value is not None})
    try:
        prompts = Prompts(**data.pop("prompts"))
        complementary = ComplementarySettings(**data.pop("complementary", {}))
        settings = VLMSettings(prompts=prompts, complementary=complementary, **data)
    except TypeError as exc:
        raise SettingsError(f"{source}: {exc}") from None
    _validate(settings, source)
    return settings


def _validate(settings: VLMSettings, source: str) -> None:
    checks = [
        (settings.method in ("score", "generate"), "method must be 'score' or 'generate'"),
        (isinstance(settings.max_retries, int) and settings.max_retries >= 0, "max_retries must be an int >= 0"),
        (isinstance(settings.batch_size, int) and settings.batch_size >= 1, "batch_size must be an int >= 1"),
        (settings.complementary.num_options >= 2, "complementary.num_options must be >= 2"),
        (settings.complementary.rounds >= 1, "complementary.rounds must be >= 1"),
        ("{options}" in settings.prompts.ordinary, "prompts.ordinary must contain {options}"),
        ("{options}" in settings.prompts.complementary, "prompts.complementary must contain {options}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SettingsError(f"{source}: {message}")
