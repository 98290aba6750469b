"""`labelloop simulate` and `labelloop embed`: the active-learning simulator and the embedding tool."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

SIMULATE_HELP = """Simulate active learning with an oracle over a labeled dataset.

DATA is an image folder root/<class>/*.jpg (embedded through the cache) or an .npz with features,
labels and optionally test_features, test_labels, class_names. Writes curves.csv, curves.png and
summary.csv to the output folder and prints normalized AULC and labels-to-reach per strategy."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _load_dataset(data: Path, embedder_spec: str, cache_path: Optional[Path], batch_size: int):
    """Return a FeatureDataset from an .npz or an embedded image folder."""
    from .datasets import load_feature_npz

    if data.suffix == ".npz":
        return load_feature_npz(data)
    return _embed_folder(data, embedder_spec, cache_path, batch_size)[0]


def _embed_folder(data: Path, embedder_spec: str, cache_path: Optional[Path], batch_size: int):
    """Return (FeatureDataset, the image files it holds, in its row order) of an embedded image folder.

    Unreadable images are reported and left out, so the files returned are the ones embedded.
    """
    from .cache import EmbeddingCache, embed_files
    from .datasets import FeatureDataset, list_image_folder
    from .embedders import make_embedder
    from .sample_data import cache_dir

    paths, labels, names = list_image_folder(data)
    embedder = make_embedder(embedder_spec)
    typer.echo(f"embedder: {embedder.id}; {len(paths)} images in {len(names)} classes")
    cache = EmbeddingCache(cache_path or cache_dir() / "embeddings.sqlite")
    result = embed_files(embedder, cache, paths, batch_size=batch_size, progress=True)
    for message in list(result.errors.values())[:10]:
        typer.secho(f"skipped: {message}", fg="yellow", err=True)
    ok = result.ok
    return FeatureDataset(result.features[ok], labels[ok], names), [p for p, keep in zip(paths, ok) if keep]


def simulate(
    data: Path = typer.Argument(..., help="image folder root/<class>/*.jpg or a features .npz"),
    strategies: str = typer.Option("random,margin,entropy,least",
                                   help="comma-separated; modifiers: margin+kmeans, entropy+balance"),
    initial: int = typer.Option(20, help="labels before the first query"),
    batch_size: int = typer.Option(20, "--batch-size", help="labels added per round"),
    rounds: int = typer.Option(10, help="query rounds"),
    seeds: int = typer.Option(10, help="independent repetitions (95% CIs over these)"),
    test_fraction: float = typer.Option(0.2, help="held-out test share when the data has no test split"),
    init: str = typer.Option("random", help="initial pool: random | typical (k-means typicality)"),
    l2: float = typer.Option(100.0, help="head L2 strength towards its prior"),
    embedder: str = typer.Option("auto", help="embedder spec for image folders"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache file (default: user cache)"),
    output_dir: Path = typer.Option(Path("runs/simulate"), "--output-dir"),
) -> None:
    from .datasets import DatasetError
    from .learning_curves import paired_gaps, plot_curves, summarize
    from .simulate import SimulationSettings, simulate as run_simulation

    if not data.exists():
        _fail(f"{data}: no such file or folder")
    settings = SimulationSettings(tuple(s.strip() for s in strategies.split(",") if s.strip()), initial,
                                  batch_size, rounds, seeds, test_fraction, init, l2)
    try:
        dataset = _load_dataset(data, embedder, cache, 64)
        curves = run_simulation(dataset, settings)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    output_dir.mkdir(parents=True, exist_ok=True)
    curves.to_csv(output_dir / "curves.csv", index=False)
    plot_curves(curves, output_dir / "curves.png", title=f"{data.name}: {seeds} seeds, mean and 95% CI")
    baseline = "random" if "random" in settings.strategies else settings.strategies[0]
    summary = summarize(curves, baseline)
    summary.to_csv(output_dir / "summary.csv")
    paired_gaps(curves, baseline).to_csv(output_dir / "paired_gaps.csv", index=False)
    typer.echo(summary.round(4).to_string())
    typer.echo(f"wrote {output_dir}/curves.csv, curves.png, summary.csv, paired_gaps.csv")


def embed(
    folder: Path = typer.Argument(..., help="image folder (flat, or root/<class>/ for labels)"),
    output: Path = typer.Option(..., "--output", "-o", help=".npz to write (features, labels, class_names, names)"),
    embedder: str = typer.Option("auto", help="embedder spec"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache file (default: user cache)"),
    batch_size: int = typer.Option(64, "--batch-size"),
) -> None:
    """Embed a labeled image folder once (through the cache) into a features .npz.

    ``names`` holds each row's image as ``<class>/<file>`` under FOLDER, the key `labelloop label`
    writes, so `labelloop train --data <npz> --label-path auto_labels.csv` matches rows to features.
    """
    import numpy as np

    from .datasets import DatasetError

    try:
        dataset, paths = _embed_folder(folder, embedder, cache, batch_size)
    except (DatasetError, ValueError) as exc:
        _fail(str(exc))
    names = np.asarray([p.relative_to(folder).as_posix() for p in paths])
    np.savez(output, features=dataset.features, labels=dataset.labels, class_names=np.asarray(dataset.class_names),
             names=names)
    typer.echo(f"wrote {output}: {dataset.features.shape}")


def register(app: typer.Typer) -> None:
    """Add this room's subcommands to the labelloop app."""
    app.command("simulate", help=SIMULATE_HELP)(simulate)
    app.command("embed")(embed)
    from .relabel.cli import register as register_relabel  # light: its heavy imports are inside the commands

    register_relabel(app)
