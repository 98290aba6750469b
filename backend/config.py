"""Backend settings (pydantic-settings): packaged defaults (configs/backend.yaml), then a YAML file
(--config / $LABELLOOP_CONFIG), then environment variables, then explicit overrides (CLI options).

Env names follow upstream label-studio-ml-backend (LABEL_STUDIO_URL, MODEL_DIR, BASIC_AUTH_USER, ...) so that
existing deployments keep working; ours carry a LABELLOOP_ prefix. Each field's `validation_alias` lists its
env names, first one set wins (LABEL_STUDIO_HOST is upstream's older name for LABEL_STUDIO_URL, and the
document root also answers to Label Studio's own LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).
"""
from __future__ import annotations

import ipaddress
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, InitSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from configs import read_mapping
from labelers.formats.label_studio import LOCAL_FILES_ROOT_ENV
from backend.learners import LEARNERS, check_self_train, parse_strategy
from labelers.strategies import STRATEGIES  # the one list of strategy names (re-exported for backend.model)

RETRAIN_POLICIES = ("on_submit", "manual")
PREDICTORS = ("head", "vlm")
VLM_MODES = ("auto", "ordinary", "complementary", "both")
CONFIG_ENV = "LABELLOOP_CONFIG"


class ConfigError(ValueError):
    """A setting has an unusable value; the message names the setting and where it came from."""


def _env(default: Any, *names: str, secret: bool = False) -> Any:
    """A field whose env names are `names` (first set wins); YAML files and overrides use the field name."""
    return Field(default, validation_alias=AliasChoices(*names), repr=not secret)


class Settings(BaseSettings):
    """Everything the backend reads from its environment. Build with `load_settings()` (or `Settings()`)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_by_name=True, case_sensitive=True,
                                      env_ignore_empty=True)

    label_studio_url: str | None = _env(None, "LABEL_STUDIO_URL", "LABEL_STUDIO_HOST")
    label_studio_api_key: str | None = _env(None, "LABEL_STUDIO_API_KEY", secret=True)
    # A file holding the key instead: re-read when it changes, so a fixed key needs no restart (ls_auth).
    label_studio_api_key_file: Path | None = _env(None, "LABEL_STUDIO_API_KEY_FILE")
    verify_ssl: bool = _env(True, "VERIFY_SSL")
    model_dir: Path = _env(Path("./model_dir"), "MODEL_DIR")
    host: str = _env("127.0.0.1", "HOST")  # loopback unless asked: see docs/backend.md §7
    port: int = Field(9090, gt=0, lt=65536, validation_alias="PORT")
    workers: int = Field(1, gt=0, validation_alias="WORKERS")
    threads: int = Field(4, gt=0, validation_alias="THREADS")
    log_level: str = _env("INFO", "LOG_LEVEL")
    embedder: str = _env("auto", "LABELLOOP_EMBEDDER")
    clip: str | None = _env(None, "LABELLOOP_CLIP", "LABELLOOP_CLIP_WEIGHTS")  # for embedder "auto"
    strategy: str = _env("margin", "LABELLOOP_STRATEGY")  # a name, or name+learner ("margin+mix")
    learner: Literal[LEARNERS] = _env("mix", "LABELLOOP_LEARNER")  # backend/learners.py, docs/backend.md §4 "Learner"
    kmeans_batch: int = Field(20, gt=1, validation_alias="LABELLOOP_KMEANS_BATCH")  # "+kmeans": diverse picks
    predictor: Literal[PREDICTORS] = _env("head", "LABELLOOP_PREDICTOR")
    vlm_model: str = _env("llava-next", "LABELLOOP_VLM_MODEL")
    vlm_mode: Literal[VLM_MODES] = _env("auto", "LABELLOOP_VLM_MODE")
    vlm_device: str = _env("auto", "LABELLOOP_VLM_DEVICE")
    vlm_dtype: str = _env("auto", "LABELLOOP_VLM_DTYPE")
    vlm_config: str | None = _env(None, "LABELLOOP_VLM_CONFIG")
    pseudo_config: str | None = _env(None, "LABELLOOP_PSEUDO_CONFIG")  # box pre-annotations (backend.boxes)
    embed_batch_size: int = Field(32, gt=0, validation_alias="LABELLOOP_EMBED_BATCH_SIZE")
    warm_cache: bool = _env(True, "LABELLOOP_WARM_CACHE")
    retrain: Literal[RETRAIN_POLICIES] = _env("on_submit", "LABELLOOP_RETRAIN")
    retrain_debounce_seconds: float = Field(1.0, ge=0, validation_alias="LABELLOOP_RETRAIN_DEBOUNCE")
    sync_project_version: bool = _env(True, "LABELLOOP_SYNC_PROJECT_VERSION")
    push_predictions: bool = _env(False, "LABELLOOP_PUSH_PREDICTIONS")
    audit: bool = _env(True, "LABELLOOP_AUDIT")  # suspect labels after each retrain (backend/suspects.py)
    basic_auth_user: str | None = _env(None, "BASIC_AUTH_USER")
    basic_auth_pass: str | None = _env(None, "BASIC_AUTH_PASS", secret=True)
    webhook_secret: str | None = _env(None, "LABELLOOP_WEBHOOK_SECRET", secret=True)
    local_files_document_root: Path | None = _env(None, *LOCAL_FILES_ROOT_ENV)
    url_allowlist: Annotated[tuple[str, ...], NoDecode] = _env((), "LABELLOOP_URL_ALLOWLIST")
    max_image_bytes: int = Field(20_000_000, gt=0, validation_alias="LABELLOOP_MAX_IMAGE_BYTES")
    max_image_pixels: int = Field(40_000_000, gt=0, validation_alias="LABELLOOP_MAX_IMAGE_PIXELS")
    max_request_bytes: int = Field(100_000_000, gt=0, validation_alias="LABELLOOP_MAX_REQUEST_BYTES")
    fetch_timeout_seconds: float = Field(20.0, gt=0, validation_alias="LABELLOOP_FETCH_TIMEOUT")
    predict_budget_seconds: float = Field(80.0, ge=0, validation_alias="LABELLOOP_PREDICT_BUDGET")

    @field_validator("label_studio_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("strategy")
    @classmethod
    def _strategy_spec(cls, value: str) -> str:
        parse_strategy(value, STRATEGIES)  # a typo fails at start-up, naming the accepted values
        return value

    @field_validator("model_dir", "local_files_document_root", mode="before")
    @classmethod
    def _expand_user(cls, value: Any) -> Any:
        return Path(str(value)).expanduser() if isinstance(value, (str, Path)) else value

    @field_validator("local_files_document_root")
    @classmethod
    def _existing_root(cls, value: Path | None) -> Path | None:
        # A wrong root would otherwise only show as "not found" on every image, one task at a time.
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not an existing directory; it must be the folder Label Studio serves "
                             "/data/local-files/ from (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), as seen here")
        return value

    @field_validator("url_allowlist", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            return tuple(str(item).strip().lower() for item in items if str(item).strip())
        return value

    @model_validator(mode="after")
    def _self_train_learner(self) -> "Settings":
        # "+self" with LABELLOOP_LEARNER=head (or lp) fails at start-up, not at the first retrain.
        spec = parse_strategy(self.strategy, STRATEGIES)
        check_self_train(spec.self_train, spec.learner or self.learner, self.strategy)
        return self

    @model_validator(mode="after")
    def _auth_pair(self) -> "Settings":
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        # HTTP basic auth carries "user:password" as ASCII: anything else could never log in.
        if self.basic_auth_user and (not self.basic_auth_user.isascii() or ":" in self.basic_auth_user):
            raise ValueError("BASIC_AUTH_USER must be ASCII without ':'")
        if self.basic_auth_pass and not self.basic_auth_pass.isascii():
            raise ValueError("BASIC_AUTH_PASS must be ASCII")
        return self

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    @property
    def label_studio_connected(self) -> bool:
        """True when both the Label Studio URL and an API key (or a key file) are configured."""
        return bool(self.label_studio_url and (self.label_studio_api_key or self.label_studio_api_key_file))

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """`Settings()` reads what `load_settings()` reads: overrides, env, $LABELLOOP_CONFIG, packaged defaults."""
        return init_settings, env_settings, *(source for _, source in _yaml_sources(os.environ.get(CONFIG_ENV)))


class _MappingEnv(EnvSettingsSource):
    """Environment variables read from `env` rather than always os.environ, so callers (tests) can pass their own."""

    def __init__(self, env: Mapping[str, str]):
        self._mapping = env
        super().__init__(Settings)

    def _load_env_vars(self):
        return parse_env_vars(self._mapping, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def default_config_text() -> str:
    """Return the packaged configs/backend.yaml text."""
    return resources.files("configs").joinpath("backend.yaml").read_text(encoding="utf-8")


def _yaml_values(text: str, source: str) -> dict[str, Any]:
    """Return the settings in a YAML text (nulls dropped: they mean "the default"); raises ConfigError."""
    data = read_mapping(text, source, ConfigError)
    known = set(Settings.model_fields)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {name: value for name, value in data.items() if value is not None}


def _yaml_sources(config_path: str | Path | None) -> list[tuple[str, InitSettingsSource]]:
    """Return (label, source) for the YAML file at `config_path` (if any), then the packaged defaults."""
    layers = []
    if config_path:
        path = Path(config_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read ({exc.strerror or exc})") from None
        layers.append((str(path), _yaml_values(text, str(path))))
    layers.append(("configs/backend.yaml", _yaml_values(default_config_text(), "configs/backend.yaml")))
    return [(label, InitSettingsSource(Settings, values)) for label, values in layers]


def load_settings(config_path: str | Path | None = None, env: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Return Settings from packaged defaults, then `config_path` (or $LABELLOOP_CONFIG), `env` (default
    os.environ), then `overrides`; overrides whose value is None are ignored (CLI options left unset).

    Raises ConfigError naming the setting and where its value came from, for unknown keys, unparsable values,
    unknown choices (strategy, retrain policy, ...), or a document root that is not a directory.
    """
    env = os.environ if env is None else env
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))}")
    given = {name: value for name, value in overrides.items() if value is not None}
    sources = [("command line", InitSettingsSource(Settings, given)), ("env", _MappingEnv(env)),
               *_yaml_sources(config_path or env.get(CONFIG_ENV))]
    layers = [(label, source()) for label, source in sources]
    merged: dict[str, Any] = {}
    for _, values in reversed(layers):  # lowest precedence first; settings are flat, so no deep merge
        merged.update(values)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, layers, env)) from None


def _explain(exc: ValidationError, layers: list[tuple[str, dict[str, Any]]], env: Mapping[str, str]) -> str:
    """Return every error, "; "-separated: the setting, where its value came from, and what is wrong with it."""
    by_key = {env_name(name): name for name in Settings.model_fields}
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err.get("loc") else ""
        message = err["msg"].removeprefix("Value error, ")
        if key not in by_key:
            lines.append(message)
            continue
        origin = next((label for label, values in layers if key in values), "defaults")
        where = f"env {_env_name_used(by_key[key], env)}" if origin == "env" else origin
        lines.append(f"setting {by_key[key]!r} from {where}: {message}")
    return "; ".join(lines)


def env_name(name: str) -> str:
    """Return the (first) environment variable of setting `name`, e.g. "MODEL_DIR" for "model_dir"."""
    alias = Settings.model_fields[name].validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else str(alias)


def _env_name_used(name: str, env: Mapping[str, str]) -> str:
    """Return the env variable setting `name` was read from (the first of its names that is set)."""
    alias = Settings.model_fields[name].validation_alias
    names = alias.choices if isinstance(alias, AliasChoices) else [str(alias)]
    return next((n for n in names if env.get(n)), names[0])


def startup_warnings(settings: Settings) -> list[str]:
    """Return what an operator must hear at start: an exposed server without auth, an unreachable webhook."""
    warnings = []
    if not settings.basic_auth_enabled and not _is_loopback(settings.host):
        warnings.append(
            f"listening on {settings.host}:{settings.port}, beyond this machine, WITHOUT basic auth: anyone who "
            "can reach the port can read /metrics, run predictions and post webhooks. Set BASIC_AUTH_USER and "
            "BASIC_AUTH_PASS (and the same on the model in Label Studio), or HOST=127.0.0.1")
    if settings.basic_auth_enabled and not settings.webhook_secret:
        warnings.append(
            "basic auth is on but LABELLOOP_WEBHOOK_SECRET is not set: Label Studio's auto-created webhook sends "
            "no credentials, so its annotation events will be refused (401) and nothing retrains on submit. "
            "Set LABELLOOP_WEBHOOK_SECRET and add the header X-Labelloop-Secret to that webhook (docs/backend.md §7)")
    return warnings


def _is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False
