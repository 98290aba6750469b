"""The CS570 seed's three configs and ours, each run through `labelloop relabel` on the same scenes.

    python -m benchmarks.bench_relabel_configs --scenes 1000 --perturbation-scenes 100 --seeds 3

Per seed s (scene seeds 7s train, 7s+1 holdout, as benchmarks/bench_relabel.py): the train scenes are written as
the seed's relabeler JSON (the given, noisy single label per row) with a class-index file, the holdout as a
relabeler JSON of true sets plus each row's given label ("original"); then `labelloop relabel` runs in a
subprocess (the real command line, so the --config seam is what is measured):
  seed naive            --config configs/relabel_naive.yaml           (3 random fixed crops, each crop's argmax)
  seed MC dropout       --config configs/relabel_mc_dropout.yaml      (10 crops, 20 dropout passes, threshold 0.5)
  seed MC perturbation  --config configs/relabel_mc_perturbation.yaml (10 crops, 25 AutoAugment views, 0.3)
  ours                  --regions random --num-crops 0 (the whole image) --confidence naive --label learned
                        --holdout ... --rounds 3 --folds 5 (the rule judges the original too)
each with --max-images N (the configs' num_relabel is 100) and --embedder efficientnet-lite0@<px>. Block A runs
keep-original, naive, MC dropout and ours on --scenes scenes; block B (MC perturbation embeds 11 regions x 25
views per scene) runs all five on the first --perturbation-scenes scenes, every command on that smaller set
(the heads train on what is relabeled, so each block compares methods on one data size).
The labels.json each run writes is scored against the scenes' truth (per-scene Jaccard / P / R / F1, 95 %
intervals over scenes). Writes benchmarks/results/relabel_configs.csv and the `configs` fragment of the
relabel section of RESULTS.md after every seed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from benchmarks.bench_relabel import OBJECT_TITLES, OUT, TARGET_RECALL, per_scene, scene_cells, scene_sets, \
    target_line, write_fragment
from labelers.formats.relabel_json import ClassIndex, image_identity, read_relabel_json, write_class_index, write_relabel_json
from labelers.relabel.metrics import multi_hot

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).with_name(".work") / "relabel_cli.sqlite"
SEED_CONFIGS = (("seed naive", "relabel_naive.yaml"), ("seed MC dropout", "relabel_mc_dropout.yaml"),
                ("seed MC perturbation", "relabel_mc_perturbation.yaml"))
# ours: the settings bench_relabel.py reports (chosen on the development seed)
OURS = ["--regions", "random", "--num-crops", "0", "--confidence", "naive", "--label", "learned", "--rounds", "3",
        "--folds", "5", "--holdout", "{holdout}"] + ([] if TARGET_RECALL is None else ["--target-recall", str(TARGET_RECALL)])


def write_inputs(sets, class_names, folder: Path) -> tuple[Path, Path, Path]:
    """Write train.json (given labels), holdout.json (truth + "original") and class_index.json; return them."""
    folder.mkdir(parents=True, exist_ok=True)
    train = write_relabel_json(folder / "train.json", [(str(p.resolve()), [int(o)]) for p, o in
                                                       zip(sets["train"].paths, sets["train"].original)])
    held = sets["holdout"]
    holdout = folder / "holdout.json"
    holdout.write_text(json.dumps({"data": [{"img_path": str(p.resolve()), "labels": t, "original": int(o)}
                                            for p, t, o in zip(held.paths, held.truth, held.original)]}))
    index = write_class_index(folder / "class_index.json", ClassIndex(list(class_names), list(class_names)))
    return train, holdout, index


def run_cli(args: list[str], cwd: Path, log) -> None:
    """Run `labelloop relabel ARGS` in a subprocess (this checkout's code); raise with its stderr on failure."""
    command = [sys.executable, "-m", "labelloop.cli", "relabel", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log.write("$ labelloop relabel " + " ".join(args) + "\n")
    log.flush()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(done.stdout[-4000:] + "\n")
    log.flush()
    if done.returncode:
        raise RuntimeError(f"labelloop relabel {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}")


def read_labels(labels_json: Path, paths, k: int) -> np.ndarray:
    """Return the (N, K) label sets labels.json gives the scene files `paths`, in their order."""
    by_path = {image_identity(p, labels_json): labels for p, labels in read_relabel_json(labels_json, k)}
    return multi_hot([by_path[str(Path(p).resolve())] for p in paths], k)


def run_block(block, n, sets, class_names, folder, seed, px, methods, log, runtime="torch"):
    """Run `methods` through the CLI on the first `n` train scenes (embedder efficientnet-lite0@px, in ONNX
    Runtime with runtime "onnx"); return per-scene metric frames."""
    k = len(class_names)
    train, holdout, index = write_inputs(sets, class_names, folder)
    common = ["--data", str(train), "--class-index", str(index), "--max-images", str(n),
              "--embedder", f"efficientnet-lite0@{px}{'+onnx' if runtime == 'onnx' else ''}", "--cache", str(CACHE), "--seed", str(seed)]
    truth = multi_hot(sets["train"].truth[:n], k)
    paths = sets["train"].paths[:n]
    frames = [pd.DataFrame({"block": block, "seed": seed, "method": "keep-original", "cardinality": 1.0,
                            **per_scene(multi_hot([[int(o)] for o in sets["train"].original[:n]], k), truth)})]
    for name, extra in methods:
        out = folder / name.replace(" ", "_")
        extra = [str(holdout) if a == "{holdout}" else a for a in extra]
        run_cli(common + extra + ["--output-dir", str(out)], folder, log)
        predicted = read_labels(out / "labels.json", paths, k)
        frames.append(pd.DataFrame({"block": block, "seed": seed, "method": name,
                                    "cardinality": predicted.sum(1).mean(), **per_scene(predicted, truth)}))
    return frames


def _table(scenes: pd.DataFrame, command: str, objects: str, px: int, seeds: int, runtime: str = "torch") -> str:
    lines = [f"### The seed's three configs and ours, each run through `labelloop relabel` "
             f"({OBJECT_TITLES[objects]} objects, {px} px{', ONNX Runtime' if runtime == 'onnx' else ''})\n",
             f"`{command}`\n",
             "Same generator and seeds as the table above. Each row is one `labelloop relabel` command per seed "
             "(subprocess; the seed's YAML through `--config`, `--max-images` overriding its num_relabel 100), "
             "its labels.json scored against the truth; every method in a block relabels the same scenes.\n",
             "| block (scenes x seeds) | method | Jaccard | precision | recall | F1 | F1 seed spread | cardinality |",
             "|---|---|---|---|---|---|---|---|"]
    for (block, method), group in scenes.groupby(["block", "method"], sort=False):
        per_seed = group.groupby("seed").f1.mean()
        n = int(len(group) / group.seed.nunique())
        spread = f"{per_seed.std(ddof=1):.3f}" if len(per_seed) > 1 else "-"
        lines.append(f"| {block}: {n} x {group.seed.nunique()} | {method} | " + " | ".join(scene_cells(group))
                     + f" | {spread} | {group.groupby('seed').cardinality.first().mean():.3f} |")
    for block, group in scenes.groupby("block", sort=False):
        lines += ["", f"Block {block}: " + target_line(group)]
    return "\n".join(lines)


def main(scenes: int = typer.Option(1000), perturbation_scenes: int = typer.Option(100),
         perturbation_seeds: int = typer.Option(0, help="run block B on the first N seeds only (0 = all)"),
         seeds: int = typer.Option(3), first_seed: int = typer.Option(1), holdout: int = typer.Option(1000),
         noise: float = typer.Option(0.1), px: int = typer.Option(224), objects: str = typer.Option("cifar10"),
         runtime: str = typer.Option("torch", help="torch | onnx: the embedder's runtime (onnx: "
                                                   "efficientnet-lite0@<px>+onnx, several times faster on CPU)"),
         write_results: bool = typer.Option(True)) -> None:
    if runtime not in ("torch", "onnx"):
        raise typer.BadParameter(f"--runtime {runtime!r}: choose torch or onnx")
    command = (f"python -m benchmarks.bench_relabel_configs --scenes {scenes} --perturbation-scenes "
               f"{perturbation_scenes} --perturbation-seeds {perturbation_seeds} --seeds {seeds} --first-seed {first_seed} --holdout {holdout} --noise {noise} "
               f"--px {px} --objects {objects} --runtime {runtime}")
    configs = {name: ["--config", str(ROOT / "configs" / file)] for name, file in SEED_CONFIGS}
    block_a = [(n, configs[n]) for n in ("seed naive", "seed MC dropout")] + [("ours", OURS)]
    block_b = [(n, configs[n]) for n, _ in SEED_CONFIGS] + [("ours", OURS)]
    frames = []
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work, open(OUT / "relabel_configs.log", "w") as log:
        for seed in range(first_seed, first_seed + seeds):
            sets, class_names = scene_sets(seed, (("train", scenes), ("holdout", holdout)), noise, objects,
                                           Path(work))
            frames += run_block("A", scenes, sets, class_names, Path(work) / f"s{seed}_A", seed, px, block_a, log, runtime)
            if perturbation_scenes and (not perturbation_seeds or seed < first_seed + perturbation_seeds):
                frames += run_block("B", perturbation_scenes, sets, class_names, Path(work) / f"s{seed}_B", seed, px,
                                    block_b, log, runtime)
            all_scenes = pd.concat(frames)
            summary = all_scenes.groupby(["block", "method", "seed"], sort=False).mean(numeric_only=True)
            summary.to_csv(OUT / "relabel_configs.csv")
            text = _table(all_scenes, command, objects, px, seeds, runtime)
            if seed + 1 < first_seed + seeds:
                text += f"\n\n(partial: {seed + 1 - first_seed} of {seeds} seeds finished)"
            if write_results:
                write_fragment("configs", text)
            typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
