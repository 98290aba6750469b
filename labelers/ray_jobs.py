"""Batch jobs on Ray Data (`--ray`): the job's own per-batch function, run in an actor pool.

Every batch job (`embed`, `label`, `relabel`, `pseudo-label`) cuts its inputs into batches and has one
function that turns a batch into results, built once per process because it holds a model. `map_batches`
runs that function on Ray Data instead of in this process:

- each actor builds the function once in ``__init__`` (the model loads once per actor) and is called with
  one job batch per row, so batches are exactly the single-process run's (padding, hence scores, match);
- the inputs are only the batch descriptions (paths, ids): images are read inside the actors;
- results come back in input order as each block finishes, and the caller writes them to the job's usual
  files at once (a killed driver loses only batches not yet written; a resume skips what was written);
- a block whose actor dies (process killed, node lost) is retried on a restarted actor (Ray Data's own
  default for actor pools, without a limit), a block whose function raises is retried ``RETRIES`` times
  before the run fails;
- the pool leaves one CPU free: Ray Data schedules its own tasks on CPUs, and actors that hold every CPU
  make the dataset hang; processing starts as soon as the first actor is ready.

Ray is imported only here and only when a job runs with ``--ray`` (the optional extra
``pip install labelloop[ray]``). See docs/scale.md.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# Retries of one block whose per-batch function raised (a transient error: CUDA out of memory, a network
# file system hiccup); a deterministic error fails the run after these, and a resume redoes only the rest.
RETRIES = 3
INSTALL_HINT = "Ray is not installed: pip install 'labelloop[ray]'"


class RayRunError(RuntimeError):
    """A Ray run cannot start (Ray missing, the cluster unreachable, a pool it cannot hold) or stopped (a
    batch still failed after its retries)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a job runs on Ray: the `--ray-address`, `--actors`, `--gpus-per-actor` flags.

    ``address`` None starts Ray on this machine (or joins the cluster RAY_ADDRESS names, as ray.init does);
    ``actors`` None sizes the pool from the cluster (see `pool_size`).
    """
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float = 0.0


def ray_options(use_ray: bool, address: str | None, actors: int | None, gpus_per_actor: float) -> RayOptions | None:
    """Return the RayOptions of a command's flags, or None without ``--ray``.

    Raises ValueError when a Ray flag is given without ``--ray`` (it would be silently ignored).
    """
    if not use_ray:
        given = [flag for flag, value in (("--ray-address", address), ("--actors", actors),
                                          ("--gpus-per-actor", gpus_per_actor or None)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --ray")
        return None
    if actors is not None and actors < 1:
        raise ValueError(f"--actors must be at least 1, got {actors}")
    if gpus_per_actor < 0:
        raise ValueError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
    return RayOptions(address, actors, gpus_per_actor)


def pool_size(options: RayOptions, resources: dict) -> int:
    """Return how many actors to start on a cluster with ``resources`` (ray.cluster_resources()).

    Each actor takes one CPU (and ``gpus_per_actor`` GPUs). Default: one actor per CPU but one, or with
    GPUs as many as the GPUs hold. Raises RayRunError when the pool would take every CPU (Ray Data's
    tasks would then never be scheduled and the run would hang) or needs more GPUs than there are.
    """
    cpus, gpus = int(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    spare_cpus = cpus - 1  # one CPU stays free for Ray Data's own tasks
    if spare_cpus < 1:
        raise RayRunError(f"the Ray cluster has {cpus} CPU(s); a run needs at least 2: one per actor and one "
                            "left for Ray Data's tasks")
    by_gpu = int(gpus // options.gpus_per_actor) if options.gpus_per_actor else None
    if by_gpu == 0:
        raise RayRunError(f"--gpus-per-actor {options.gpus_per_actor} but the Ray cluster has {gpus:g} GPU(s)")
    wanted = options.actors or min(spare_cpus, by_gpu or spare_cpus)
    if wanted > spare_cpus:
        raise RayRunError(f"--actors {wanted} would take every CPU of the Ray cluster ({cpus}): Ray Data then "
                            f"has none left for its own tasks and the run hangs; use at most {spare_cpus}")
    if by_gpu is not None and wanted > by_gpu:
        raise RayRunError(f"--actors {wanted} x --gpus-per-actor {options.gpus_per_actor} needs more than the "
                            f"cluster's {gpus:g} GPU(s); use at most {by_gpu} actors")
    return wanted


def connect(options: RayOptions) -> None:
    """Connect to Ray at ``options.address`` (or a local Ray) unless this process is connected already.

    Raises RayRunError when Ray is not installed or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise RayRunError(INSTALL_HINT) from None
    if not ray.is_initialized():
        try:
            ray.init(address=options.address, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayRunError(f"cannot connect to Ray at {options.address or 'a local cluster'}: {exc}") from None


class _BatchWorker:
    """The Ray Data callable class: builds the job's per-batch function once, then runs it on each row's batch."""

    def __init__(self, make_function: Callable, args: tuple):
        self.function = make_function(*args)

    def __call__(self, rows: dict) -> dict:
        import numpy as np

        results = [pickle.dumps(self.function(pickle.loads(batch))) for batch in rows["batch"]]
        return {"index": rows["index"], "result": np.array(results, dtype=object)}


def _run_in_task(rows: dict, make_function: Callable, args: tuple) -> dict:
    """The Ray Data function of a model-free step: builds the per-batch function for each call (it is cheap)."""
    return _BatchWorker(make_function, args)(rows)


def map_batches(batches: Sequence, make_function: Callable, args: tuple, options: RayOptions,
                stateful: bool = True) -> Iterator[Any]:
    """Yield ``make_function(*args)(batch)`` for each batch, in input order, as soon as each is done.

    ``make_function`` and ``args`` must be picklable (a module-level function): each actor calls it once to
    build the per-batch function (loading the model there). A step with nothing to load passes
    ``stateful=False`` and runs as Ray tasks instead (their worker processes are reused across runs).
    Raises RayRunError (see `connect`, `pool_size`), also when a batch still fails after RETRIES retries
    (naming its error): Ray then aborts the run, and batches done but not yet yielded are lost to this run
    (a resume redoes them).
    """
    if not batches:
        return
    connect(options)
    import ray
    import ray.data

    actors = pool_size(options, ray.cluster_resources())
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # written in input order, like the single-process run
    context.wait_for_min_actors_s = -1  # start on the first ready actor, do not wait for the whole pool
    context.retried_map_errors, context.max_map_retries = True, RETRIES
    rows = [{"index": i, "batch": pickle.dumps(batch)} for i, batch in enumerate(batches)]
    # One batch per block, so each batch's result reaches the driver (and its files) on its own.
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    if stateful:
        gpus = {"num_gpus": options.gpus_per_actor} if options.gpus_per_actor else {}
        results = dataset.map_batches(
            _BatchWorker, fn_constructor_args=(make_function, args), batch_size=1, num_cpus=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors), **gpus)
    else:
        results = dataset.map_batches(_run_in_task, fn_kwargs={"make_function": make_function, "args": args},
                                      batch_size=1, num_cpus=1, concurrency=actors)
    try:
        for expected, row in enumerate(results.iter_rows()):
            if row["index"] != expected:  # never hand a batch's results to another batch
                raise RayRunError(f"Ray returned batch {row['index']} where batch {expected} was due")
            yield pickle.loads(row["result"])
    except RayRunError:
        raise
    except Exception as exc:  # Ray wraps the batch's error in its own types; say what happened and what now
        raise RayRunError(f"a batch failed on Ray after {RETRIES} retries: {_first_cause(exc)} (the batches "
                          "before it are written; fix the cause and run the command again to resume)") from exc


def _first_cause(exc: Exception) -> str:
    """Return the last line of the innermost traceback in a Ray error's text (``ValueError: ...``): Ray
    rebuilds the batch's error on the driver as text, wrapped in its own exceptions."""
    text = str(exc).split("The above exception was the direct cause")[0].strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def in_batches(items: Sequence, batch_size: int) -> list[list]:
    """Return ``items`` cut into consecutive batches of ``batch_size`` (the last one shorter)."""
    return [list(items[start:start + batch_size]) for start in range(0, len(items), batch_size)]


# -- embed ---------------------------------------------------------------------------------------------

def _content_keys_function():
    """Return the key step of embedding: paths -> (content key or None, error or None) each."""
    from .cache import content_key

    def keys(paths):
        out = []
        for path in paths:
            try:
                out.append((content_key(Path(path).read_bytes()), None))
            except OSError as exc:
                out.append((None, f"{path}: cannot read ({exc.strerror or exc})"))
        return out
    return keys


def _embedding_function(spec: str):
    """Return the embedding step, its model loaded once: paths -> (vector or None, error or None) each."""
    import torch

    from .embedders import make_embedder
    from .images import ImageLoadError, load_image

    embedder = make_embedder(spec)

    def embed(paths):
        tensors, out = [], []
        for path in paths:
            try:
                tensors.append(embedder.preprocess(load_image(Path(path).read_bytes(), name=str(path))))
                out.append([None, None])
            except (ImageLoadError, OSError) as exc:
                out.append([None, str(exc)])
        if tensors:
            vectors = iter(embedder.encode_batch(torch.stack(tensors)))
            for slot in out:
                if slot[1] is None:
                    slot[0] = next(vectors)
        return [tuple(slot) for slot in out]
    return embed


def embed_files_on_ray(embedder, cache, paths: Sequence[str | Path], batch_size: int, options: RayOptions):
    """Return the EmbedResult `labelers.cache.embed_files` returns, embedding on Ray.

    As there: every file is keyed by its content, cached keys are not embedded again (so a killed run
    resumes where its cache stops), each distinct image is embedded once, and each batch's vectors go into
    ``cache`` as soon as the batch is done. ``embedder.spec`` names the model the actors load.
    """
    import numpy as np

    from .cache import EmbedResult, fill_from_cache

    paths = [str(p) for p in paths]
    features = np.full((len(paths), embedder.dim), np.nan, dtype=np.float32)
    keys: list[str | None] = [None] * len(paths)
    errors: dict[int, str] = {}
    row = 0
    for batch in map_batches(in_batches(paths, batch_size), _content_keys_function, (), options, stateful=False):
        for key, error in batch:
            keys[row] = key
            if error:
                errors[row] = error
            row += 1
    rows_of, todo = fill_from_cache(embedder, cache, keys, features)  # one row per distinct image
    computed = 0
    todo_batches = in_batches(todo, batch_size)
    results = map_batches([[paths[i] for i in batch] for batch in todo_batches], _embedding_function,
                          (embedder.spec,), options)
    for batch, answers in zip(todo_batches, results):
        fresh = {}
        for i, (vector, error) in zip(batch, answers):
            if error:
                errors.update(dict.fromkeys(rows_of[keys[i]], error))
            else:
                features[rows_of[keys[i]]] = vector
                fresh[keys[i]] = vector
        if cache and fresh:
            cache.put_many(embedder.id, fresh)
        computed += len(fresh)
    return EmbedResult(features, keys, errors, computed=computed)


# -- label (VLM) ---------------------------------------------------------------------------------------

def _labeling_function(model: str | None, settings, device: str, dtype: str):
    """Return `labelers.vlm.run.label_batch` over a VLM loaded once here: (batch, step) -> its result."""
    from .vlm.labeler import VLMLabeler
    from .vlm.run import label_batch
    from .vlm.sampling import CandidateSampler

    labeler = VLMLabeler.from_pretrained(model, settings, device=device, dtype=dtype)
    cfg = settings.complementary

    def label(job):
        batch, step = job
        sampler = None
        if step["mode"] == "complementary":  # without -R balancing a draw depends only on the image and round
            sampler = CandidateSampler(len(step["class_names"]), cfg.num_options, step["rounds"], len(batch),
                                       cfg.distinct, False, cfg.quota_floor, cfg.seed)
        return label_batch(labeler, batch, sampler, **step)
    return label


def check_labeling(settings, mode: str) -> None:
    """Raise ValueError when a labeling run cannot go on Ray: -R balancing updates the class quotas after
    every batch, in order, so its candidate sets depend on every batch before them."""
    if mode == "complementary" and settings.complementary.balance:
        raise ValueError("--ray cannot run -R balanced complementary labels (the quotas move after every batch, "
                         "in order); pass --no-balance, or run without --ray")


def labeler_without_weights(model: str | None, settings):
    """Return a VLMLabeler that names the model and hashes the prompts as the loaded one would, without
    loading weights (the driver of a Ray run; the actors load the model). Raises VLMLoadError."""
    from transformers import AutoConfig, AutoProcessor

    from .vlm.labeler import VLMLabeler
    from .vlm.loading import LoadedVLM, VLMLoadError, resolve_model

    name = resolve_model(model, settings)
    try:
        processor, config = AutoProcessor.from_pretrained(name), AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as exc:
        raise VLMLoadError(f"cannot load VLM {name!r}: {exc}") from None
    vlm = LoadedVLM(model=None, processor=processor, model_id=name, model_type=getattr(config, "model_type", "unknown"),
                    device="ray", dtype=None)
    return VLMLabeler(vlm, settings)


def labeling_on_ray(model: str | None, settings, device: str, dtype: str, options: RayOptions) -> Callable:
    """Return the ``run_batches`` of `labelers.vlm.run.run_labeling` that labels each batch on Ray."""
    def run_batches(batches, step):
        return map_batches([(batch, step) for batch in batches], _labeling_function,
                           (model, settings, device, dtype), options)
    return run_batches


# -- pseudo-label ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ProposerName:
    """What the driver of a Ray run knows of the proposer the actors build: its name (for model_version)."""
    name: str


def _pseudo_labeling_function(settings, device: str):
    """Return `labelers.pseudo.run.label_batch` over a proposer and VLM built once here: (batch, step) -> records."""
    from .pseudo.proposals import make_proposer
    from .pseudo.run import label_batch
    from .vlm.loading import load_vlm, pick_device
    from .vlm.settings import load_settings

    proposer = make_proposer(settings.proposer, settings.sam, settings.felzenszwalb, device=str(pick_device(device)))
    vlm = load_vlm(settings.model, load_settings(), device=device)

    def label(job):
        batch, step = job
        return label_batch(batch, proposer, vlm, **step)
    return label


def pseudo_labeling_on_ray(settings, device: str, options: RayOptions):
    """Return (the proposer's name, the VLM without weights, the ``label_batches`` of
    `labelers.pseudo.run.run_pseudo_labels` that labels each batch on Ray).

    The driver loads no model: the VLM returned only names it (``model_id``, ``model_type``) for the answer
    prefix and the outputs' model_version. Raises ValueError for an unknown proposer, VLMLoadError.
    """
    from .vlm.settings import load_settings

    if settings.proposer not in ("sam", "felzenszwalb"):
        raise ValueError(f"unknown proposer {settings.proposer!r}; use sam or felzenszwalb")
    vlm = labeler_without_weights(settings.model, load_settings()).vlm

    def label_batches(batches, step):
        return map_batches([(batch, step) for batch in batches], _pseudo_labeling_function, (settings, device),
                           options)
    return _ProposerName(settings.proposer), vlm, label_batches


# -- relabel ------------------------------------------------------------------------------------------

def _regions_function(spec: str, cache_path: str, relabel_options: dict, seed: int):
    """Return `labelers.relabel.region_features.embed_chunk` over an embedder built once here:
    (paths, start) -> its result.

    The actor embeds crops through the cache file at ``cache_path`` (on a cluster: each node's own file
    at that path, unless it is on shared storage), so a second round or a resume re-reads them."""
    from .cache import EmbeddingCache
    from .embedders import make_embedder
    from .relabel.region_features import embed_chunk

    embedder, cache = make_embedder(spec), EmbeddingCache(cache_path)

    def embed(job):
        paths, start = job
        return embed_chunk(paths, start, embedder, cache, relabel_options, seed)
    return embed


def regions_on_ray(paths: Sequence, chunk: int, spec: str, cache_path, relabel_options: dict, seed: int,
                   options: RayOptions):
    """Return (region embeddings per image, boxes per image) of ``paths``, as `labelers.relabel.cli._embed_set`
    does, each chunk of ``chunk`` images embedded on Ray."""
    jobs = [(list(paths[start:start + chunk]), start) for start in range(0, len(paths), chunk)]
    features, boxes = [], []
    args = (spec, str(cache_path), relabel_options, seed)
    for chunk_features, chunk_boxes in map_batches(jobs, _regions_function, args, options):
        features += chunk_features
        boxes += chunk_boxes
    return features, boxes
