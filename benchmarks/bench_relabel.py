"""Multi-label relabeling on scenes of real CIFAR-10 objects: keep-original vs the CS570 seed's method vs ours.

    python -m benchmarks.bench_relabel --scenes 5000 --seeds 3

Scenes (labelers.relabel.scenes.compose_scenes): 96 px canvases of 1-4 CIFAR-10 train images of distinct
classes; object counts 84/10/4/2 %, dominant object 55-80 % of the canvas side, others 30-45 %; the given
label is the dominant object's class, flipped to another class at --noise. A held-out scene set of
--holdout scenes (multi-label truth) calibrates and validates; a test set of --test scenes measures the
ReaL-style top-1 of heads retrained on each method's labels. Features: EfficientNet-Lite0 at --px,
through the shared embedding cache.
Methods:
  keep-original   the given single label
  seed            naive confidence, 3 random `fixed` crops (+ the whole image), each crop's argmax, union + original
  ours            --regions random --crop-size range, --num-crops crops, MC dropout (20 passes, p 0.05),
                  per-class thresholds for precision 0.9, keep original, up to 3 rounds with held-out acceptance
Per seed: Jaccard / precision / recall / F1 averaged over scenes, 95 % CI over scenes (normal approximation);
over seeds: mean and 95 % t-interval. Writes benchmarks/results/relabel.csv and the "relabel" section of
benchmarks/RESULTS.md.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from benchmarks.results_file import write_section
from labelers.cache import EmbeddingCache
from labelers.embedders import make_embedder
from labelers.images import load_image
from labelers.relabel.metrics import multi_hot, real_top1, set_metrics
from labelers.relabel.region_features import embed_regions
from labelers.relabel.regions import propose
from labelers.relabel.rounds import Holdout, RelabelSettings, best_round, fit_head, run_rounds
from labelers.relabel.scenes import compose_scenes
from labelers.sample_data import CIFAR10_CLASSES, cache_dir, cifar10_subset

OUT = Path(__file__).with_name("results")


def _regions(scene_set, model, cache, method, num_crops, crop_size, seed):
    images = [load_image(p) for p in scene_set.paths]
    boxes = [propose(im, method, num_crops, crop_size, seed=seed * 100_003 + i, name=str(p))
             for i, (im, p) in enumerate(zip(images, scene_set.paths))]
    return embed_regions(model, cache, images, boxes, [str(p) for p in scene_set.paths], progress=True)


def _per_image_f1_ci(predicted, truth):
    p, r = predicted, truth
    inter = (p & r).sum(1)
    precision = np.divide(inter, p.sum(1), out=np.zeros(len(p)), where=p.sum(1) > 0)
    recall = inter / r.sum(1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(p)), where=precision + recall > 0)
    return 1.96 * f1.std(ddof=1) / np.sqrt(len(f1))


def run_seed(seed, n_scenes, n_holdout, n_test, noise, num_crops, px, work):
    model = make_embedder(f"efficientnet-lite0@{px}")
    cache = EmbeddingCache(cache_dir() / "embeddings.sqlite")
    paths, labels = cifar10_subset("train", per_class=1000)
    k = len(CIFAR10_CLASSES)
    sets = {name: compose_scenes(paths, labels, n, work / f"s{seed}_{name}", noise=noise, n_classes=k,
                                 seed=seed * 7 + j)
            for j, (name, n) in enumerate((("train", n_scenes), ("holdout", n_holdout), ("test", n_test)))}
    truth = multi_hot(sets["train"].truth, k)
    test_truth = multi_hot(sets["test"].truth, k)
    seed_regions = _regions(sets["train"], model, cache, "random", 3, "fixed", seed)
    ours_regions = _regions(sets["train"], model, cache, "random", num_crops, "range", seed)
    held = Holdout(_regions(sets["holdout"], model, cache, "random", num_crops, "range", seed),
                   multi_hot(sets["holdout"].truth, k))
    test_whole = np.stack([r[0] for r in _regions(sets["test"], model, cache, "random", 0, "fixed", seed)])
    whole = np.stack([r[0] for r in ours_regions])
    original = sets["train"].original
    labels_by_method = {"keep-original": multi_hot([[o] for o in original], k)}
    seed_settings = RelabelSettings(confidence="naive", rule="argmax", keep_original=True, seed=seed)
    seed_run = run_rounds(seed_regions, original, CIFAR10_CLASSES, seed_settings, rounds=1)
    labels_by_method["seed"] = multi_hot(seed_run[-1].labels, k)
    ours_settings = RelabelSettings(confidence="mc-dropout", passes=20, rule="per-class", target_precision=0.9,
                                    keep_original=True, seed=seed)
    ours_run = run_rounds(ours_regions, original, CIFAR10_CLASSES, ours_settings, rounds=3, holdout=held)
    labels_by_method["ours"] = multi_hot(best_round(ours_run).labels, k)
    rows = []
    for method, predicted in labels_by_method.items():
        head = fit_head(whole, predicted, CIFAR10_CLASSES, ours_settings)
        rows.append({"seed": seed, "method": method, **set_metrics(predicted, truth),
                     "f1_ci95": _per_image_f1_ci(predicted, truth),
                     "retrained_top1": real_top1(head.predict_proba(test_whole), test_truth),
                     "rounds_accepted": best_round(ours_run).round if method == "ours" else None})
    return rows


def main(scenes: int = typer.Option(5000), seeds: int = typer.Option(3), holdout: int = typer.Option(1000),
         test: int = typer.Option(1000), noise: float = typer.Option(0.0), num_crops: int = typer.Option(6),
         px: int = typer.Option(96), write_results: bool = typer.Option(True)) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in range(seeds):
            rows += run_seed(seed, scenes, holdout, test, noise, num_crops, px, Path(work))
    frame = pd.DataFrame(rows)
    OUT.mkdir(exist_ok=True)
    frame.to_csv(OUT / "relabel.csv", index=False)
    columns = ["jaccard", "precision", "recall", "f1", "cardinality", "retrained_top1"]
    summary = frame.groupby("method", sort=False)[columns].agg(["mean", "std"])
    typer.echo(frame.to_string())
    lines = [f"## Relabel (scenes of CIFAR-10 objects)\n",
             f"`python -m benchmarks.bench_relabel --scenes {scenes} --seeds {seeds} --holdout {holdout} "
             f"--test {test} --noise {noise} --num-crops {num_crops} --px {px}`; generator: 1-4 objects "
             f"(84/10/4/2 %), dominant 55-80 % of a 96 px canvas, others 30-45 %, given label = dominant "
             f"object's class, noise {noise}. Mean over seeds (± std across seeds; per-seed 95 % CI of F1 over "
             f"scenes in relabel.csv).\n",
             "| method | Jaccard | precision | recall | F1 | cardinality | retrained top-1 (ReaL-style) |",
             "|---|---|---|---|---|---|---|"]
    for method, row in summary.iterrows():
        cells = [f"{row[(c, 'mean')]:.3f} ± {0 if np.isnan(row[(c, 'std')]) else row[(c, 'std')]:.3f}" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if write_results:
        write_section("relabel", "\n".join(lines))
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
