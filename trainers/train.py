"""One training run: data -> transition matrix -> Lightning fit (best-validation checkpoint) -> test -> results.json."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from trainers import losses, matrices, matrix_options
from trainers.labelset import LabelSet

log = logging.getLogger(__name__)


# The seed's trainer kept the first 3 label columns of auto_labels.csv unless told otherwise.
SEED_NUM_CL = 3
GOLD_STREAM = 1  # the random stream (next to the run's seed) that picks the --gold-count images
GOLD_MATRICES = ("empirical", "shrunk")  # the matrices estimated from gold labels


class TrainError(ValueError):
    """The run cannot start with these settings and data; the message says why."""


@dataclass
class TrainConfig:
    """Settings of one run, named after the seed's train.py arguments where it had one."""

    strategy: str = "FWD"
    type: str | None = None
    model: str = "mlp"
    data: str | None = None
    label_path: str | None = None
    lr: float = 1e-3
    batch_size: int = 256
    epoch: int = 20
    valid_type: str = "auto"
    output_dir: str = "runs/train"
    long_label: bool = False
    num_cl: int | None = None  # None: 1 synthetic CL, or the first 3 of a label file (the seed's default)
    transition_matrix: str = "uniform"
    synthetic_matrix: str | None = None  # generating T of synthetic CLs; default: transition_matrix
    seed: int = 1126
    valid_split: float = 0.1
    classes: list[str] | None = None
    test_data: str | None = None
    embedder: str | None = None
    cache: str | None = None
    image_size: int | None = None
    augment: bool = False
    gold_count: int | None = None
    max_train: int | None = None
    eval_every: int = 1
    weight_decay: float = 0.0
    early_stop: int | None = None  # stop after this many validations without a better score
    ordinary_weight: float | None = None  # CL strategies: this times the cross-entropy on the gold labels and
    # the --ordinary-labels; None = 1 with ordinary_labels, else 0
    ordinary_labels: str | None = None  # a second label file of VLM ordinary labels for the ordinary term
    matrix_rounds: int = 2  # anchor / em: how many train-then-estimate rounds before the final run
    restarts: int = 1  # train this many initialisations; keep the one with the best validation score
    accelerator: str = "auto"
    devices: int = 1  # processes (CPU) or GPUs to train on; more than 1 trains with `distributed`
    distributed: str | None = None  # Lightning strategy for devices > 1: "ddp" (gloo on CPU, nccl on GPU)
    stream_features: bool = False  # --embedder: read features from the cache per batch, never the whole pool
    feature_block: int = 4096  # rows embedded / summed at once when streaming features
    progress: bool = True
    cl_control: str | None = None
    label_control: str | None = None
    image_key: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class PreparedData:
    train: LabelSet
    test: LabelSet | None
    kind: str
    valid_index: np.ndarray
    T: np.ndarray
    info: matrices.MatrixInfo
    synthetic: bool


def _subsample(labels: LabelSet, limit: int | None, seed: int) -> LabelSet:
    if not limit or limit >= len(labels):
        return labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
    return labels.subset(keep)


def prepare(cfg: TrainConfig) -> PreparedData:
    """Return the training data, validation rows and transition matrix of ``cfg``.

    Without complementary labels in the data (and a non-Ord strategy), CLs are drawn from the
    ``--transition-matrix`` (the libcll synthetic setting); the learners then see that generating
    matrix, which is recorded as an oracle.
    """
    from trainers.labelset import split_indices
    from trainers.sources import load_sources
    from trainers.synthetic import draw_complementary_labels

    spec = losses.get(cfg.strategy, cfg.type)
    _check_gold_count(cfg, spec)
    _check_ordinary_weight(cfg, spec)
    sources = _with_vlm_ordinary_labels(cfg, load_sources(cfg.data, cfg.label_path, ordinary=spec.ordinary, long_label=cfg.long_label,
                           classes=cfg.classes, test_data=cfg.test_data, cl_control=cfg.cl_control,
                           label_control=cfg.label_control, image_key=cfg.image_key))
    train, test = sources.train, sources.test
    K = train.num_classes
    if K < 2:
        raise TrainError("need at least two classes (pass --classes when the data do not name them)")
    train = _subsample(train, cfg.max_train, cfg.seed)
    synthetic = False
    if spec.ordinary:
        if not train.has_true_labels:
            raise TrainError("Ord trains on ordinary labels, and this data has none")
        train = train.subset(train.ord_labels >= 0)
    else:
        if not train.has_cls:
            if not train.has_true_labels:
                raise TrainError("the data has neither complementary nor true labels; pass --label-path")
            generating = cfg.synthetic_matrix or cfg.transition_matrix
            if generating.split(":")[0] == "empirical":
                raise TrainError("synthetic CLs need a generating matrix (uniform, weak, strong, noisy or a file); "
                                 "pass --synthetic-matrix")
            T_gen, _ = matrix_options.resolve(generating, K, seed=cfg.seed)
            train = train.subset(train.ord_labels >= 0)
            count = 1 if cfg.num_cl is None else cfg.num_cl
            cl = draw_complementary_labels(train.ord_labels, T_gen, count, seed=cfg.seed)
            train = replace(train, cl_labels=cl)
            synthetic = True
        train = train.keep_cls(SEED_NUM_CL if cfg.num_cl is None and not synthetic else cfg.num_cl)
        train = _count_repeats(train)
        train = train.subset((train.cl_labels >= 0).any(axis=1))
        train = _drop_contradictions(train)
        if cfg.gold_count is not None:
            train = _keep_gold(train, cfg.gold_count, cfg.seed)
    if len(train) < 2:
        raise TrainError(f"only {len(train)} labelled training images")
    valid_index = split_indices(len(train), cfg.valid_split, cfg.seed)[1]
    fit_rows = np.setdiff1d(np.arange(len(train)), valid_index)
    T, info = _matrix(cfg, train, fit_rows, K, synthetic)
    return PreparedData(train, test, sources.kind, valid_index, T, info, synthetic)


def _check_gold_count(cfg: TrainConfig, spec: losses.LossSpec) -> None:
    """``--gold-count`` limits the true labels an empirical T is estimated from; anything else is refused."""
    if cfg.gold_count is None:
        return
    if spec.ordinary:
        raise TrainError("--gold-count limits the gold labels of an empirical transition matrix; Ord uses no "
                         "matrix (drop --gold-count)")
    if cfg.transition_matrix.split(":")[0] not in GOLD_MATRICES:
        raise TrainError(f"--gold-count only applies to --transition-matrix empirical or shrunk (got "
                         f"{cfg.transition_matrix!r}); drop it or estimate T from the gold labels")
    if cfg.gold_count < 1:
        raise TrainError(f"--gold-count must be at least 1, got {cfg.gold_count}")


def _count_repeats(train: LabelSet) -> LabelSet:
    """Return ``train`` with ``meta["repeated_cls"]``: how many CLs repeat an earlier CL of the same image.

    Repeats are kept. Each round is an independent answer of the labeler (the seed's VLM rounds draw a
    new candidate set each time), so a class named twice is named by two answers: the per-pair losses,
    SCEL / URE and the gold counts of the matrix count it twice; MCL's CL set holds it once.
    """
    from trainers.labelset import merge_repeated_cls

    _, repeats = merge_repeated_cls(train.cl_labels)
    if repeats:
        log.info("%d complementary labels repeat an earlier one of the same image; each counts as one answer",
                 repeats)
    return replace(train, meta={**train.meta, "repeated_cls": repeats})


def ordinary_weight(cfg: TrainConfig) -> float:
    """Return the weight of the ordinary term: ``cfg.ordinary_weight``, or 1 with ``--ordinary-labels`` and 0 without."""
    if cfg.ordinary_weight is not None:
        return float(cfg.ordinary_weight)
    return 1.0 if cfg.ordinary_labels else 0.0


def _check_ordinary_weight(cfg: TrainConfig, spec: losses.LossSpec) -> None:
    """The ordinary term trains on gold labels (``--gold-count``) and/or ``--ordinary-labels``, never on all truth."""
    if cfg.ordinary_labels and spec.ordinary:
        raise TrainError("--ordinary-labels adds VLM ordinary labels to a complementary-label strategy; for Ord "
                         "pass the ordinary run as --label-path")
    weight = ordinary_weight(cfg)
    if not weight:
        return
    if weight < 0:
        raise TrainError(f"--ordinary-weight must be >= 0, got {weight}")
    if spec.ordinary:
        raise TrainError("--ordinary-weight adds ordinary labels to a complementary-label strategy; Ord already "
                         "trains on them (drop --ordinary-weight)")
    if cfg.gold_count is None and not cfg.ordinary_labels:
        raise TrainError("--ordinary-weight trains on the gold labels of --gold-count N (or on --ordinary-labels); "
                         "without it every true label of the data would train the model")


def _with_vlm_ordinary_labels(cfg: TrainConfig, sources):
    """Return ``sources`` with the training images' ``vlm_labels`` read from ``--ordinary-labels`` (if given)."""
    if not cfg.ordinary_labels:
        return sources
    from trainers.label_files import attach_vlm_ordinary_labels

    return replace(sources, train=attach_vlm_ordinary_labels(sources.train, cfg.ordinary_labels, cfg.long_label,
                                                             cfg.classes))


def _drop_contradictions(train: LabelSet) -> LabelSet:
    """Return ``train`` without the VLM ordinary labels that are one of the image's own CLs (counted in meta)."""
    from trainers.label_files import drop_contradicting_ordinary_labels

    if train.vlm_labels is None:
        return train
    kept, clashes = drop_contradicting_ordinary_labels(train)
    return replace(kept, meta={**kept.meta, "ordinary_contradictions": clashes})


def ordinary_targets(cfg: TrainConfig, train: LabelSet) -> np.ndarray:
    """Return (N,) what the ordinary term of a CL strategy trains on: the gold label, else the VLM label, else -1.

    Without ``--gold-count`` the data's truth is never a target (``ord_labels`` then holds every true
    label); the VLM labels never reach validation, which reads ``train.truth``.
    """
    gold = train.ord_labels if cfg.gold_count is not None else np.full(len(train), -1, dtype=np.int64)
    vlm = train.vlm_labels if train.vlm_labels is not None else np.full(len(train), -1, dtype=np.int64)
    return np.where(gold >= 0, gold, vlm)


def _keep_gold(train: LabelSet, gold_count: int, seed: int) -> LabelSet:
    """Return ``train`` with true labels kept on ``gold_count`` seeded random images only (the gold set).

    Everything after this (the empirical T on the fit rows, Accuracy on the validation rows) sees no
    more true labels than the run says it used.
    """
    known = np.flatnonzero(train.ord_labels >= 0)
    # Its own random stream: the validation split draws default_rng(seed).permutation too, and the same
    # stream would put every gold image into the validation split.
    keep = np.random.default_rng([seed, GOLD_STREAM]).permutation(known)[:gold_count]
    masked = np.full(len(train), -1, dtype=np.int64)
    masked[keep] = train.ord_labels[keep]
    return replace(train, ord_labels=masked, meta={**train.meta, "gold_count": int(len(keep))})


def _matrix(cfg: TrainConfig, train: LabelSet, fit_rows: np.ndarray, K: int, synthetic: bool):
    """Resolve the run's T on the training rows (never the validation rows)."""
    true = train.ord_labels[fit_rows]
    cl = train.cl_labels[fit_rows]
    all_true = bool((true >= 0).all())
    T, info = matrix_options.resolve(cfg.transition_matrix, K, seed=cfg.seed, true_labels=true, cl_labels=cl,
                               all_true=all_true)
    if synthetic and (cfg.synthetic_matrix or cfg.transition_matrix) == cfg.transition_matrix:
        info = replace(info, source=info.source + ", the generating matrix of the synthetic CLs", oracle=True)
    return T, info


def validation_labels(train: LabelSet, valid_index: np.ndarray, ordinary: bool) -> tuple[np.ndarray, str]:
    """Return ((N,) the labels validation Accuracy compares with, what they are), for the rows of ``train``.

    The ground truth when the validation rows have any; an Ord run over a folder without truth falls
    back to its label file's labels (agreement with the labeler, not accuracy: said in results.json).
    """
    truth = train.truth
    rows = truth[valid_index]
    if (rows >= 0).any():
        kind = "gold labels" if "gold_count" in train.meta else "true labels"
        return truth, kind
    if ordinary and train.true_labels is not None:
        return train.ord_labels, "label-file labels (no ground truth on the validation split)"
    return truth, "none"


def _loggers(output: Path):
    from pytorch_lightning.loggers import CSVLogger

    loggers = [CSVLogger(str(output), name="logs")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(output), name="tensorboard"))
    except ImportError:
        pass
    return loggers


def save_last_callback(path: Path):
    """Return a Lightning callback that saves the state at the end of every training epoch to ``path``."""
    from pytorch_lightning.callbacks import Callback

    class SaveLast(Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # after that epoch's validation
            trainer.save_checkpoint(path)

    return SaveLast()


def _choose_validation(cfg: TrainConfig, train: LabelSet, valid_index: np.ndarray):
    """Return (metric, (N,) labels Accuracy compares with, what they are, how many validation rows have them).

    ``auto`` picks Accuracy when the validation rows have labels to compare with, else SCEL. Raises
    TrainError when the asked metric cannot be computed on this split.
    """
    from trainers.metrics import canonical_valid_type

    spec = losses.get(cfg.strategy, cfg.type)
    truth, kind = validation_labels(train, valid_index, spec.ordinary)
    with_truth = int((truth[valid_index] >= 0).sum())
    with_cls = int((train.cl_labels[valid_index] >= 0).any(axis=1).sum())
    valid_type = cfg.valid_type
    if valid_type.lower() == "auto":
        valid_type = "Accuracy" if with_truth else "SCEL"
    valid_type = canonical_valid_type(valid_type)
    if valid_type == "Accuracy" and not with_truth:
        raise TrainError("--valid-type Accuracy needs true labels on the validation split; use SCEL or URE")
    if valid_type in ("SCEL", "URE") and spec.ordinary and not with_cls:
        raise TrainError(f"--valid-type {valid_type} needs complementary labels; Ord data has none (use Accuracy)")
    if valid_type != "Accuracy":
        return valid_type, truth, "complementary labels", with_cls
    return valid_type, truth, kind, with_truth


DISTRIBUTED = ("ddp",)


def _check_devices(cfg: TrainConfig) -> None:
    """``--devices N`` (N > 1) trains with DDP; anything else Lightning could take is refused by name."""
    if cfg.devices < 1:
        raise TrainError(f"--devices must be at least 1, got {cfg.devices}")
    if cfg.distributed is not None and cfg.distributed not in DISTRIBUTED:
        raise TrainError(f"--distributed {cfg.distributed!r} is not supported; use one of {', '.join(DISTRIBUTED)}")
    if cfg.distributed and cfg.devices == 1:
        raise TrainError(f"--distributed {cfg.distributed} needs --devices 2 or more")
    if cfg.stream_features and not cfg.embedder:
        raise TrainError("--stream-features reads frozen features from the embedding cache: pass --embedder")


def _lightning_strategy(cfg: TrainConfig):
    """Return the Trainer's strategy: "auto" for one device, else DDP (gloo on CPU: no NCCL there)."""
    if cfg.devices == 1:
        return "auto"
    from pytorch_lightning.strategies import DDPStrategy

    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not _has_gpu())
    return DDPStrategy(process_group_backend="gloo" if on_cpu else None)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def record_processes_callback():
    """Return a callback that gathers every DDP process's pid at fit start into ``trainer.process_ids``
    (one per rank, in rank order; [own pid] without DDP): the proof that N processes really trained."""
    from pytorch_lightning.callbacks import Callback

    class RecordProcesses(Callback):
        def on_fit_start(self, trainer, pl_module):
            import torch

            pids = pl_module.all_gather(torch.tensor([os.getpid()], dtype=torch.long))
            trainer.process_ids = [int(p) for p in pids.reshape(-1).tolist()]

    return RecordProcesses()


def _checkpoint_epoch(path: str | None) -> int | None:
    """Return the (0-based) epoch a Lightning checkpoint was saved in, or None without a checkpoint."""
    if not path:
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])


def _fit(cfg: TrainConfig, T: np.ndarray, dm, prior, valid_type: str, output: Path, progress: bool,
         init_seed: int | None = None):
    """Train one model with matrix ``T`` into ``output``; return (trainer, module, best-checkpoint callback).

    ``init_seed`` (default the run's seed) seeds the model's initialisation; the data order stays the run's.
    Early stopping (``cfg.early_stop`` validations without a better score) watches the same validation
    metric as the best checkpoint, so it needs no more true labels than model selection does.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from trainers.metrics import VALID_TYPES
    from trainers.models import build_model
    from trainers.module import CLLModule

    pl.seed_everything(cfg.seed if init_seed is None else init_seed, workers=True, verbose=False)
    model = build_model(cfg.model, dm.input_shape, len(T))
    module = CLLModule(model, cfg.strategy, cfg.type, T, prior, cfg.lr, valid_type, cfg.weight_decay,
                       ordinary_weight(cfg))
    mode = VALID_TYPES[valid_type]
    last = output / "checkpoints" / "last.ckpt"
    # save_last is not used: Lightning >= 2.6 writes last.ckpt only together with a new best, so it
    # would be a copy of best.ckpt. save_last_callback writes it at the end of every epoch instead.
    checkpoint = ModelCheckpoint(dirpath=output / "checkpoints", filename="best", monitor=f"valid_{valid_type}",
                                 mode=mode, save_last=False)
    callbacks = [checkpoint, save_last_callback(last), record_processes_callback()]
    if cfg.early_stop:
        callbacks.append(EarlyStopping(monitor=f"valid_{valid_type}", mode=mode, patience=cfg.early_stop))
    # use_distributed_sampler=False: the DataModule shards only the training batches (trainers.datamodules).
    trainer = pl.Trainer(max_epochs=cfg.epoch, accelerator=cfg.accelerator, devices=cfg.devices,
                         strategy=_lightning_strategy(cfg), use_distributed_sampler=False, deterministic=True,
                         logger=_loggers(output), callbacks=callbacks, check_val_every_n_epoch=cfg.eval_every,
                         enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                         log_every_n_steps=10)
    trainer.fit(module, datamodule=dm)
    return trainer, module, checkpoint


def _fit_restarts(cfg: TrainConfig, T: np.ndarray, dm, prior, valid_type: str, output: Path):
    """Return (trainer, module, checkpoint, scores) of the best of ``cfg.restarts`` initialisations.

    CL runs from different initialisations can settle on different solutions (two classes whose CLs
    look alike swapped or merged); the best validation score (the run's own metric, so no other true
    label) picks one. Restart r > 0 trains in ``restarts/r``; a single run trains in ``output``.
    """
    from trainers.metrics import VALID_TYPES

    if cfg.restarts < 1:
        raise TrainError(f"--restarts must be at least 1, got {cfg.restarts}")
    best, scores = None, []
    for r in range(cfg.restarts):
        where = output if r == 0 else output / "restarts" / str(r)
        fitted = _fit(cfg, T, dm, prior, valid_type, where, cfg.progress, init_seed=cfg.seed + 7919 * r)
        score = fitted[2].best_model_score
        scores.append(None if score is None else float(score))
        better = best is None or (score is not None and (float(score) > best[0] if VALID_TYPES[valid_type] == "max"
                                                          else float(score) < best[0]))
        if better and score is not None:
            best = (float(score), fitted)
        elif best is None:
            best = (float("nan"), fitted)
    return (*best[1], scores if cfg.restarts > 1 else None)


def _predict_fit_rows(module, checkpoint_path: str, dm) -> np.ndarray:
    """Return (n_fit, K) class probabilities of the best checkpoint on the training (fit) rows."""
    import torch

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    data, out = dm.train_data, []
    with torch.no_grad():
        for start in range(0, len(data), 1024):
            x = data.inputs[start:start + 1024]
            x = x if data.scale is None else data.scale(x)  # no augmentation: the plain images
            out.append(module(x.to(module.device)).softmax(dim=1).cpu())
    return torch.cat(out).double().numpy()


def _matrix_from_predictions(cfg: TrainConfig, name: str, dm, prior, valid_type: str, output: Path):
    """Return (T, info) estimated without gold: ``cfg.matrix_rounds`` times train, predict, re-estimate T.

    Round r trains with the previous round's T (the first with the uniform one) and estimates T from
    the best checkpoint's predictions on the training rows and their CLs (anchors, then EM for ``em``).
    """
    from trainers.matrix_estimation import from_predictions

    if cfg.matrix_rounds < 1:
        raise TrainError(f"--matrix-rounds must be at least 1, got {cfg.matrix_rounds}")
    K = dm.train_set.num_classes
    T = matrices.uniform(K)
    fit_cl = dm.train_set.cl_labels[dm.train_index]
    for round_ in range(cfg.matrix_rounds):
        where = output / "matrix_rounds" / f"round{round_}"
        _, module, checkpoint = _fit(cfg, T, dm, prior, valid_type, where, progress=False)
        best = checkpoint.best_model_path or str(where / "checkpoints" / "last.ckpt")
        T = from_predictions(_predict_fit_rows(module, best, dm), fit_cl, K, refine=name)
        matrices.save(T, where / "transition_matrix.csv")
        log.info("matrix round %d: T estimated from the predictions of epoch %s", round_, _checkpoint_epoch(best))
    info = matrices.MatrixInfo(f"{name} ({cfg.matrix_rounds} rounds, from the model's predictions, no gold)")
    return T, info


def _ordinary_summary(cfg: TrainConfig, train: LabelSet, dm) -> dict | None:
    """Return what ``--ordinary-labels`` gave the run (None without it): file, images trained on, contradictions."""
    if not cfg.ordinary_labels:
        return None
    vlm = train.vlm_labels
    return {"file": str(cfg.ordinary_labels), "images": int((vlm >= 0).sum()),
            "fit_images": int((vlm[dm.train_index] >= 0).sum()),
            "contradictions_dropped": int(train.meta.get("ordinary_contradictions", 0))}


def _rows_held(train: LabelSet) -> int | None:
    """Return the most feature rows one read held with --stream-features (None for in-memory features)."""
    stats = getattr(train.features, "stats", None)
    return None if stats is None else stats.peak_rows


def run(cfg: TrainConfig) -> dict:
    """Train one model per ``cfg``; write checkpoints, metrics and ``results.json`` under ``output_dir``.

    Returns the results dict (test metrics of the best-validation checkpoint, matrix provenance, sizes).
    Raises TrainError, DataSourceError, TransitionMatrixError or FileNotFoundError for bad inputs.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS when on GPU
    _check_devices(cfg)
    data = prepare(cfg)  # before importing Lightning: bad inputs fail fast
    from trainers.datamodules import EmbeddingDataModule, ImageDataModule

    train, test = data.train, data.test
    if cfg.embedder:
        from labelers.cache import EmbeddingCache
        from labelers.embedders import make_embedder
        from trainers.cached_features import with_cached_features
        from trainers.features import with_features

        embedder = make_embedder(cfg.embedder)
        cache = EmbeddingCache(cfg.cache or Path(cfg.output_dir) / "embeddings.sqlite")
        if cfg.stream_features:
            def featurize(labels):
                return with_cached_features(labels, embedder, cache, cfg.feature_block, progress=cfg.progress)
        else:
            def featurize(labels):
                return with_features(labels, embedder, cache, progress=cfg.progress)
        train = featurize(train)
        test = None if test is None else featurize(test)
        kind = "features"
    else:
        kind = data.kind
    valid_type, valid_truth, valid_labels, valid_count = _choose_validation(cfg, train, data.valid_index)
    targets = None if losses.get(cfg.strategy, cfg.type).ordinary else ordinary_targets(cfg, train)
    if kind == "features":
        dm = EmbeddingDataModule(train, data.valid_index, test, cfg.batch_size, cfg.seed, valid_truth=valid_truth,
                                 train_targets=targets)
    else:
        dm = ImageDataModule(train, data.valid_index, test, cfg.batch_size, cfg.image_size, cfg.augment, cfg.seed,
                             progress=cfg.progress, valid_truth=valid_truth, train_targets=targets)
    fit_cl = train.cl_labels[dm.train_index]
    counts = np.bincount(fit_cl[fit_cl >= 0], minlength=train.num_classes).astype(np.float64)
    prior = counts / counts.sum() if counts.sum() else None
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    T, info = data.T, data.info
    name = cfg.transition_matrix.split(":")[0]
    if name in matrices.FROM_PREDICTIONS:
        T, info = _matrix_from_predictions(cfg, name, dm, prior, valid_type, output)
    trainer, module, checkpoint, restart_scores = _fit_restarts(cfg, T, dm, prior, valid_type, output)
    best = checkpoint.best_model_path or None
    last = Path(checkpoint.dirpath) / "last.ckpt"  # the chosen restart's
    results = {
        "strategy": module.strategy_name, "model": cfg.model, "seed": cfg.seed, "epochs": cfg.epoch,
        "lr": cfg.lr, "batch_size": cfg.batch_size, "valid_type": valid_type,
        "best_valid": None if checkpoint.best_model_score is None else float(checkpoint.best_model_score),
        "best_checkpoint": best, "best_epoch": _checkpoint_epoch(best), "last_checkpoint": str(last),
        "last_epoch": _checkpoint_epoch(str(last)), "valid_labels": valid_labels, "valid_label_count": valid_count,
        "repeated_cls": int(train.meta.get("repeated_cls", 0)), "classes": train.class_names,
        "train_images": len(dm.train_index),
        "valid_images": len(data.valid_index), "num_cl": int(train.cl_labels.shape[1]),
        "synthetic_cls": data.synthetic, "transition_matrix": info.describe(),
        "matrix_oracle": info.oracle, "gold_labels": info.gold_labels, "weight_decay": cfg.weight_decay,
        "ordinary_weight": ordinary_weight(cfg), "ordinary_labels": _ordinary_summary(cfg, train, dm),
        "early_stop": cfg.early_stop,
        "restart_scores": restart_scores, "inputs": kind,
        "device": str(module.device), "world_size": trainer.world_size,
        "process_ids": getattr(trainer, "process_ids", None), "batch_size_per_process":
            cfg.batch_size if trainer.world_size == 1 else max(1, cfg.batch_size // trainer.world_size),
        "feature_rows_held": _rows_held(train),
    }
    if test is not None and test.has_true_labels:
        tested = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)
        results.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    results["global_rank"] = trainer.global_rank  # not written: which DDP process returns this dict
    if trainer.global_rank != 0:  # every DDP process ran the same run; the first one writes it down
        return results
    matrices.save(T, output / "transition_matrix.csv")
    config = {k: v for k, v in asdict(cfg).items() if k != "extra"}
    written = {k: v for k, v in results.items() if k != "global_rank"}
    (output / "results.json").write_text(json.dumps({"results": written, "config": config}, indent=2),
                                         encoding="utf-8")
    (output / "class_names.json").write_text(json.dumps(train.class_names), encoding="utf-8")
    return results
