"""The process's collaborators, built once per worker process and handed to every LabelloopModel.

This is the wiring only: each collaborator lives in its own module and is given what it needs here. Nothing
here is reached into by the model; `model(project)` hands the model its few narrow collaborators.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

from backend.config import ConfigError, Settings
from backend.counters import Counters
from backend.cold_start import ColdStartOrder
from backend.similar import SimilarityOrder
from backend.embedders import EmbedderPool, choose_spec, describe_spec
from backend.embedding import EmbeddingService
from backend.fetching import Fetcher
from backend.head_trainer import HeadTrainer
from backend.heads import HeadCache
from backend.learner_fit import PoolLearner
from backend.learners import GraphCache
from backend.logs import OnceLog, Redactor, quiet_http_loggers
from backend.ls_auth import LabelStudioAuth
from backend.ls_client import LabelStudioClient
from backend.media import MediaResolver
from backend.acceptance import SuggestionLedger
from backend.boxes import BoxPredictor, ProposerPool
from backend.model import LabelloopModel
from backend.relabel_suggestions import RelabelSuggester
from backend.suspects import SuspectAuditor
from backend.predictor import PredictorRules
from backend.store import Store
from backend.training import TrainingQueue
from backend.version_sync import VersionSync
from backend.versions import ServedVersion
from backend.vlm import VLMPredictor
from backend.vlm_models import VLMPool
from backend.warmer import CacheWarmer

log = logging.getLogger(__name__)


def _vlm_settings(settings: Settings):
    """Return the VLM settings (configs/vlm.yaml merged with vlm_config); raises ConfigError naming the file."""
    from labelers.vlm.settings import SettingsError, load_settings as load_vlm_settings

    try:
        return load_vlm_settings(settings.vlm_config)
    except (SettingsError, OSError) as exc:
        raise ConfigError(f"vlm_config (LABELLOOP_VLM_CONFIG): {exc}") from None


@dataclass(frozen=True)
class Suggestions:
    """The pre-annotators that look inside images, and the ledger of what annotators kept of them."""

    relabel: RelabelSuggester
    boxes: BoxPredictor
    ledger: SuggestionLedger
    proposers: ProposerPool


class Runtime:
    """Builds and owns the collaborators: store, embeddings, heads, VLMs, Label Studio client, queue, warmer."""

    def __init__(self, settings: Settings, embedder_loader: Callable[[str], Any] | None = None,
                 http_client: httpx.Client | None = None, vlm_loader: Callable[[str], Any] | None = None):
        from labelers.cache import EmbeddingCache

        self.settings = settings
        quiet_http_loggers()
        self.redactor = Redactor([settings.label_studio_api_key, settings.basic_auth_pass, settings.webhook_secret])
        self.once = OnceLog(log)
        self.store = Store(settings.model_dir)
        (self.store.model_dir / "locks").mkdir(exist_ok=True)
        self.cache = EmbeddingCache(self.store.model_dir / "embeddings.sqlite3")
        self.http = http_client or httpx.Client(verify=settings.verify_ssl, timeout=settings.fetch_timeout_seconds)
        self.auth = LabelStudioAuth(settings.label_studio_url, settings.label_studio_api_key, self.http,
                                    key_file=settings.label_studio_api_key_file, on_new_key=self.redactor.add)
        self.http.auth = self.auth  # every call to the Label Studio host, SDK or media, is signed by it
        self.media = MediaResolver(settings, self.auth, self.http)
        self.fetcher = Fetcher(self.media, settings.threads)
        self.embedders = EmbedderPool(embedder_loader)
        self.default_spec, self.embedder_reason = choose_spec(settings.embedder, settings.clip)
        self.embeddings = EmbeddingService(self.store, self.cache, self.embedders, self.fetcher,
                                           settings.embed_batch_size, settings.fetch_timeout_seconds)
        self.heads = HeadCache(cold_start=ColdStartOrder(self.store, self.cache), store=self.store, cache=self.cache)
        self.similar = SimilarityOrder(self.store, self.cache)
        self.vlm_settings = _vlm_settings(settings)
        self.rules = PredictorRules(settings, self.vlm_settings)
        self.vlms = VLMPool(settings, self.vlm_settings, vlm_loader)  # loaded on first VLM /predict only
        self.vlm = VLMPredictor(self.vlms, self.fetcher, settings.fetch_timeout_seconds)
        self.served_version = ServedVersion(self.store, self.rules, settings.pseudo_config)
        ledger = SuggestionLedger(self.store)
        proposers = ProposerPool(settings.vlm_device)
        self.suggestions = Suggestions(
            RelabelSuggester(self.embeddings, self.heads, self.cache, self.fetcher, ledger,
                             settings.fetch_timeout_seconds),
            BoxPredictor(self.embeddings, self.heads, self.cache, self.fetcher, self.vlms, proposers, ledger,
                         settings.pseudo_config, settings.fetch_timeout_seconds), ledger, proposers)
        self.ls = LabelStudioClient(settings, self.http, self.redactor)
        self.version_sync = VersionSync(self.store, self.ls, self.served_version,
                                        enabled=settings.sync_project_version)
        self.trainer = HeadTrainer(self.store, self.embeddings, self.heads, self.ls, self.version_sync, self.rules,
                                   push_predictions=settings.push_predictions, redactor=self.redactor,
                                   suspects=SuspectAuditor(self.store, self.ls, settings.audit, self.redactor),
                                   learner=PoolLearner(self.store, self.cache,
                                                       GraphCache(self.store.model_dir / "graphs")))
        self.queue = TrainingQueue(self.store, self.trainer, settings.retrain_debounce_seconds,
                                   describe_error=self.redactor.error)
        self.warmer = CacheWarmer(self.store, self.ls, self.embeddings, enabled=settings.warm_cache,
                                  redactor=self.redactor, heads=self.heads, rules=self.rules)
        self.trainer.after_publish = self.warmer.prepare_served  # a new version's late rows, ahead of /predict
        self.counters = Counters()
        self.started_at = time.time()
        desc = describe_spec(self.default_spec)
        log.info("embedder %s -> %s (%s; %s)", settings.embedder, self.default_spec, self.embedder_reason,
                 "CLIP, zero-shot before the first annotation" if desc["zero_shot"]
                 else "EfficientNet-Lite0: image-only, ImageNet prior for labels WordNet maps, cold-start order")

    def model(self, project: str, label_config: str | None = None,
              extra_params: dict[str, Any] | None = None) -> LabelloopModel:
        """Return a LabelloopModel for `project` (cheap; shares this process's loaded objects)."""
        settings = self.settings
        return LabelloopModel(
            project, label_config, extra_params, store=self.store, embeddings=self.embeddings, heads=self.heads,
            vlm=self.vlm, training=self.queue, warmer=self.warmer, rules=self.rules, similar=self.similar,
            served_version=self.served_version, default_embedder=self.default_spec, counters=self.counters,
            predict_budget=settings.predict_budget_seconds, retrain_on_submit=settings.retrain == "on_submit",
            label_studio_connected=self.ls.configured, suggestions=self.suggestions,
            on_drift=lambda pid, message: self.once.warning(f"embedder-{pid}", "%s", message))

    def start(self, preload: bool = True) -> None:
        """Start the training worker and, optionally, load the default embedder in the background.

        NumPy's BLAS runs on one thread from here on (restored by `close`): requests are served concurrently,
        so the parallelism is across requests; a multi-threaded BLAS inside each small /predict product (the
        ImageNet prior's logits) spun its threads against the other requests' and made the p99 of 8 clients
        seconds instead of tens of ms (benchmarks/bench_speed.py). Torch (the embedder, one batch at a time
        under its compute lock) keeps its threads.
        """
        from threadpoolctl import threadpool_limits

        self._blas_limits = threadpool_limits(1, user_api="blas")
        self.queue.start()
        if preload:
            self.warmer.run_in_background(self._preload)

    def _preload(self) -> None:
        try:
            self.embedders.get(self.default_spec)
        except Exception as exc:  # reported by /health and by the first /predict
            log.error("could not load embedder %s: %s", self.default_spec, exc)

    def close(self) -> None:
        if getattr(self, "_blas_limits", None) is not None:
            self._blas_limits.restore_original_limits()
            self._blas_limits = None
        self.queue.stop()
        self.version_sync.stop()
        self.warmer.close()
        self.fetcher.close()
        self.http.close()
        self.store.close()

    def problems(self) -> list[str]:
        """Return what keeps the backend from working fully (e.g. a refused LABEL_STUDIO_API_KEY). A refused
        key is asked about again here (LabelStudioAuth.recheck), so a fixed key clears it without a restart."""
        rejected = self.auth.recheck()
        problems = [rejected] if rejected else []
        full = self.store.space_problem()
        return problems + ([full] if full else []) + self.warmer.problems() + self.heads.problems()

    def embedder_status(self) -> dict[str, Any]:
        """Return what /health says about the default embedder (never loads it)."""
        status = describe_spec(self.default_spec, self.embedder_reason)
        status["configured"] = self.settings.embedder
        status["imagenet_prior"] = self.heads.priors.status()  # which labels got a prior, per label set
        loaded = self.embedders.loaded(self.default_spec)
        status["loaded"] = loaded is not None
        if loaded is not None:
            status["id"] = loaded.id
        error = self.embedders.error(self.default_spec)
        if error:
            status["error"] = error
        return status
