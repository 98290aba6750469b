"""`labelloop simulate`, `labelloop embed` and `labelloop similar`: the active-learning simulator, the
embedding tool and "more like this" search."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import ray_flags

# Typer rewraps help text; "\b" keeps the spec list's lines as written.
EMBEDDER_SPECS = """\b
Embedder specs:
  auto                                  CLIP when its weights are on disk, else EfficientNet-Lite0
  open_clip:<model>/<pretrained-tag>    e.g. open_clip:ViT-B-32/laion2b_s34b_b79k
  open_clip:<model>/<checkpoint-file>   built-in architecture, local weights
  open_clip:local-dir:<folder>          folder with open_clip_config.json + weights
  efficientnet-lite0@<px>               packaged ImageNet weights (plain efficientnet-lite0: 224 px)"""

SIMULATE_HELP = f"""Simulate active learning with an oracle over a labeled dataset.

DATA is an image folder root/<class>/*.jpg (embedded through the cache) or an .npz with features, labels and optionally test_features, test_labels, class_names, names (as `labelloop embed` writes). Writes curves.csv, curves.png, summary.csv and paired_gaps.csv to the output folder and prints normalized AULC and labels-to-reach per strategy.

Active-Labeler's experiment: --positive-class turns the data into Accept/Reject, --ref-image seeds the first labels with the reference's nearest neighbours, and a strategy like gaussian+nn4 brings each pick's 4 nearest neighbours along.

{EMBEDDER_SPECS}"""

EMBED_HELP = f"""Embed a labeled image folder root/<class>/<image> once (through the cache) into a features .npz.

The .npz holds features, labels, class_names, names (each row's image as <class>/<file> under FOLDER, the key `labelloop label` writes, so `labelloop train --data <npz> --label-path auto_labels.csv` matches rows to features), embedder_spec and embedder_id; with --test-folder also test_features, test_labels and test_names, after checking both folders have the same classes.

{EMBEDDER_SPECS}"""

SIMILAR_HELP = f"""Print the embeddings nearest to IMAGE ("more like this"), most similar first.

IMAGE is an image file (embedded with the embeddings' own embedder) or the name of a row in them. --embeddings is an .npz with features and names (`labelloop embed` writes one) or an image folder (embedded through the cache); --project ID --model-dir DIR searches a backend project's cached embeddings instead (IMAGE: a task id or an image file; rows are "task <id>"). Search is exact below --exact-below rows, a faiss IVF index above.

{EMBEDDER_SPECS}"""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


class _Embedded:
    """An embedded set of images: a FeatureDataset, each row's name, and the embedder spec/id that made it."""

    def __init__(self, dataset, names, spec: str | None, embedder_id: str | None):
        self.dataset, self.names, self.spec, self.embedder_id = dataset, list(names), spec, embedder_id


def _load_npz(data: Path) -> _Embedded:
    """Read a features .npz with its names and embedder (either may be missing in older files)."""
    import numpy as np

    from .datasets import load_feature_npz

    dataset = load_feature_npz(data)
    with np.load(data, allow_pickle=False) as raw:
        names = [str(n) for n in raw["names"]] if "names" in raw else [f"row {i}" for i in range(len(dataset.labels))]
        spec = str(raw["embedder_spec"]) if "embedder_spec" in raw else None
        embedder_id = str(raw["embedder_id"]) if "embedder_id" in raw else None
    return _Embedded(dataset, names, spec, embedder_id)


def _embed_folder(data: Path, embedder_spec: str, cache_path: Optional[Path], batch_size: int, embedder=None,
                  ray=None):
    """Return (FeatureDataset, the image files it holds in its row order, the embedder) of a labeled folder.

    Unreadable images are reported and left out, so the files returned are the ones embedded. With ``ray``
    (RayOptions) the images are embedded on Ray.
    """
    from .datasets import FeatureDataset, list_image_folder

    paths, labels, names = list_image_folder(data)
    embedder = embedder or _make_embedder(embedder_spec)
    typer.echo(f"embedder: {embedder.id}; {len(paths)} images in {len(names)} classes under {data}")
    features, ok = _embed_paths(embedder, cache_path, paths, batch_size, ray)
    return FeatureDataset(features[ok], labels[ok], names), [p for p, keep in zip(paths, ok) if keep], embedder


def _make_embedder(spec: str):
    from .embedders import make_embedder, resolve_auto_spec

    embedder = make_embedder(spec)
    embedder.spec = resolve_auto_spec() if spec == "auto" else spec  # what to rebuild it from later
    return embedder


def _embed_paths(embedder, cache_path: Optional[Path], paths, batch_size: int = 64, ray=None):
    """Return (features, ok mask) of image files through the cache (on Ray with ``ray``), reporting unreadable
    ones."""
    from .cache import EmbeddingCache, embed_files
    from .sample_data import cache_dir

    cache = EmbeddingCache(cache_path or cache_dir() / "embeddings.sqlite")
    if ray is not None:
        from .ray_jobs import embed_files_on_ray

        result = embed_files_on_ray(embedder, cache, paths, batch_size, ray)
    else:
        result = embed_files(embedder, cache, paths, batch_size=batch_size, progress=len(paths) > 1)
    for message in list(result.errors.values())[:10]:
        typer.secho(f"skipped: {message}", fg="yellow", err=True)
    return result.features, result.ok


def _load_embedded(data: Path, embedder_spec: str, cache_path: Optional[Path], batch_size: int) -> _Embedded:
    """Return an _Embedded from an .npz or a labeled image folder."""
    if data.suffix == ".npz":
        return _load_npz(data)
    dataset, paths, embedder = _embed_folder(data, embedder_spec, cache_path, batch_size)
    return _Embedded(dataset, [p.relative_to(data).as_posix() for p in paths], embedder.spec, embedder.id)


def _reference_vector(ref: str, embedded: _Embedded, embedder_spec: Optional[str], cache_path: Optional[Path]):
    """Return (the (D,) embedding of `ref`, its row or None): a row named `ref`, else an image file embedded
    with the embedder that made `embedded` (refusing another one). Fails naming what is missing."""
    if ref in embedded.names:
        row = embedded.names.index(ref)
        return embedded.dataset.features[row], row
    if not Path(ref).is_file():
        _fail(f"reference {ref!r} is neither an image file nor a row name in the embeddings "
              f"(names look like {embedded.names[0]!r})")
    spec = embedder_spec or embedded.spec
    if spec is None:
        _fail("the embeddings do not say which embedder made them (an .npz from before names/embedder_spec); "
              "pass --embedder with the spec that made them")
    embedder = _make_embedder(spec)
    if embedded.embedder_id is not None and embedder.id != embedded.embedder_id:
        _fail(f"embedder {embedder.id} is not the one that made the embeddings ({embedded.embedder_id}); "
              "their vectors are not comparable")
    features, ok = _embed_paths(embedder, cache_path, [Path(ref)])
    if not ok[0]:
        _fail(f"reference image {ref} could not be read")
    return features[0], None


def simulate(
    data: Path = typer.Argument(..., help="image folder root/<class>/*.jpg or a features .npz"),
    strategies: str = typer.Option("random,margin,entropy,least",
                                   help="comma-separated: random, margin, entropy, least, gaussian; modifiers "
                                        "+kmeans, +balance, +nn<N> (e.g. margin+kmeans, gaussian+nn4), +lp "
                                        "(label spreading over the pool's k-NN graph as the learner), +mix (the mean of spreading "
                                        "and the linear head), +self / +self<N> (self-training: the head refitted "
                                        "on each class's N surest pseudo-labels, default 100), +typical "
                                        "(this strategy's first labels by k-means typicality), +cover<N> "
                                        "(coverage picks until N labels per class); best measured: "
                                        "margin+kmeans+mix+self (docs/active-learning.md)"),
    initial: int = typer.Option(20, help="labels before the first query"),
    batch_size: int = typer.Option(20, "--batch-size", help="labels added per round"),
    rounds: int = typer.Option(10, help="query rounds"),
    seeds: int = typer.Option(10, help="independent repetitions (95% CIs over these)"),
    test_fraction: float = typer.Option(0.2, help="held-out test share when the data has no test split"),
    init: str = typer.Option("random", help="initial pool: random | typical (k-means typicality)"),
    l2: float = typer.Option(100.0, help="head L2 strength towards its prior"),
    positive_class: Optional[str] = typer.Option(None, "--positive-class",
                                                 help="simulate a two-choice Accept/Reject project: this class "
                                                      "is Accept, every other Reject"),
    ref_image: Optional[str] = typer.Option(None, "--ref-image",
                                            help="reference image file, or a row name in DATA, whose nearest "
                                                 "neighbours are labeled first"),
    seed_nn: Optional[int] = typer.Option(None, "--seed-nn",
                                          help="how many of --initial are the reference's neighbours "
                                               "(default all; the rest drawn by --init)"),
    mid_budget: Optional[float] = typer.Option(None, "--mid-budget",
                                               help="budget for label_ratio_at_mid (default the schedule's middle)"),
    embedder: str = typer.Option("auto", help="embedder spec for image folders (listed above)"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache file (default: user cache)"),
    output_dir: Path = typer.Option(Path("runs/simulate"), "--output-dir"),
) -> None:
    from .datasets import DatasetError
    from .learning_curves import format_summary, paired_gaps, summarize
    from .simulate import (SimulationSettings, binary_dataset, check_strategies, describe, simulate as run,
                           split_test)

    specs = tuple(s.strip() for s in strategies.split(",") if s.strip())
    try:  # everything that can be checked without data, before any embedding
        check_strategies(specs)
        if init not in ("random", "typical"):
            raise ValueError(f"unknown --init {init!r}; use random or typical")
        if seed_nn is not None and ref_image is None:
            raise ValueError("--seed-nn needs --ref-image")
        if seed_nn is not None and not 0 <= seed_nn <= initial:
            raise ValueError(f"--seed-nn {seed_nn} must be between 0 and --initial {initial}")
    except ValueError as exc:
        _fail(str(exc))
    if not data.exists():
        _fail(f"{data}: no such file or folder")
    settings = SimulationSettings(specs, initial, batch_size, rounds, seeds, test_fraction, init, l2, seed_nn=seed_nn)
    try:
        embedded = _load_embedded(data, embedder, cache, 64)
        if ref_image is not None:
            settings.reference, _ = _reference_vector(ref_image, embedded, None if data.suffix == ".npz" else embedder, cache)
        dataset = embedded.dataset
        if positive_class is not None:
            dataset = binary_dataset(dataset, positive_class)
            settings.positive = 1  # "Accept": its F1 goes into curves.csv and the summary
        test_source = "the data's own test set" if dataset.test_features is not None else \
            f"a stratified {test_fraction:.0%} held out of DATA, drawn once"
        dataset = split_test(dataset, test_fraction)
        typer.echo(describe(dataset, settings, test_source))
        curves = run(dataset, settings)
        baseline = "random" if "random" in settings.strategies else settings.strategies[0]
        summary = summarize(curves, baseline, mid_budget)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    _write_simulation(curves, summary, paired_gaps(curves, baseline), output_dir, baseline,
                      f"{data.name}: {seeds} seeds, mean and 95% CI", format_summary)


def _write_simulation(curves, summary, gaps, output_dir: Path, baseline: str, title: str, format_summary) -> None:
    from .learning_curves import plot_curves

    output_dir.mkdir(parents=True, exist_ok=True)
    curves.to_csv(output_dir / "curves.csv", index=False)
    plot_curves(curves, output_dir / "curves.png", title=title, baseline=baseline)
    table, note = format_summary(summary)
    table.to_csv(output_dir / "summary.csv")
    gaps.to_csv(output_dir / "paired_gaps.csv", index=False)
    typer.echo(table.to_string())
    if note:
        typer.echo(note)
    typer.echo(f"wrote {output_dir}/curves.csv, curves.png, summary.csv, paired_gaps.csv")


def _check_same_classes(train_names: list[str], test_names: list[str], folder: Path, test_folder: Path) -> None:
    """Fail naming the classes found in only one of the two folders."""
    if train_names == test_names:
        return
    only_train = sorted(set(train_names) - set(test_names))
    only_test = sorted(set(test_names) - set(train_names))
    _fail(f"{folder} and --test-folder {test_folder} have different classes: only in {folder.name}: "
          f"{', '.join(only_train) or 'none'}; only in {test_folder.name}: {', '.join(only_test) or 'none'}")


def embed(
    folder: Path = typer.Argument(..., help="labeled image folder root/<class>/<image>"),
    output: Path = typer.Option(..., "--output", "-o", help=".npz to write"),
    test_folder: Optional[Path] = typer.Option(None, "--test-folder",
                                               help="held-out root/<class>/<image> folder written as the "
                                                    "test set (same class folders as FOLDER)"),
    embedder: str = typer.Option("auto", help="embedder spec (listed above)"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache file (default: user cache)"),
    batch_size: int = typer.Option(64, "--batch-size"),
    use_ray: bool = ray_flags.USE_RAY,
    ray_address: Optional[str] = ray_flags.RAY_ADDRESS,
    actors: Optional[int] = ray_flags.ACTORS,
    gpus_per_actor: float = ray_flags.GPUS_PER_ACTOR,
) -> None:
    import numpy as np

    from .datasets import DatasetError, list_image_folder
    from .ray_jobs import RayRunError, ray_options

    try:
        ray = ray_options(use_ray, ray_address, actors, gpus_per_actor)
        if test_folder is not None:  # check the classes before spending time on embedding
            _check_same_classes(list_image_folder(folder)[2], list_image_folder(test_folder)[2], folder, test_folder)
        dataset, paths, model = _embed_folder(folder, embedder, cache, batch_size, ray=ray)
        arrays = {"features": dataset.features, "labels": dataset.labels,
                  "class_names": np.asarray(dataset.class_names),
                  "names": np.asarray([p.relative_to(folder).as_posix() for p in paths]),
                  "embedder_spec": np.asarray(model.spec), "embedder_id": np.asarray(model.id)}
        if test_folder is not None:
            test, test_paths, _ = _embed_folder(test_folder, embedder, cache, batch_size, embedder=model, ray=ray)
            arrays.update(test_features=test.features, test_labels=test.labels,
                          test_names=np.asarray([p.relative_to(test_folder).as_posix() for p in test_paths]))
    except (DatasetError, RayRunError, ValueError) as exc:
        _fail(str(exc))
    np.savez(output, **arrays)
    extra = f", test {arrays['test_features'].shape}" if test_folder is not None else ""
    typer.echo(f"wrote {output}: {dataset.features.shape}{extra}")


def _embed_any_folder(folder: Path, embedder_spec: str, cache_path: Optional[Path]) -> _Embedded:
    """Embed every image under `folder` (any layout) for similarity search; names are paths under it."""
    import numpy as np

    from .datasets import IMAGE_SUFFIXES, DatasetError, FeatureDataset

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    model = _make_embedder(embedder_spec)
    typer.echo(f"embedder: {model.id}; {len(paths)} images under {folder}")
    features, ok = _embed_paths(model, cache_path, paths)
    names = [p.relative_to(folder).as_posix() for p, keep in zip(paths, ok) if keep]
    return _Embedded(FeatureDataset(features[ok], np.zeros(int(ok.sum()), np.int64), ["?"]), names,
                     model.spec, model.id)


# Set by backend.cli.register (labelers never imports backend): (model_dir, project) -> (features, names,
# embedder spec, embedder id) of a backend project's cached embeddings, for `similar --project`.
PROJECT_EMBEDDINGS = None


def _project_embedded(model_dir: Optional[Path], project: str) -> _Embedded:
    """Return a backend project's cached embeddings (rows named "task <id>") through PROJECT_EMBEDDINGS."""
    import numpy as np

    from .datasets import FeatureDataset

    if PROJECT_EMBEDDINGS is None:
        _fail("--project needs the backend (backend.cli): it is not installed in this environment")
    if model_dir is None:
        _fail("--project needs --model-dir (or env MODEL_DIR): the backend's state folder")
    features, names, spec, embedder_id = PROJECT_EMBEDDINGS(model_dir, project)
    return _Embedded(FeatureDataset(features, np.zeros(len(features), np.int64), ["?"]), names, spec, embedder_id)


def similar(
    image: str = typer.Argument(..., help="reference image file, or the name of a row in the embeddings "
                                          "(with --project: a task id)"),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings",
                                              help="features .npz (with names) or an image folder"),
    project: Optional[str] = typer.Option(None, "--project",
                                          help="a backend project's id: search its cached embeddings instead"),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", envvar="MODEL_DIR",
                                             help="the backend's state folder (with --project)"),
    k: int = typer.Option(10, "--k", min=1, help="how many neighbours to print"),
    embedder: Optional[str] = typer.Option(None, help="embedder spec (default: the .npz's own; auto for a folder)"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache file (default: user cache)"),
    exact_below: Optional[int] = typer.Option(None, "--exact-below",
                                              help="exact search below this many rows (default 100000)"),
) -> None:
    from .datasets import DatasetError
    from .similarity import EXACT_BELOW, SimilarityIndex

    if (embeddings is None) == (project is None):
        _fail("pass exactly one of --embeddings (an .npz or image folder) and --project (a backend project)")
    if project is not None:
        image = f"task {image}" if image.strip().isdigit() else image
    elif not embeddings.exists():
        _fail(f"{embeddings}: no such file or folder")
    elif embeddings.suffix in (".sqlite", ".db"):
        _fail(f"{embeddings} is an embedding cache: it is keyed by image content and holds no names. Pass the "
              f"image folder as --embeddings and this file as --cache")
    try:
        if project is not None:
            embedded = _project_embedded(model_dir, project)
        else:
            embedded = _load_npz(embeddings) if embeddings.is_file() else \
                _embed_any_folder(embeddings, embedder or "auto", cache)
        query, row = _reference_vector(image, embedded, embedder, cache)
        index = SimilarityIndex(embedded.dataset.features, exact_below=exact_below or EXACT_BELOW)
        sims, idx = index.search(query, k + (row is not None))
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    pairs = [(s, i) for s, i in zip(sims[0], idx[0]) if i >= 0 and i != row][:k]
    kind = "approximate (faiss IVF)" if index.approximate else "exact"
    typer.echo(f"{len(pairs)} nearest of {index.n} to {image} ({kind}, cosine similarity):")
    for rank, (sim, i) in enumerate(pairs, 1):
        typer.echo(f"{rank:>4}  {sim:.4f}  {embedded.names[i]}")


def register(app: typer.Typer) -> None:
    """Add this room's subcommands to the labelloop app."""
    app.command("simulate", help=SIMULATE_HELP)(simulate)
    app.command("embed", help=EMBED_HELP)(embed)
    app.command("similar", help=SIMILAR_HELP)(similar)
    from .relabel.cli import register as register_relabel  # light: its heavy imports are inside the commands

    register_relabel(app)
