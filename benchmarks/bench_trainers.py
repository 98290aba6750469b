"""Benchmark: every complementary-label strategy beside ordinary training (Ord), same model and epochs.

Settings (both tables): synthetic complementary labels drawn uniformly (one CL per image), MLP with one
500-unit hidden layer, Adam, model selection on the best validation Accuracy (true labels of a 10 %
validation split, as in libcll's scripts), seeds 1, 2, 3.

- MNIST: a seeded random 20 000-image subset of the training split, 8 epochs, batch 256, lr 1e-3;
  tested on the full 10 000-image test split.
- CIFAR-10: frozen EfficientNet-Lite0 features (128 px, mean-pooled, 1280-d, standardised) of the first
  500 training images per class (5 000) and the first 200 test images per class (2 000); 20 epochs,
  batch 256, lr 1e-3. Features are computed once through labelers.cache and stored in benchmarks/.work/.

T-aware strategies (FWD, URE, CPE) see the uniform matrix, which is the generating matrix of these
synthetic CLs (an oracle by construction, marked in the table). URE-TNN/TGA instead use a matrix
estimated from 500 gold labels of the training split (not an oracle).

Run: python -m benchmarks.bench_trainers [--dataset mnist|cifar10|both] [--seeds 1 2 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.cifar_features import cifar_features

WORK = Path(__file__).resolve().parent / ".work"

STRATEGIES = [("Ord", None), ("SCL", "NL"), ("SCL", "EXP"), ("URE", "NN"), ("URE", "GA"), ("URE", "TNN"),
              ("URE", "TGA"), ("FWD", None), ("DM", None), ("PC", None), ("OP", None), ("CPE", "I"), ("CPE", "F"),
              ("CPE", "T"), ("MCL", "MAE"), ("MCL", "EXP"), ("MCL", "LOG")]
SETTINGS = {
    "mnist": dict(model="mlp", epoch=8, batch_size=256, lr=1e-3, max_train=20000),
    "cifar10": dict(model="mlp", epoch=20, batch_size=256, lr=1e-3, max_train=None),
}
GOLD = 500  # gold labels for the estimated matrix of URE-TNN/TGA


def run_one(dataset: str, data: str, strategy: str, kind: str | None, seed: int, epochs: int | None) -> dict:
    from trainers.train import TrainConfig, run

    settings = dict(SETTINGS[dataset])
    if epochs:
        settings["epoch"] = epochs
    tm, gold = ("empirical", GOLD) if kind in ("TNN", "TGA") else ("uniform", None)
    cfg = TrainConfig(strategy=strategy, type=kind, data=data, num_cl=1, valid_type="Accuracy", seed=seed,
                      output_dir=str(WORK / "runs" / dataset / f"{strategy}-{kind}-{seed}"), progress=False,
                      transition_matrix=tm, synthetic_matrix="uniform", gold_count=gold, **settings)
    start = time.perf_counter()
    results = run(cfg)
    results["seconds"] = time.perf_counter() - start
    return results


def table(dataset: str, rows: list[dict]) -> str:
    """Return the markdown table: mean +- std test accuracy per strategy, gap to Ord, time ratio to Ord."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append(r)
    ord_acc = np.mean([r["test_Accuracy"] for r in by["ORD"]])
    ord_time = np.mean([r["seconds"] for r in by["ORD"]])
    lines = ["| Strategy | Test accuracy % (mean ± std) | Gap to Ord (pts) | T used | Time / Ord |",
             "|---|---|---|---|---|"]
    for name, runs in by.items():
        acc = np.array([r["test_Accuracy"] for r in runs]) * 100
        gap = acc.mean() - ord_acc * 100
        t = runs[0]["transition_matrix"] if name not in ("ORD", "SCL-NL", "SCL-EXP", "DM", "PC", "OP",
                                                          "MCL-MAE", "MCL-EXP", "MCL-LOG") else "-"
        t = t.replace(", the generating matrix of the synthetic CLs", "")
        lines.append(f"| {name} | {acc.mean():.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f} | "
                     f"{'—' if name == 'ORD' else f'{gap:+.2f}'} | {t} | {np.mean([r['seconds'] for r in runs]) / ord_time:.2f} |")
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["mnist", "cifar10", "both"], default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="2 epochs, one seed: a smoke test of the script")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds, epochs = (args.seeds[:1], 2) if args.quick else (args.seeds, None)
    datasets = ["mnist", "cifar10"] if args.dataset == "both" else [args.dataset]
    for dataset in datasets:
        data = "mnist" if dataset == "mnist" else str(cifar_features(500, 200, 128))
        rows = []
        out = WORK / f"bench_trainers_{dataset}.json"
        run_one(dataset, data, "Ord", None, 0, 1)  # warm-up: imports and first-call costs stay out of timings
        started = time.perf_counter()
        for strategy, kind in STRATEGIES:
            for seed in seeds:
                result = run_one(dataset, data, strategy, kind, seed, epochs)
                rows.append(result)
                print(f"{dataset} {result['strategy']} seed {seed}: test {result['test_Accuracy']:.4f} "
                      f"({result['seconds']:.1f}s)", flush=True)
                out.write_text(json.dumps(rows, indent=1))
        markdown = table(dataset, rows)
        markdown += f"\n\nTotal training time: {(time.perf_counter() - started) / 60:.1f} min ({len(rows)} runs)."
        (WORK / f"bench_trainers_{dataset}.md").write_text(markdown + "\n")
        print(markdown, flush=True)


if __name__ == "__main__":
    main()
