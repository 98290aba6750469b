"""Benchmark: transition-matrix estimators and label-free model selection on VLM-like complementary labels.

The CLs are built from CIFAR-10 truth by a simulated VLM that follows the seed's protocol (4 candidate
classes drawn uniformly per round, 3 rounds per image, so repeats happen) and answers like LLaVA did:
it names the candidate that looks least like the image more often. "Looks like" is the cosine
distance between class-mean EfficientNet-Lite0 features: P(answer c) ~ exp(distance(y, c) / tau) over the
candidates c != y; the true class, when shown, is named with probability 0.57 % (the VLM's measured
conditional error). The per-round matrix this produces is far from uniform (its largest entry per row
is printed with the table).

Features: frozen EfficientNet-Lite0 at 128 px (benchmarks/cifar_features.py), MLP head (500 hidden),
20 epochs, Adam lr 1e-3, batch 256, 10 % validation split. Every estimate says what chose its epoch:
"gold" runs validate on the gold images of their validation split (no other true label is used);
"none" runs validate on SCEL of the validation split's CLs; the reference rows (Ord, oracle matrix,
today's uniform) validate on every true label, as in today's protocol.

Run: python -m benchmarks.bench_cl_matrices [--per-class 2000] [--seeds 1 2] [--gold 500]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.cifar_features import cifar_features

WORK = Path(__file__).resolve().parent / ".work"
CANDIDATES, ROUNDS = 4, 3
TRUE_SHOWN_ERROR = 0.0057  # P(VLM names the true class | it is among the candidates), measured on LLaVA-1.6


def class_distances(features: np.ndarray, labels: np.ndarray, K: int) -> np.ndarray:
    """Return (K, K) cosine distances between the classes' mean feature vectors."""
    means = np.stack([features[labels == k].mean(axis=0) for k in range(K)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    return 1 - means @ means.T


def vlm_like_cls(labels: np.ndarray, distances: np.ndarray, tau: float, seed: int,
                 rounds: int = ROUNDS) -> np.ndarray:
    """Return (N, rounds) CLs: per round, 4 uniform candidates; the answer ~ exp(distance / tau) among them."""
    K = len(distances)
    rng = np.random.default_rng(seed)
    out = np.empty((len(labels), rounds), dtype=np.int64)
    weights = np.exp(distances / tau)
    for r in range(rounds):
        candidates = np.argsort(rng.random((len(labels), K)), axis=1)[:, :CANDIDATES]
        w = weights[labels[:, None], candidates]
        shown = candidates == labels[:, None]
        # the true class is named with probability TRUE_SHOWN_ERROR when it is shown
        others = np.where(shown, 0.0, w)
        others = others / others.sum(axis=1, keepdims=True) * (1 - TRUE_SHOWN_ERROR * shown.any(axis=1))[:, None]
        p = np.where(shown, TRUE_SHOWN_ERROR, others)
        pick = (rng.random(len(labels))[:, None] > p.cumsum(axis=1)).sum(axis=1).clip(max=CANDIDATES - 1)
        out[:, r] = candidates[np.arange(len(labels)), pick]
    return out


def build_runs(per_class: int, tau: float, seed: int = 0) -> tuple[Path, np.ndarray]:
    """Return (the .npz with VLM-like CLs over the features, the oracle per-round matrix from all truth)."""
    from trainers import matrices

    source = np.load(cifar_features(per_class, 200, 128))
    features, labels = source["features"], source["labels"].astype(np.int64)
    K = len(source["class_names"])
    cls = vlm_like_cls(labels, class_distances(features, labels, K), tau, seed)
    out = WORK / f"cifar10_vlm_like_{per_class}_tau{tau}_seed{seed}.npz"
    np.savez(out, features=features, labels=labels, cl_labels=cls, class_names=source["class_names"],
             test_features=source["test_features"], test_labels=source["test_labels"])
    oracle, _ = matrices.empirical(labels, cls, K)
    return out, oracle


# The new recipe: all of an image's CLs in one likelihood (FWD-JOINT), a 10x smaller step and weight decay,
# because these runs peak in the first epochs and then fit the CLs' noise (see the table's best epochs).
NEW = {"strategy": "FWD-JOINT", "lr": 1e-4, "weight_decay": 1e-3}

# (row name, matrix, gold labels, valid type, extra TrainConfig settings, what chose the epoch)
SETTINGS = [
    ("Ord (true labels)", "uniform", None, "Accuracy", {"strategy": "Ord"}, "all true labels"),
    ("FWD, full-truth matrix (oracle)", "oracle", None, "Accuracy", {}, "all true labels"),
    ("today: FWD uniform", "uniform", None, "Accuracy", {}, "all true labels"),
    ("today: FWD uniform, SCEL", "uniform", None, "SCEL", {}, "none"),
    ("today: FWD empirical 500 gold", "empirical", 500, "auto", {}, "gold"),
    ("FWD shrunk 500 gold", "shrunk", 500, "auto", {}, "gold"),
    ("new: FWD-JOINT, full-truth matrix (oracle)", "oracle", None, "Accuracy", NEW, "all true labels"),
    ("new: FWD-JOINT uniform, SCEL", "uniform", None, "SCEL", NEW, "none"),
    ("new: FWD-JOINT shrunk 500 gold", "shrunk", 500, "auto", NEW, "gold"),
    ("new: FWD-JOINT shrunk 500 gold + gold CE", "shrunk", 500, "auto", {**NEW, "ordinary_weight": 1.0}, "gold"),
    ("new: FWD-JOINT shrunk 500 gold, SCEL", "shrunk", 500, "SCEL", NEW, "gold (matrix only)"),
    ("new: FWD-JOINT em, no gold", "em", None, "SCEL", NEW, "none"),
    ("new: FWD-JOINT anchor, no gold", "anchor", None, "SCEL", NEW, "none"),
    ("new: FWD-JOINT shrunk 500 gold + gold CE, 3 restarts", "shrunk", 500, "auto",
     {**NEW, "ordinary_weight": 1.0, "restarts": 3}, "gold"),
    ("new: FWD-JOINT em, no gold, 3 restarts", "em", None, "SCEL", {**NEW, "restarts": 3}, "none"),
]


def run_one(name, data, oracle_path, tm, gold, valid_type, extra, seed, epochs):
    from trainers.train import TrainConfig, run

    settings = dict(strategy="FWD", model="mlp", epoch=epochs, batch_size=256, lr=1e-3, num_cl=ROUNDS)
    settings.update(extra)
    slug = "".join(c if c.isalnum() else "-" for c in name)[:60]
    cfg = TrainConfig(data=str(data), transition_matrix=str(oracle_path) if tm == "oracle" else tm,
                      gold_count=gold, valid_type=valid_type, seed=seed, progress=False,
                      output_dir=str(WORK / "runs" / "cl_matrices" / f"{slug}-{seed}"), **settings)
    start = time.perf_counter()
    results = run(cfg)
    results["seconds"] = time.perf_counter() - start
    results["name"] = name
    T = np.loadtxt(Path(cfg.output_dir) / "transition_matrix.csv", delimiter=",")
    results["T_frobenius"] = float(np.linalg.norm(T - np.load(oracle_path)))
    return results


def table(rows: list[dict], settings=SETTINGS) -> str:
    """Return the markdown table: per setting mean test accuracy, gap to Ord, distance of T to the oracle."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
    ord_acc = np.mean([r["test_Accuracy"] for r in by[settings[0][0]]]) * 100
    lines = ["| Setting | True labels that chose T / the epoch | Test accuracy % | Gap to Ord (pts) | "
             "‖T − T_full‖_F | Best epoch |", "|---|---|---|---|---|---|"]
    for name, tm, gold, _, _, chooser in settings:
        if name not in by:
            continue
        runs = by[name]
        acc = np.array([r["test_Accuracy"] for r in runs]) * 100
        spread = f" ± {acc.std(ddof=1):.1f}" if len(acc) > 1 else ""
        labels = f"{gold} gold / {chooser}" if gold else chooser
        dist = "—" if name.startswith("Ord") else f"{np.mean([r['T_frobenius'] for r in runs]):.3f}"
        lines.append(f"| {name} | {labels} | {acc.mean():.1f}{spread} | "
                     f"{'—' if name.startswith('Ord') else f'{acc.mean() - ord_acc:+.1f}'} | {dist} | "
                     f"{', '.join(str(r['best_epoch']) for r in runs)} |")
    return "\n".join(lines)


def targets(rows: list[dict], settings=SETTINGS) -> str:
    """Return the target check: the best mean accuracy with at most 500 gold labels, and with none."""
    means = {}
    for r in rows:
        means.setdefault(r["name"], []).append(r["test_Accuracy"] * 100)
    kinds = {name: chooser for name, _, _, _, _, chooser in settings}
    lines = []
    for label, want, goal in (("at most 500 gold labels", "gold", 65), ("no true label", "none", 62)):
        pool = {n: np.mean(v) for n, v in means.items() if kinds.get(n, "").startswith(want)}
        if pool:
            best = max(pool, key=pool.get)
            verdict = "met" if pool[best] >= goal else "MISSED"
            lines.append(f"- {label}: target {goal} %, best {pool[best]:.1f} % ({best}, {len(means[best])} "
                         f"seed(s)): {verdict}.")
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2000, help="training images per class")
    parser.add_argument("--tau", type=float, default=0.05, help="VLM-like answer temperature")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--only", nargs="*", help="run only the settings whose name contains one of these")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    parser.add_argument("--table-only", action="store_true", help="train nothing: tabulate the saved results")
    parser.add_argument("--part", default="", help="a name for this process's results file (parallel runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, oracle = build_runs(args.per_class, args.tau)
    oracle_path = WORK / f"oracle_T_{args.per_class}_tau{args.tau}.npy"
    np.save(oracle_path, oracle)
    print("per-round matrix (from all truth), largest entry per row:", np.round(oracle.max(axis=1), 3), flush=True)
    settings = [s for s in SETTINGS if not args.only or any(o in s[0] for o in args.only)
                and ("restarts" not in s[0] or "restarts" in args.only)]  # restarts only when named
    out = WORK / f"bench_cl_matrices_{args.per_class}{'_' + args.part if args.part else ''}.json"
    mine = json.loads(out.read_text()) if out.exists() else []
    rows = [r for f in sorted(WORK.glob(f"bench_cl_matrices_{args.per_class}*.json")) if f != out
            for r in json.loads(f.read_text())] + mine
    done = {(r["name"], r["seed"]) for r in rows}
    for name, tm, gold, valid_type, extra, _ in [] if args.table_only else settings:
        for seed in args.seeds:
            if (name, seed) in done:
                continue
            result = run_one(name, data, oracle_path, tm, gold, valid_type, extra, seed, args.epochs)
            rows.append(result)
            mine.append(result)
            print(f"{name} seed {seed}: test {result['test_Accuracy']:.4f} best epoch {result['best_epoch']} "
                  f"|T-T_full| {result['T_frobenius']:.3f} ({result['seconds']:.0f}s)", flush=True)
            out.write_text(json.dumps(mine, indent=1))
    markdown = table(rows)
    print(markdown)
    if args.write:
        from benchmarks.results_file import write_section

        n = args.per_class * 10
        write_section("cl_matrices", f"""## Complementary labels: transition-matrix estimators (VLM-like CLs)

Command: `python -m benchmarks.bench_cl_matrices --per-class {args.per_class} --seeds {' '.join(map(str, args.seeds))} --write`
(it trains every setting and seed not yet in `benchmarks/.work/bench_cl_matrices_{args.per_class}*.json`; `--only`
and `--part` split the work over processes, `--table-only` rewrites this table from the saved runs).

CIFAR-10, {n} training images ({args.per_class} per class, 10 % of them the validation split), 2 000 test
images; frozen EfficientNet-Lite0 128 px features, MLP, {args.epochs} epochs; 3 VLM-like CLs per image
(4 uniform candidates per round, the answer ~ exp(class-mean distance / {args.tau}), true class named
with probability 0.57 % when shown; repeats kept). Largest per-round matrix entry per row:
{', '.join(f'{v:.2f}' for v in oracle.max(axis=1))} (uniform: 0.11). Mean over seeds {', '.join(map(str, args.seeds))}.
"‖T − T_full‖_F" is the Frobenius distance of the matrix the run trained with to the one from every true label.

{markdown}

Targets (3 CLs per image, mean over the seeds run):
{targets(rows)}

What the rows show:
- The runs of today's recipe (FWD, lr 1e-3, no weight decay) peak at epoch 0-2 and then fit the noise
  of the CLs; FWD-JOINT (all of an image's CLs in one likelihood) with lr 1e-4 and weight decay 1e-3
  peaks later and stays there, so its epoch choice matters less.
- `shrunk` ends nearer the full-truth matrix than the raw 500-gold counts; most of the gain from gold,
  though, comes from training on the gold labels too (`--ordinary-weight 1`) and from `--restarts 3`:
  the initialisation decides whether two look-alike classes (automobile / truck, cat / dog) come
  out apart (the full-truth rows vary by 4-8 points over two seeds), and the gold validation images
  pick the initialisation that did. Without gold, restarts chosen by SCEL changed nothing here (the
  two `em` rows): SCEL cannot tell a swap of two classes whose CLs look alike.
- Without gold, `em` and `anchor` estimate the matrix from the model's own predictions and clear 62 %;
  `em` trains better, `anchor` ends nearer the full-truth matrix. Validation on SCEL alone chose
  epochs 9-12 for them; with today's recipe SCEL chose epoch 0 (the "today: FWD uniform, SCEL" row).
- Two seeds only (the machine is shared; each em run trains three times): the ± are large, and the
  gold row without restarts sits 0.5 points above its target.
- Features: {n} training images instead of the issue's 45 000 (the embedding build shares a 2-core
  machine); on these features Ord reaches the accuracy in its row, about 2 points under the
  issue's 80.5 %.
""")


if __name__ == "__main__":
    main()
