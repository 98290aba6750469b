"""The label-spreading k-NN graph of a pool: exact against approximate neighbours, and what spreading sees.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_knn_graph benchmarks/.work/cifar10_effnet128_5000x300.npz

For one feature .npz (`features`/`labels` = pool, `test_features`/`test_labels`; benchmarks.cifar_features):
1. Build time of the graph with exact neighbours and with `knn_graph`'s approximate search (faiss HNSW,
   `labelers.propagation.pool_neighbours`); for comparison, HNSW at other M (`--hnsw-m`) and the faiss IVF
   index of labelers.similarity (`--nprobes`).
2. Neighbour recall@k of each approximate search against the exact k nearest rows (self left out).
3. Label spreading on each graph: `spread` from L random labels per class (same rows for every graph, per
   seed) then `predict_new` on the test features; test accuracy, and the paired gap approximate - exact
   (mean and worst over seeds).
Prints a markdown table. Same thread count for every build; ratios matter, seconds depend on the machine.
The speed-up is of CPU seconds (with OMP_NUM_THREADS=1, one core's work), which a shared machine's load
moves less than wall-clock seconds.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from labelers.propagation import (
    DEFAULT_K,
    DEFAULT_POWER,
    KnnGraph,
    graph_matrix,
    hnsw_neighbours,
    new_neighbours,
    pool_neighbours,
    predict_from_neighbours,
    spread,
)
from labelers.similarity import SimilarityIndex, normalize


def neighbour_recall(exact_idx: np.ndarray, approx_idx: np.ndarray, k: int) -> float:
    """Mean over rows of |approximate k neighbours & exact k neighbours| / k, each without the row itself."""
    hits = 0
    for row, (e, a) in enumerate(zip(exact_idx, approx_idx)):
        e = e[(e != row) & (e >= 0)][:k]
        a = a[(a != row) & (a >= 0)][:k]
        hits += len(np.intersect1d(e, a))
    return hits / (k * len(exact_idx))


def ivf_neighbours(vectors: np.ndarray, k: int, nprobe: int):
    """(similarities, indices) of the k + 1 nearest rows of every row from labelers.similarity's IVF index."""
    index = SimilarityIndex(vectors, exact_below=1, nprobe=nprobe)
    return index.search(vectors, k + 1)


def check_cached(data: Path, matrix, k: int) -> None:
    """Print how far the exact graph is from the one bench_active_learning cached beside `data`, if any."""
    import scipy.sparse as sp

    cached = data.with_name(f"{data.stem}_graph_k{k}.npz")
    if cached.exists():
        diff = abs(sp.load_npz(cached).tocsr() - matrix).max()
        print(f"  exact graph vs cached {cached.name}: max |difference| {diff:.2e}", flush=True)


def label_accuracy(graph: KnnGraph, labels: np.ndarray, test: tuple, test_labels: np.ndarray,
                   per_class: int, seed: int) -> float:
    """Test accuracy of spreading `per_class` random labels per class (rows drawn by `seed`) over `graph`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    labeled = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes])
    scores = spread(graph, labeled, labels[labeled], len(classes))
    return float((predict_from_neighbours(scores, test).argmax(axis=1) == test_labels).mean())


def main(data: Path,
         nprobes: str = typer.Option("", help="also labelers.similarity's IVF index at these nprobe values"),
         hnsw_m: str = typer.Option("", help="also HNSW with these M (links per row) values, e.g. 16"),
         per_class: str = typer.Option("1,5,20", help="labels per class, comma-separated"),
         seeds: int = typer.Option(5, help="label draws per labels-per-class value"),
         k: int = typer.Option(DEFAULT_K)) -> None:
    """Print the table for the feature .npz `data` (benchmarks.cifar_features)."""
    with np.load(data) as npz:
        vectors, labels = normalize(npz["features"]), npz["labels"]
        test_features, test_labels = npz["test_features"], npz["test_labels"]
    n = len(vectors)
    print(f"{data.name}: pool {n} x {vectors.shape[1]}, test {len(test_labels)}, k={k}", flush=True)
    searches = {"exact": lambda: pool_neighbours(vectors, k, exact_below=n + 1)[:2],
                "hnsw (knn_graph above the threshold)": lambda: pool_neighbours(vectors, k, exact_below=1)[:2]}
    for m in (int(x) for x in hnsw_m.split(",") if x):
        searches[f"hnsw M={m}"] = lambda m=m: hnsw_neighbours(vectors, k, m=m)[:2]
    for p in (int(x) for x in nprobes.split(",") if x):
        searches[f"ivf nprobe={p}"] = lambda p=p: ivf_neighbours(vectors, k, p)
    test = None
    rows, exact_idx, exact_acc = [], None, {}
    for name, search in searches.items():
        start, cpu_start = time.perf_counter(), time.process_time()
        sims, idx = search()
        graph = KnnGraph(graph_matrix(sims, idx, DEFAULT_POWER), vectors, k, DEFAULT_POWER)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if test is None:  # the test rows' pool neighbours do not depend on the graph: searched once
            test = new_neighbours(graph, test_features)
        if exact_idx is None:
            exact_idx = idx
            check_cached(data, graph.matrix, k)
        recall = neighbour_recall(exact_idx, idx, k)
        accs = {L: np.array([label_accuracy(graph, labels, test, test_labels, L, s) for s in range(seeds)])
                for L in (int(x) for x in per_class.split(","))}
        if name == "exact":
            exact_acc = accs
        rows.append((name, seconds, cpu, recall, graph.matrix.nnz, accs))
        print(f"  {name}: {seconds:.1f} s ({cpu:.1f} s CPU), recall@{k} {recall:.4f}", flush=True)
    exact_cpu = rows[0][2]
    heads = [f"acc {L}/class (gap mean, worst)" for L in exact_acc]
    print(f"\n| graph | build s | CPU s | speed-up (CPU) | recall@{k} | edges | " + " | ".join(heads) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(heads))
    for name, seconds, cpu, recall, nnz, accs in rows:
        cells = []
        for L, acc in accs.items():
            gap = acc - exact_acc[L]
            cells.append(f"{acc.mean():.4f}" + ("" if name == "exact" else f" ({gap.mean():+.4f}, {gap.min():+.4f})"))
        print(f"| {name} | {seconds:.1f} | {cpu:.1f} | {exact_cpu / cpu:.1f}x | {recall:.4f} | {nnz} | "
              + " | ".join(cells) + " |")
    print(f"\n{seeds} seeds per labels-per-class value; gap = approximate - exact on the same labeled rows.")


if __name__ == "__main__":
    typer.run(main)
