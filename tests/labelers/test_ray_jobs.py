"""Batch jobs on Ray Data (`--ray`) in local mode: the same results as one process, retried blocks, a killed
driver resumed without duplicates or losses, a pool that leaves CPU for Ray Data, and no Ray without --ray."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelers.ray_jobs import RayOptions, RayRunError, map_batches, pool_size, ray_options

ROOT = Path(__file__).resolve().parents[2]
TINY_COCO = Path("/work/shared/data/tiny-coco/small_coco")


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray with 2 CPUs, started once (a start costs seconds) for this module, the session's only Ray
    tests, and shut down after it, so later tests do not fork a process that holds Ray's threads; its address."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # loopback only: nothing to report to
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def app():
    from labelloop.cli import app

    return app


def invoke(app, *args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """20 CIFAR-10 images as root/<class>/<file>, and one unreadable file among them."""
    from labelers.sample_data import cifar10_subset

    root = tmp_path_factory.mktemp("ray_images") / "folder"
    paths, _ = cifar10_subset("test", per_class=2)
    for path in paths:
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / path.parent.name / path.name)
    (root / paths[0].parent.name / "broken.png").write_bytes(b"not an image")
    return root


# -- the pool: sized from the cluster, never on every CPU --------------------------------------------------

@pytest.mark.parametrize("resources, options, actors", [
    ({"CPU": 2}, RayOptions(), 1),                                   # one CPU left for Ray Data's tasks
    ({"CPU": 16}, RayOptions(actors=4), 4),
    ({"CPU": 32, "GPU": 12}, RayOptions(gpus_per_actor=1), 12),      # the seed's 12-GPU case
    ({"CPU": 32, "GPU": 4}, RayOptions(gpus_per_actor=0.5), 8),
])
def test_pool_size(resources, options, actors):
    assert pool_size(options, resources) == actors


@pytest.mark.parametrize("resources, options, message", [
    ({"CPU": 2}, RayOptions(actors=2), "would take every CPU"),
    ({"CPU": 1}, RayOptions(), "at least 2"),
    ({"CPU": 32, "GPU": 4}, RayOptions(actors=5, gpus_per_actor=1), "at most 4 actors"),
    ({"CPU": 8}, RayOptions(gpus_per_actor=1), "has 0 GPU"),
])
def test_pool_size_refuses_what_would_hang_or_never_start(resources, options, message):
    with pytest.raises(RayRunError, match=message):
        pool_size(options, resources)


def test_ray_flags_without_ray_are_refused():
    assert ray_options(False, None, None, 0.0) is None
    with pytest.raises(ValueError, match="--actors only apply with --ray"):
        ray_options(False, None, 3, 0.0)
    assert ray_options(True, "head:6379", 3, 1.0) == RayOptions("head:6379", 3, 1.0)


# -- retries ---------------------------------------------------------------------------------------------

def _fails_once_per_batch(marker_dir: str, how: str):
    """A per-batch function that fails the first time it sees each batch: its process dies, or it raises."""
    def square(batch):
        marker = Path(marker_dir) / f"seen-{batch[0]}"
        if not marker.exists():
            marker.touch()
            if how == "die":
                os._exit(1)  # the actor's process is gone mid-block
            raise RuntimeError("a transient failure")
        return [x * x for x in batch]
    return square


@pytest.mark.parametrize("how", ["die", "raise"])
def test_a_failed_block_is_retried(ray_address, tmp_path, how):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    batches = [[1, 2], [3, 4], [5]]
    results = list(map_batches(batches, _fails_once_per_batch, (str(tmp_path), how), RayOptions()))
    assert results == [[1, 4], [9, 16], [25]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen-1", "seen-3", "seen-5"]  # each failed once


def _fails_on_batch_3():
    def square(batch):
        if batch[0] == 3:
            raise ValueError("image 3 is cursed")
        return [x * x for x in batch]
    return square


def test_a_block_that_keeps_failing_stops_the_run_naming_its_error(ray_address):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    handed = []
    with pytest.raises(RayRunError, match="image 3 is cursed") as raised:
        for result in map_batches([[1, 2], [3, 4], [5]], _fails_on_batch_3, (), RayOptions()):
            handed.append(result)
    # Ray aborts the dataset on the failure: a batch done but not yet handed over is redone by a resume.
    assert handed in ([], [[1, 4]]) and "run the command again to resume" in str(raised.value)


# -- embed: the same vectors per key, cached keys skipped ---------------------------------------------------

def test_embed_on_ray_gives_the_single_process_vectors(app, ray_address, image_folder, tiny_clip_spec, tmp_path):
    common = ["embed", image_folder, "--embedder", tiny_clip_spec, "--batch-size", 8]
    invoke(app, *common, "-o", tmp_path / "one.npz", "--cache", tmp_path / "one.sqlite")
    invoke(app, *common, "-o", tmp_path / "ray.npz", "--cache", tmp_path / "ray.sqlite", "--ray")
    one, on_ray = np.load(tmp_path / "one.npz"), np.load(tmp_path / "ray.npz")
    assert list(on_ray["names"]) == list(one["names"]) and len(one["names"]) == 20  # the broken file left out
    np.testing.assert_array_equal(on_ray["features"], one["features"])
    np.testing.assert_array_equal(on_ray["labels"], one["labels"])


def test_embed_on_ray_skips_what_the_cache_holds(ray_address, image_folder, tiny_clip_spec, tmp_path):
    from labelers.cache import EmbeddingCache, embed_files
    from labelers.embedders import make_embedder
    from labelers.ray_jobs import embed_files_on_ray

    embedder = make_embedder(tiny_clip_spec)
    embedder.spec = tiny_clip_spec
    paths = sorted(p for p in image_folder.rglob("*") if p.is_file())
    good = [p for p in paths if p.name != "broken.png"]
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    first = embed_files(embedder, cache, good[:8], batch_size=4)   # a run stopped after 8 images
    rest = embed_files_on_ray(embedder, cache, paths, 4, RayOptions())
    assert first.computed == 8 and rest.computed == len(good) - 8
    assert cache.count(embedder.id) == len(good)
    single = embed_files(embedder, None, paths, batch_size=4)
    np.testing.assert_array_equal(rest.ok, single.ok)
    np.testing.assert_allclose(rest.features[rest.ok], single.features[single.ok], rtol=0, atol=1e-6)
    assert set(rest.errors) == set(single.errors)


# -- label: the same labels and probabilities -------------------------------------------------------------

def _records(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "labels.jsonl").read_text().splitlines()]
    return {(r["image"], r["round"]): r for r in records}, len(records)


def _same_labels(a: Path, b: Path):
    (ra, na), (rb, nb) = _records(a), _records(b)
    assert na == len(ra) and nb == len(rb) and set(ra) == set(rb)   # no (image, round) twice, none missing
    for key in ra:
        assert rb[key]["label"] == ra[key]["label"] and rb[key]["candidates"] == ra[key]["candidates"]
        np.testing.assert_allclose(rb[key]["option_probs"], ra[key]["option_probs"], rtol=0, atol=1e-6)
    assert (b / "auto_labels.csv").read_text() == (a / "auto_labels.csv").read_text()


@pytest.mark.parametrize("mode", ["ordinary", "complementary"])
def test_label_on_ray_gives_the_single_process_labels(app, ray_address, image_folder, tiny_vlm_dirs, tmp_path, mode):
    common = ["label", image_folder, "--mode", mode, "--model", tiny_vlm_dirs["qwen2-vl"], "--batch-size", 8,
              "--device", "cpu", "--no-progress"]
    if mode == "complementary":
        common.append("--no-balance")
    invoke(app, *common, "--output-dir", tmp_path / "one")
    invoke(app, *common, "--output-dir", tmp_path / "ray", "--ray")
    _same_labels(tmp_path / "one", tmp_path / "ray")
    assert len(_records(tmp_path / "one")[0]) == 20 * (3 if mode == "complementary" else 1)


def test_label_on_ray_refuses_balanced_complementary_labels(app, image_folder, tiny_vlm_dirs, tmp_path):
    result = CliRunner().invoke(app, ["label", str(image_folder), "--mode", "complementary", "--model",
                                      str(tiny_vlm_dirs["qwen2-vl"]), "--ray", "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--no-balance" in result.output
    assert not (tmp_path / "r").exists()


def test_a_killed_driver_resumes_without_duplicates_or_losses(app, ray_address, image_folder, tiny_vlm_dirs,
                                                             tmp_path):
    common = ["label", image_folder, "--model", tiny_vlm_dirs["qwen2-vl"], "--batch-size", 1, "--device", "cpu",
              "--no-progress"]
    invoke(app, *common, "--output-dir", tmp_path / "one")
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    driver = subprocess.Popen([sys.executable, "-m", "labelloop.cli", *map(str, common), "--output-dir", killed,
                               "--ray", "--ray-address", ray_address], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jsonl, deadline = killed / "labels.jsonl", time.monotonic() + 120
    while not (jsonl.exists() and jsonl.read_text().count("\n") >= 2):
        assert driver.poll() is None, "the driver exited before writing two batches"
        assert time.monotonic() < deadline, "the driver wrote nothing in 120 s"
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    written = jsonl.read_text().count("\n")
    assert 2 <= written < 20, f"the kill came after the run ({written} of 20 images written)"
    invoke(app, *common, "--output-dir", killed, "--ray", "--resume")
    _same_labels(tmp_path / "one", killed)


# -- pseudo-label: the same COCO output -------------------------------------------------------------------

def test_pseudo_label_on_ray_gives_the_single_process_coco(app, ray_address, tiny_vlm_dirs, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("questions:\n  min_object_prob: 0.0\nfelzenszwalb:\n  scale: 2000\n  min_size: 2000\n")
    common = ["pseudo-label", TINY_COCO / "instances_train2017_small.json", "--images-root",
              TINY_COCO / "train_2017_small", "--proposer", "felzenszwalb", "--model", tiny_vlm_dirs["qwen2-vl"],
              "--config", config, "--labels", "dog,lamp,stick", "--device", "cpu", "--end", 3, "--batch-size", 2]
    invoke(app, *common, "--output-dir", tmp_path / "one")
    invoke(app, *common, "--output-dir", tmp_path / "ray", "--ray")
    one = json.loads((tmp_path / "one" / "instances.json").read_text())
    on_ray = json.loads((tmp_path / "ray" / "instances.json").read_text())
    assert one["annotations"], "the single-process run found no boxes: the comparison would be empty"
    scores = [[a.pop("score") for a in coco["annotations"]] for coco in (one, on_ray)]
    np.testing.assert_allclose(scores[1], scores[0], rtol=0, atol=1e-6)
    assert on_ray == one
    for name in ("raw.json", "ls_tasks.json"):
        assert (tmp_path / "ray" / name).exists()


# -- without --ray nothing imports Ray --------------------------------------------------------------------

def test_without_ray_flag_no_module_imports_ray(image_folder, tiny_clip_spec, tmp_path):
    script = f"""
import importlib, pkgutil, sys
import labelers, trainers, backend
for package in (labelers, trainers, backend):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(("cli", "ray_flags")):
            importlib.import_module(info.name)
from typer.testing import CliRunner
from labelloop.cli import app
result = CliRunner().invoke(app, ["embed", {str(image_folder)!r}, "-o", {str(tmp_path / 'e.npz')!r},
                                  "--embedder", {tiny_clip_spec!r}, "--cache", {str(tmp_path / 'c.sqlite')!r}])
assert result.exit_code == 0, result.output
print(sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
"""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "e.npz").exists()


# -- relabel: the same label sets -------------------------------------------------------------------------

def test_relabel_on_ray_gives_the_single_process_label_sets(app, ray_address, image_folder, tiny_clip_spec, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder, ignore=shutil.ignore_patterns("broken.png"))
    common = ["relabel", "--data", folder, "--embedder", tiny_clip_spec, "--rounds", 1, "--confidence", "naive",
              "--regions", "random", "--num-crops", 2, "--label", "threshold", "--threshold", 0.2]
    invoke(app, *common, "--output-dir", tmp_path / "one", "--cache", tmp_path / "one.sqlite")
    invoke(app, *common, "--output-dir", tmp_path / "ray", "--cache", tmp_path / "ray.sqlite", "--ray")
    one = json.loads((tmp_path / "one" / "labels.json").read_text())
    assert len(one["data"]) == 20
    assert json.loads((tmp_path / "ray" / "labels.json").read_text()) == one
    suggestions = [json.loads((tmp_path / run / "suggestions_ls.json").read_text()) for run in ("one", "ray")]
    assert suggestions[1] == suggestions[0]
