"""`labelloop similar TASK --project ID --model-dir DIR`: "more like this" over a backend project's cached
embeddings (12 tasks in 3 clusters written into a MODEL_DIR the way the backend writes them)."""
from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from backend.store import Store
from labelers.cache import EmbeddingCache
from labelloop.cli import app

runner = CliRunner()


def make_model_dir(path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    store = Store(path)
    store.ensure_project("1", "efficientnet-lite0", "r0-p1")
    store.set_embedder_id("1", "fake-v1")
    store.remember_tasks("1", [(t, f"/data/{t}.png") for t in range(1, 13)])
    keys = {t: f"key{t}" for t in range(1, 13)}
    store.set_content_keys("1", keys)
    store.close()
    EmbeddingCache(path / "embeddings.sqlite3").put_many(
        "fake-v1", {keys[t]: (centres[(t - 1) // 4] + rng.normal(size=16)).astype(np.float32) for t in keys})


def run(*args):
    return runner.invoke(app, ["similar", *map(str, args)])


def test_similar_to_a_task_lists_its_cluster_first(tmp_path):
    make_model_dir(tmp_path)
    result = run("6", "--project", "1", "--model-dir", tmp_path, "--k", "3")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()[1:]]
    assert "3 nearest of 12 to task 6 (exact" in result.output
    assert sorted(int(row[-1]) for row in lines) == [5, 7, 8]  # the other three of task 6's cluster
    sims = [float(row[1]) for row in lines]
    assert sims == sorted(sims, reverse=True) and sims[0] > 0.5


def test_unknown_project_and_missing_model_dir_are_named(tmp_path):
    make_model_dir(tmp_path)
    result = run("6", "--project", "9", "--model-dir", tmp_path)
    assert result.exit_code == 2 and "project 9 is not in" in result.output and "projects: 1" in result.output
    result = run("6", "--project", "1", "--model-dir", tmp_path / "nowhere")
    assert result.exit_code == 2 and "holds no backend state" in result.output
    result = run("99", "--project", "1", "--model-dir", tmp_path)
    assert result.exit_code == 2 and "'task 99' is neither an image file nor a row name" in result.output
    result = run("6", "--project", "1", "--model-dir", tmp_path, "--embeddings", tmp_path)
    assert result.exit_code == 2 and "exactly one of --embeddings" in result.output
