"""CPU per /predict for a task's first and a repeated call, with and without the warmer's preparation.

In process (no HTTP): a project of `tasks` task rows sharing `keys` embedded images (1280-d vectors in the
embedding cache, an "ImageNet classifier" of 1000 random classes, so the prior's product has its real size)
is predicted in 100-task batches on one thread; `time.process_time` around each call is its CPU. Two cases:

- r0 (cold start): the served head is the ImageNet prior; the first /predict of a batch computes the prior's
  probabilities unless the warmer filled them (backend.prior_cache), and every call reads Store.tasks_stamp.
- mix: a version trained with label spreading over the pool's k-NN graph, then `late` tasks embedded after it:
  their first /predict searches their graph neighbours unless the warmer did (PoolScores.prepare).

The warmer's work is run synchronously where the code has it (`CacheWarmer._prepare_all`, what it does after
a retrain and, per batch, after embedding), so nothing runs in the background while a call is timed. Run
against another checkout by putting its folder first on PYTHONPATH (the "before" of a change):

    OMP_NUM_THREADS=1 PYTHONPATH=<code> python benchmarks/bench_first_predict.py --tasks 100000 --keys 2000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
XML = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
       + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
BATCH = 100


class FakeEmbedder:
    """Image-only, EfficientNet-Lite0-shaped (1280-d, an ImageNet `_fc`); never asked to embed (all cached)."""

    id = "bench-fake-1280"
    dim = 1280
    has_text = False

    def __init__(self):
        import torch

        self.model = torch.nn.Module()
        self.model._fc = torch.nn.Linear(self.dim, 1000)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            self.model._fc.weight.copy_(torch.randn(1000, self.dim, generator=generator) * 0.05)
            self.model._fc.bias.zero_()

    def preprocess(self, image):
        raise AssertionError("benchmark tasks are all cached")

    def encode_batch(self, batch):
        raise AssertionError("benchmark tasks are all cached")


def url(task_id: int) -> str:
    return f"/data/local-files/?d=imgs/{task_id}.png"


def build(model_dir: Path, tasks: int, keys: int, seed: int = 0):
    """A Runtime over `tasks` task rows of project "1" sharing `keys` cached vectors (clustered by class)."""
    from backend.config import load_settings
    from backend.runtime import Runtime

    docroot = model_dir.parent / "docroot"
    (docroot / "imgs").mkdir(parents=True, exist_ok=True)
    settings = load_settings(env={}, model_dir=model_dir, embedder="efficientnet-lite0-fake",
                             local_files_document_root=docroot, retrain_debounce_seconds=0.0, warm_cache=True)
    embedder = FakeEmbedder()
    runtime = Runtime(settings, embedder_loader=lambda spec: embedder)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), embedder.dim)).astype(np.float32)
    content = [hashlib.sha256(f"img{k}".encode()).hexdigest() for k in range(keys)]
    vectors = centres[np.arange(keys) % len(CLASSES)] + rng.normal(size=(keys, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    runtime.store.ensure_project("1", "efficientnet-lite0-fake", "efficientnet-lite0-fake-p1-r0", label_config=XML)
    runtime.store.set_embedder_id("1", embedder.id)
    for start in range(0, keys, 4096):
        runtime.cache.put_many(embedder.id, {content[k]: vectors[k] for k in range(start, min(keys, start + 4096))})
    for start in range(1, tasks + 1, 20000):
        ids = range(start, min(tasks + 1, start + 20000))
        runtime.store.remember_tasks("1", [(t, url(t)) for t in ids])
        runtime.store.set_content_keys("1", {t: content[(t - 1) % keys] for t in ids})
    return runtime, embedder, content, vectors


def task(task_id: int) -> dict:
    return {"id": task_id, "data": {"image": url(task_id)}}


def prepare(runtime) -> bool:
    """Run the warmer's preparation over every embedded task synchronously, where this code has it."""
    prepare_all = getattr(runtime.warmer, "_prepare_all", None)
    if prepare_all is None:
        return False
    prepare_all("1")
    return True


def timed_predict(runtime, task_ids) -> tuple[float, str]:
    model = runtime.model("1", XML)
    started = time.process_time()
    response = model.predict([task(t) for t in task_ids])
    return time.process_time() - started, response.model_dump_json()


def idle(runtime) -> None:
    """Wait for what the warmer's executor was given (a retrain's prepare_served), then close it: from here on
    the benchmark runs the warmer's work itself, so nothing runs in the background while a call is timed."""
    runtime.warmer._pool.shutdown(wait=True)


def first_and_again(runtime, batches: list[list[int]]) -> dict:
    firsts, agains, bodies = [], [], []
    for ids in batches:
        cpu, body = timed_predict(runtime, ids)
        firsts.append(cpu)
        bodies.append(body)
    for ids in batches:
        cpu, body = timed_predict(runtime, ids)
        agains.append(cpu)
    return {"first_ms": 1e3 * float(np.median(firsts)), "again_ms": 1e3 * float(np.median(agains)),
            "bodies_sha256": hashlib.sha256("\n".join(bodies).encode()).hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=1000, help="distinct images among the tasks")
    parser.add_argument("--late", type=int, default=200, help="tasks embedded after the mix version's graph")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--mix", action="store_true", help="also the mix case (builds a k-NN graph over --keys)")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from backend.labels import parse_label_config
    from backend.store import Annotation

    torch.set_num_threads(1)
    threadpool_limits(1)
    out = {"tasks": args.tasks, "keys": args.keys}
    with tempfile.TemporaryDirectory() as tmp:
        runtime, embedder, content, vectors = build(Path(tmp) / "model_dir", args.tasks, args.keys)
        runtime.heads.priors.get(parse_label_config(XML), embedder)  # the WordNet mapping: not measured here
        stamp = runtime.store.tasks_stamp
        started = time.process_time()
        for _ in range(200):
            stamp("1")
        out["tasks_stamp_us"] = 1e6 * (time.process_time() - started) / 200
        out["prepared"] = prepare(runtime)
        step = max(1, args.tasks // args.batches)
        out["r0"] = first_and_again(runtime, [list(range(1 + b * step, 1 + b * step + BATCH))
                                              for b in range(args.batches)])
        if args.mix:
            labelled = list(range(1, 41))  # 4 per class (task t shows image (t - 1) % keys, class by index)
            runtime.store.upsert_annotations("1", [Annotation(t, t, [{
                "from_name": "label", "to_name": "image", "type": "choices",
                "value": {"choices": [CLASSES[((t - 1) % args.keys) % len(CLASSES)]]}}]) for t in labelled])
            version, _, note = runtime.trainer.train("1")
            idle(runtime)
            out["mix_version"] = version
            rng = np.random.default_rng(1)
            late = {hashlib.sha256(f"late{k}".encode()).hexdigest(): vectors[k % args.keys]
                    + 0.3 * rng.normal(size=embedder.dim).astype(np.float32) for k in range(args.late)}
            runtime.cache.put_many(embedder.id, late)
            first_late = args.tasks + 1
            ids = list(range(first_late, first_late + args.late))
            runtime.store.remember_tasks("1", [(t, url(t)) for t in ids])
            runtime.store.set_content_keys("1", dict(zip(ids, late)))
            prepare(runtime)  # what the warmer does after embedding them (embed_new_tasks)
            out["mix_late"] = first_and_again(runtime, [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)])
        runtime.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
