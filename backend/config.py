"""Backend settings: YAML defaults (configs/backend.yaml), an optional YAML file, env vars, then explicit overrides.

Env names follow upstream label-studio-ml-backend (LABEL_STUDIO_URL, MODEL_DIR, BASIC_AUTH_USER, ...) so that
existing deployments keep working; ours carry a LABELLOOP_ prefix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from configs import read_mapping
from labelers.strategies import STRATEGIES  # the one list of strategy names (re-exported for backend.model)
RETRAIN_POLICIES = ("on_submit", "manual")
PREDICTORS = ("head", "vlm")
VLM_MODES = ("auto", "ordinary", "complementary", "both")

# setting name -> env names, first one set wins (LABEL_STUDIO_HOST is upstream's older name).
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "label_studio_url": ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"),
    "label_studio_api_key": ("LABEL_STUDIO_API_KEY",),
    "verify_ssl": ("VERIFY_SSL",),
    "model_dir": ("MODEL_DIR",),
    "host": ("HOST",),
    "port": ("PORT",),
    "workers": ("WORKERS",),
    "threads": ("THREADS",),
    "log_level": ("LOG_LEVEL",),
    "embedder": ("LABELLOOP_EMBEDDER",),
    "strategy": ("LABELLOOP_STRATEGY",),
    "predictor": ("LABELLOOP_PREDICTOR",),
    "vlm_model": ("LABELLOOP_VLM_MODEL",),
    "vlm_mode": ("LABELLOOP_VLM_MODE",),
    "vlm_device": ("LABELLOOP_VLM_DEVICE",),
    "vlm_dtype": ("LABELLOOP_VLM_DTYPE",),
    "vlm_config": ("LABELLOOP_VLM_CONFIG",),
    "embed_batch_size": ("LABELLOOP_EMBED_BATCH_SIZE",),
    "warm_cache": ("LABELLOOP_WARM_CACHE",),
    "retrain": ("LABELLOOP_RETRAIN",),
    "retrain_debounce_seconds": ("LABELLOOP_RETRAIN_DEBOUNCE",),
    "sync_project_version": ("LABELLOOP_SYNC_PROJECT_VERSION",),
    "push_predictions": ("LABELLOOP_PUSH_PREDICTIONS",),
    "basic_auth_user": ("BASIC_AUTH_USER",),
    "basic_auth_pass": ("BASIC_AUTH_PASS",),
    "webhook_secret": ("LABELLOOP_WEBHOOK_SECRET",),
    "local_files_document_root": ("LOCAL_FILES_DOCUMENT_ROOT",),
    "url_allowlist": ("LABELLOOP_URL_ALLOWLIST",),
    "max_image_bytes": ("LABELLOOP_MAX_IMAGE_BYTES",),
    "max_image_pixels": ("LABELLOOP_MAX_IMAGE_PIXELS",),
    "max_request_bytes": ("LABELLOOP_MAX_REQUEST_BYTES",),
    "fetch_timeout_seconds": ("LABELLOOP_FETCH_TIMEOUT",),
    "predict_budget_seconds": ("LABELLOOP_PREDICT_BUDGET",),
}
CONFIG_ENV = "LABELLOOP_CONFIG"


class ConfigError(ValueError):
    """A setting has an unusable value; the message names the setting and where it came from."""


@dataclass(frozen=True)
class Settings:
    """Everything the backend reads from its environment. Build with `load_settings()`."""

    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    verify_ssl: bool = True
    model_dir: Path = Path("./model_dir")
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 4
    log_level: str = "INFO"
    embedder: str = "auto"
    strategy: str = "margin"
    predictor: str = "head"
    vlm_model: str = "llava-next"
    vlm_mode: str = "auto"
    vlm_device: str = "auto"
    vlm_dtype: str = "auto"
    vlm_config: str | None = None
    embed_batch_size: int = 32
    warm_cache: bool = True
    retrain: str = "on_submit"
    retrain_debounce_seconds: float = 1.0
    sync_project_version: bool = True
    push_predictions: bool = False
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    local_files_document_root: Path | None = None
    url_allowlist: tuple[str, ...] = ()
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    max_request_bytes: int = 100_000_000
    fetch_timeout_seconds: float = 20.0
    predict_budget_seconds: float = 80.0

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def label_studio_connected(self) -> bool:
        """True when both the Label Studio URL and an API key are configured."""
        return bool(self.label_studio_url and self.label_studio_api_key)


def _coerce(name: str, value: Any, source: str) -> Any:
    """Return `value` converted to the type of setting `name`; raises ConfigError naming the source."""
    if value is None or (isinstance(value, str) and value.strip() == "" and name != "host"):
        return None if name not in _NON_NULLABLE else _DEFAULTS[name]
    kind = type(_DEFAULTS[name]) if _DEFAULTS[name] is not None else str
    try:
        if name == "url_allowlist":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(item.strip().lower() for item in items if str(item).strip())
        if name in ("model_dir", "local_files_document_root"):
            return Path(str(value)).expanduser()
        if name == "label_studio_url":
            return str(value).rstrip("/")
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {value!r}")
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r} from {source}: {exc}") from None


_DEFAULTS = {f.name: f.default for f in fields(Settings)}
_NON_NULLABLE = {"model_dir", "host", "port", "workers", "threads", "log_level", "embedder", "strategy",
                 "predictor", "vlm_model", "vlm_mode", "vlm_device", "vlm_dtype",
                 "embed_batch_size", "warm_cache", "retrain", "retrain_debounce_seconds", "sync_project_version",
                 "push_predictions",
                 "verify_ssl", "url_allowlist", "max_image_bytes", "max_image_pixels", "max_request_bytes",
                 "fetch_timeout_seconds", "predict_budget_seconds"}


def default_config_text() -> str:
    """Return the packaged configs/backend.yaml text."""
    return resources.files("configs").joinpath("backend.yaml").read_text(encoding="utf-8")


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    data = read_mapping(text, source, ConfigError)
    unknown = sorted(set(data) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_DEFAULTS))}")
    return data


def load_settings(config_path: str | Path | None = None, env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Return Settings from packaged defaults, then `config_path` (or $LABELLOOP_CONFIG), env, then `overrides`.

    Overrides whose value is None are ignored (so CLI options left unset fall through).
    Raises ConfigError for unknown keys, unparsable values, or an unknown strategy / retrain policy.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, value in _read_yaml(default_config_text(), "configs/backend.yaml").items():
        values[name] = _coerce(name, value, "configs/backend.yaml")
    config_path = config_path or env.get(CONFIG_ENV) or None
    if config_path:
        path = Path(config_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read ({exc.strerror or exc})") from None
        for name, value in _read_yaml(text, str(path)).items():
            values[name] = _coerce(name, value, str(path))
    for name, env_names in ENV_NAMES.items():
        for env_name in env_names:
            if env.get(env_name) not in (None, ""):
                values[name] = _coerce(name, env[env_name], f"env {env_name}")
                break
    for name, value in overrides.items():
        if name not in _DEFAULTS:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = _coerce(name, value, "command line")
    settings = replace(Settings(), **values)
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {settings.strategy!r} is not one of {', '.join(STRATEGIES)}")
    if settings.predictor not in PREDICTORS:
        raise ConfigError(f"predictor {settings.predictor!r} is not one of {', '.join(PREDICTORS)}")
    if settings.vlm_mode not in VLM_MODES:
        raise ConfigError(f"vlm_mode {settings.vlm_mode!r} is not one of {', '.join(VLM_MODES)}")
    if settings.retrain not in RETRAIN_POLICIES:
        raise ConfigError(f"retrain policy {settings.retrain!r} is not one of {', '.join(RETRAIN_POLICIES)}")
    if settings.label_studio_url and not settings.label_studio_url.startswith(("http://", "https://")):
        raise ConfigError(f"LABEL_STUDIO_URL {settings.label_studio_url!r} must start with http:// or https://")
    for name in ("port", "workers", "threads", "embed_batch_size", "max_image_bytes", "max_image_pixels",
                 "max_request_bytes"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"setting {name!r} must be positive, got {getattr(settings, name)}")
    if bool(settings.basic_auth_user) != bool(settings.basic_auth_pass):
        raise ConfigError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
