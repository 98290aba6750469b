"""`labelloop train` on several processes (DDP on gloo, 2 CPU processes) and with features streamed from the
embedding cache (never the whole pool in memory)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from labelloop.cli import app
from trainers.train import TrainConfig, run

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def clusters_npz(tmp_path_factory) -> Path:
    """An .npz of 4 Gaussian classes in 16 dimensions, 800 train / 400 test rows, means about 2.2 sd apart: a small
    synthetic set a linear head learns to about 81 % from two complementary labels per row (not to 100 %)."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 0.55, (4, 16))

    def draw(n):
        y = rng.integers(0, 4, n)
        return (means[y] + rng.normal(0, 1, (n, 16))).astype(np.float32), y

    x, y = draw(800)
    tx, ty = draw(400)
    path = tmp_path_factory.mktemp("clusters") / "clusters.npz"
    np.savez(path, features=x, labels=y, test_features=tx, test_labels=ty, class_names=np.array(list("abcd")))
    return path


def train_cli(out: Path, data: Path, *extra: str) -> dict:
    """Run `labelloop train` as its own process (DDP launches its other processes from this command line);
    returns results.json's results."""
    cmd = [sys.executable, "-m", "labelloop.cli", "train", "--dataset", str(data), "--model", "linear",
           "--strategy", "FWD", "--num-cl", "2", "--epoch", "6", "--batch-size", "64", "--lr", "0.01",
           "--accelerator", "cpu", "--no-progress", "--output-dir", str(out), "--seed", "5", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())["results"]


@pytest.mark.slow
@pytest.mark.faults
def test_ddp_on_two_cpu_processes_learns_as_one_process_does(tmp_path, clusters_npz):
    one = train_cli(tmp_path / "one", clusters_npz)
    two = train_cli(tmp_path / "two", clusters_npz, "--devices", "2", "--distributed", "ddp")
    assert one["world_size"] == 1 and two["world_size"] == 2
    pids = two["process_ids"]
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids  # two real processes trained
    assert two["batch_size_per_process"] == 32  # the global batch is split, so a step sees 64 rows either way
    # Both learned (chance is 0.25; measured 0.815 and 0.8075), and agree within noise: 400 test rows at ~0.8
    # have a binomial sd of ~0.02, and the two runs see their batches in different orders; 0.06 is 3 sd.
    assert one["test_Accuracy"] > 0.6 and two["test_Accuracy"] > 0.6
    assert abs(one["test_Accuracy"] - two["test_Accuracy"]) <= 0.06
    assert (tmp_path / "two" / "checkpoints" / "best.ckpt").exists()


def test_strategy_ddp_points_to_the_distributed_flag(tmp_path, clusters_npz):
    result = runner.invoke(app, ["train", "--dataset", str(clusters_npz), "--strategy", "ddp",
                                 "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--devices N --distributed ddp" in result.output


def test_stream_features_needs_an_embedder(tmp_path, clusters_npz):
    with pytest.raises(ValueError, match="--stream-features reads frozen features from the embedding cache"):
        run(TrainConfig(data=str(clusters_npz), stream_features=True, output_dir=str(tmp_path), progress=False))


def test_streamed_features_equal_the_in_memory_run_with_bounded_rows(tmp_path, digit_folder, tiny_clip_spec,
                                                                     monkeypatch, one_torch_thread):
    from labelers.cache import EmbeddingCache

    cache = tmp_path / "cache.sqlite"

    def once(name, **extra):
        return run(TrainConfig(strategy="Ord", model="linear", data=str(digit_folder), embedder=tiny_clip_spec,
                               cache=str(cache), epoch=3, batch_size=8, lr=0.01, output_dir=str(tmp_path / name),
                               progress=False, seed=3, **extra))

    in_memory = once("memory")  # embeds the 60 digits into the cache, holding all of them
    reads = []
    get_many = EmbeddingCache.get_many

    def counted(self, embedder_id, keys):
        reads.append(len(keys))
        return get_many(self, embedder_id, keys)

    monkeypatch.setattr(EmbeddingCache, "get_many", counted)
    streamed = once("stream", stream_features=True, feature_block=16)
    # Never more than a block (16) or a batch (8) of the 60 rows at once, and every row was read.
    assert max(reads) <= 16 and sum(reads) >= 60
    assert streamed["feature_rows_held"] == 16 and in_memory["feature_rows_held"] is None
    assert streamed["best_valid"] == pytest.approx(in_memory["best_valid"], abs=1e-6)
    assert streamed["best_epoch"] == in_memory["best_epoch"]
    a = torch.load(in_memory["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    b = torch.load(streamed["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
