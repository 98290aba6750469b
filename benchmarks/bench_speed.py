"""Hot paths as ratios to the machine's own limit, each measured side by side with today's code in one run.

    python -m benchmarks.bench_speed [--images 256] [--pool 1000000] [--stream 200000] [--threads 1] [--write]

1. Embedding: one image at a time, today's batched path (batches of 64, NCHW) and the new one (channels-last,
   batches of 128) on the same CIFAR-10 images; limit = the new model's forward alone on ready tensors.
2. Pool scoring: a 1M x 512 pool, 100 classes, margin: `score_pool` now and as it was (chunked addmm,
   log-softmax, top-k), against the limit: one float32 GEMM of the same shape with the same threads. Then
   the same pool size streamed from the embedding cache (`score_blocks` over `EmbeddingCache.iter_blocks`).
3. Head retrain on 10k labeled embeddings, calibration included: today's path (fit from the prior, 3 folds
   each solved from the prior) vs warm-started from the previous head (9,900 labels) with folds started at
   the full fit, now and as landed before (warm fit to a fixed gtol 1e-6); limit = one evaluation of the
   objective (the two products with the features).
4. /predict p99 at 8 clients of 100-task batches: today's serving (multi-threaded BLAS per request, the
   ImageNet prior over all 1000 classes) vs the new one, twice (same code in two servers: the noise floor);
   beside the latencies, each server process's CPU per request (/proc), which the machine's load moves least.
5. VLM option scoring on the tiny random Qwen2-VL and LLaVA-NeXT: one sequence per option (today) vs one
   shared prefill per image; a 7B estimate from the token counts.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int = 1) -> float:
    """Best-of-`repeats` wall time of fn() in seconds (best-of damps a noisy shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved(variants: dict, rounds: int) -> dict[str, float]:
    """Best time per variant over `rounds` rounds, the variants run in a rotating order each round."""
    names, best = list(variants), {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            best[name] = min(best.get(name, float("inf")), timed(variants[name]))
    return best


# -- 1. embedding ------------------------------------------------------------------------------------------------
def frozen_forward(embedder, example: torch.Tensor):
    """The embedder's pooled forward traced, frozen and `optimize_for_inference`d (oneDNN fusions): a function
    of a batch, for the forward-alone comparison."""
    with torch.inference_mode():
        module = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            embedder.pooled, example.contiguous(memory_format=torch.channels_last))))

    def forward(batch):
        with torch.inference_mode():
            return module(batch.contiguous(memory_format=torch.channels_last))
    return forward


def bench_embedding(n_images: int, spec: str, rounds: int) -> dict:
    """Every way of embedding the same CIFAR-10 files, interleaved: one image at a time (today's torch, NCHW),
    today's batched path, the torch path with channels-last and read-ahead decoding, the ONNX Runtime path
    (serial and read-ahead), and the limits: each model's forward alone on decoded tensors, plus decoding alone."""
    from labelers.cache import embed_files
    from labelers.embedders import EfficientNetLite0Embedder
    from labelers.images import load_image
    from labelers.sample_data import cifar10_subset

    px = int(spec.partition("@")[2].partition("+")[0] or 224)
    today = EfficientNetLite0Embedder(px, "cpu", channels_last=False)
    new, onnx = EfficientNetLite0Embedder(px, "cpu"), EfficientNetLite0Embedder(px, "cpu", runtime="onnx")
    paths, _ = cifar10_subset("test", max(1, -(-n_images // 10)))
    paths = paths[:n_images]
    ready = torch.stack([new.preprocess(load_image(p)) for p in paths])
    frozen = frozen_forward(new, ready[:8])
    batches = [ready[s:s + 128] for s in range(0, len(ready), 128)]
    out = {}
    times = interleaved({
        "one_by_one": lambda: [today.encode_images([load_image(p)]) for p in paths],
        "today": lambda: out.__setitem__("today", embed_files(today, None, paths, batch_size=64, num_workers=0)),
        "torch": lambda: out.__setitem__("torch", embed_files(new, None, paths)),
        "onnx_serial": lambda: embed_files(onnx, None, paths, num_workers=0),
        "onnx": lambda: out.__setitem__("onnx", embed_files(onnx, None, paths)),
        "onnx_workers": lambda: embed_files(onnx, None, paths, num_workers=2),
        "forward": lambda: [new.encode_batch(b) for b in batches],
        "forward_frozen": lambda: [frozen(b) for b in batches],
        "forward_onnx": lambda: [onnx.encode_batch(b) for b in batches],
        "decode": lambda: [new.preprocess(load_image(p)) for p in paths],
    }, rounds)
    reference = out["today"].features
    scale = float(np.abs(reference).max())
    return {"images": len(paths), "embedder": new.id, "threads": torch.get_num_threads(),
            **{f"{k}_s": v for k, v in times.items()},
            "max_abs_diff": float(np.abs(out["torch"].features - reference).max()),
            "onnx_max_rel_diff": float(np.abs(out["onnx"].features - reference).max()) / scale}


# -- 2. pool scoring ---------------------------------------------------------------------------------------------
def todays_score_pool(head, features: np.ndarray, chunk_size: int = 65536) -> np.ndarray:
    """The margin scores as `score_pool` computed them before (chunked addmm, /T, log-softmax, top-k)."""
    score = np.empty(len(features))
    weight_t, bias = head.weight.T.contiguous(), head.bias
    with torch.inference_mode():
        for start in range(0, len(features), chunk_size):
            x = torch.from_numpy(np.ascontiguousarray(features[start:start + chunk_size], dtype=np.float32))
            log_p = torch.log_softmax(torch.addmm(bias, x, weight_t) / head.temperature, dim=1)
            top2 = log_p.topk(2, dim=1).values.exp()
            score[start:start + len(x)] = (top2[:, 0] - top2[:, 1]).numpy()
    return score


def pool_head(dim: int, classes: int):
    from labelers.head import ClassifierHead

    rng = np.random.default_rng(0)
    head = ClassifierHead([f"c{i}" for i in range(classes)]).init_from_text(rng.normal(size=(classes, dim)), 10.0)
    head.temperature = 1.3
    return head


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def gemm(features: np.ndarray, head):
    """The machine's limit: one float32 GEMM of the pool with the (D, K) weights into an output allocated (and
    its pages touched) once, outside the timing. Returns the function to time."""
    out, x, weight_t = torch.zeros(len(features), head.n_classes), torch.from_numpy(features), head.weight.T.contiguous()
    return lambda: torch.mm(x, weight_t, out=out)


def cpu_timed(fn, cpu: dict, name: str):
    """fn wrapped to keep its best process CPU time in cpu[name]: with one torch thread that is the work done,
    which a machine shared by many jobs stretches far less than the wall time."""
    def run():
        start = time.process_time()
        fn()
        cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - start)
    return run


def bench_scoring(pool: int, rounds: int, dim: int = 512, classes: int = 100) -> dict:
    from labelers.pool_scoring import score_pool

    features, head = unit_rows(pool, dim, 0), pool_head(dim, classes)
    got, cpu = {}, {}
    variants = {
        "gemm": gemm(features, head),
        "new": lambda: got.__setitem__("new", score_pool(head, features, "margin").score),
        "today": lambda: got.__setitem__("today", todays_score_pool(head, features)),
    }
    if torch.get_num_threads() > 1:  # the same blocks on the caller's thread, torch's intra-op threads splitting each op
        variants["intra_op"] = lambda: score_pool(head, features, "margin", threads=1)
    times = interleaved({name: cpu_timed(fn, cpu, name) for name, fn in variants.items()}, rounds)
    return {"pool": pool, "dim": dim, "classes": classes, "threads": torch.get_num_threads(),
            **{f"{k}_s": v for k, v in times.items()}, **{f"{k}_cpu_s": v for k, v in cpu.items()},
            "max_abs_diff": float(np.abs(got["new"] - got["today"]).max())}


def todays_blocks(cache, embedder_id: str, keys, block_rows: int = 8192):
    """`EmbeddingCache.iter_blocks` as it read before the sidecar: `get_many` (SQLite blobs) per block, the next
    block read in a thread."""
    from labelers.cache import read_ahead

    def read(chunk):
        found = cache.get_many(embedder_id, chunk)
        return np.stack([found[key] for key in chunk])

    return read_ahead(read(keys[s:s + block_rows]) for s in range(0, len(keys), block_rows))


def bench_streaming(n: int, rounds: int, dim: int = 512, classes: int = 100) -> dict:
    """Score `n` vectors read block by block from an embedding cache file vs the same pool in memory: today's
    SQLite blob reads, the sidecar matrix in the stored order and shuffled, each from a freshly opened cache."""
    from labelers.cache import EmbeddingCache
    from labelers.pool_scoring import score_blocks, score_pool

    features, head = unit_rows(n, dim, 1), pool_head(dim, classes)
    keys = [f"{i:064x}" for i in range(n)]  # content keys are 64 hex digits
    shuffled = np.random.default_rng(2).permutation(n)
    shuffled_keys = [keys[i] for i in shuffled]
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks" / ".work") as tmp:
        path = Path(tmp) / "pool.sqlite3"
        cache = EmbeddingCache(path)
        for start in range(0, n, 20000):
            cache.put_many("bench", dict(zip(keys[start:start + 20000], features[start:start + 20000])))
        first_use = timed(lambda: sum(len(b) for b in cache.iter_blocks("bench", keys)))  # mirrors SQLite
        got, cpu = {}, {}

        def streamed(name, order, reopen=False):
            if reopen:  # the sidecar opened afresh: mapping the files and indexing their keys included
                cache._sidecar = None
            got[name] = score_blocks(head, cache.iter_blocks("bench", order), n, "margin")

        variants = {
            "gemm": gemm(features, head),
            "memory": lambda: got.__setitem__("memory", score_pool(head, features, "margin")),
            "today": lambda: got.__setitem__("today", score_blocks(head, todays_blocks(cache, "bench", keys), n,
                                                                   "margin")),
            "streamed": lambda: streamed("streamed", keys),
            "streamed_reopened": lambda: streamed("reopened", keys, reopen=True),
            "shuffled": lambda: streamed("shuffled", shuffled_keys),
            "read_only": lambda: sum(len(b) for b in cache.iter_blocks("bench", keys)),
            "today_read_only": lambda: sum(len(b) for b in todays_blocks(cache, "bench", keys)),
        }
        # CPU time beside the wall time: on the shared machine the load stretches the wall time of whichever
        # variant it hits; the CPU (the read-ahead thread's included) says what the streaming itself costs
        times = interleaved({name: cpu_timed(fn, cpu, name) for name, fn in variants.items()}, rounds)
    equal = bool(np.array_equal(got["memory"].score, got["streamed"].score)
                 and np.array_equal(got["memory"].score, got["today"].score)
                 and np.array_equal(got["memory"].score, got["reopened"].score)
                 and np.array_equal(got["memory"].score[shuffled], got["shuffled"].score))
    return {"rows": n, "threads": torch.get_num_threads(), **{f"{k}_s": v for k, v in times.items()},
            **{f"{k}_cpu_s": v for k, v in cpu.items()}, "first_use_s": first_use, "equal": equal}


# -- 3. head retrain ---------------------------------------------------------------------------------------------
def todays_fit(names, features, labels):
    """The head as `fit` trained it before: from the prior, then 3 calibration folds each from the prior."""
    from labelers.head import ClassifierHead

    head = ClassifierHead(names, calibrate=False).fit(features, labels)
    head.temperature = head._cross_validated_temperature(features, labels)  # folds from the prior, float64
    return head


def landed_warm_fit(names, features, labels, previous):
    """The warm-started fit as it landed before (1.05 s in benchmarks/results/bench_speed.json): the full fit
    from `previous` in float64 to gtol 1e-6, then the held-out third started at it (float32, FOLD_GTOL)."""
    from labelers.head import ClassifierHead

    head = ClassifierHead(names)
    init = (previous.weight.numpy(), previous.bias.numpy(), previous.prior_gain)
    weight, bias, gain = head._solve(features, labels, init)
    head.temperature = head._cross_validated_temperature(features, labels, (weight, bias, gain))
    head.weight, head.bias, head.prior_gain = torch.from_numpy(weight), torch.from_numpy(bias), gain
    head.n_trained = len(features)
    return head


def expected_calibration_error(probs: np.ndarray, y: np.ndarray) -> float:
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    bins = np.clip((confidence * 10).astype(int), 0, 9)
    return float(sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean()
                     for b in range(10) if (bins == b).any()))


def bench_head(rounds: int, n: int = 10_000, previous: int = 9_900, dim: int = 1280, classes: int = 10) -> dict:
    from threadpoolctl import threadpool_limits

    from labelers.head import ClassifierHead

    rng = np.random.default_rng(0)
    centers = 0.08 * rng.normal(size=(classes, dim))  # overlapping classes (~79 % accuracy): calibration matters
    labels = rng.integers(0, classes, n + 2000)
    features = (centers[labels] + rng.normal(size=(n + 2000, dim))).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    x, y, test_x, test_y = features[:n], labels[:n], features[n:], labels[n:]
    names = [f"c{i}" for i in range(classes)]
    before = ClassifierHead(names).fit(x[:previous], y[:previous])  # the version being replaced
    got = {}
    times = interleaved({
        "today": lambda: got.__setitem__("today", todays_fit(names, x, y)),
        "today_uncalibrated": lambda: ClassifierHead(names, calibrate=False).fit(x, y),
        "landed": lambda: got.__setitem__("landed", landed_warm_fit(names, x, y, before)),
        "new": lambda: got.__setitem__("new", ClassifierHead(names).fit(x, y, warm_start=before)),
        "new_cold": lambda: ClassifierHead(names).fit(x, y),
    }, rounds)
    objective, start, _ = ClassifierHead(names)._training_problem(x, y)
    objective32, start32, _ = ClassifierHead(names)._training_problem(x, y, dtype=np.float32)
    with threadpool_limits(1):
        evaluation = timed(lambda: objective(start), repeats=3)
        evaluation32 = timed(lambda: objective32(start32), repeats=3)
    today, new, landed = got["today"], got["new"], got["landed"]
    # Objective evaluations per L-BFGS solve (the full fit, then the calibration's held-out third).
    evaluations = {"landed": landed_warm_fit(names, x, y, before).solver_evaluations,
                   "new": ClassifierHead(names).fit(x, y, warm_start=before).solver_evaluations}
    uncalibrated = ClassifierHead(names, calibrate=False).fit(x, y, warm_start=before)
    return {"labeled": n, "previous": previous, "dim": dim, **{f"{k}_s": v for k, v in times.items()},
            "evaluation_s": evaluation, "evaluation_f32_s": evaluation32, "evaluations": evaluations,
            "t_today": today.temperature, "t_landed": landed.temperature, "t_new": new.temperature,
            "accuracy": float((new.predict(test_x) == test_y).mean()),
            "accuracy_landed": float((landed.predict(test_x) == test_y).mean()),
            "ece_landed": expected_calibration_error(landed.predict_proba(test_x), test_y),
            "max_prob_diff_landed": float(np.abs(landed.predict_proba(test_x) - new.predict_proba(test_x)).max()),
            "ece_uncalibrated": expected_calibration_error(uncalibrated.predict_proba(test_x), test_y),
            "ece_today": expected_calibration_error(today.predict_proba(test_x), test_y),
            "ece_new": expected_calibration_error(new.predict_proba(test_x), test_y),
            "max_prob_diff": float(np.abs(today.predict_proba(test_x) - new.predict_proba(test_x)).max())}


def head_row(h: dict) -> str:
    """The head-retrain row of the table (figures from `bench_head`)."""
    landed = ""
    if "landed_s" in h:  # runs saved before the landed variant was measured have no such figures
        ev = h["evaluations"]
        landed = (f"; as landed before, warm start in float64 to gtol 1e-6: **{h['landed_s']:.2f} s**, "
                  f"{' + '.join(map(str, ev['landed']))} objective evaluations (fit + held-out third) against "
                  f"{' + '.join(map(str, ev['new']))} now, T {h['t_landed']:.4f}, accuracy {h['accuracy_landed']:.3f}, "
                  f"ECE {h['ece_landed']:.3f}, max probability diff to new {h['max_prob_diff_landed']:.1e}")
    f32 = f", float32 {h['evaluation_f32_s']:.3f} s" if "evaluation_f32_s" in h else ""
    return (f"| retrain the head, {h['labeled']:,} labeled {h['dim']}-d embeddings, with temperature calibration "
            f"(accuracy {h['accuracy']:.3f}; T today {h['t_today']:.4f}, new {h['t_new']:.4f}; ECE on 2,000 held-out: "
            f"uncalibrated {h['ece_uncalibrated']:.3f}, today {h['ece_today']:.3f}, new {h['ece_new']:.3f}; max "
            f"probability diff {h['max_prob_diff']:.1e}{landed}) | {h['today_s']:.2f} s "
            f"({h['today_uncalibrated_s']:.2f} s uncalibrated) | **{h['new_s']:.2f} s** warm-started from the "
            f"{h['previous']:,}-label head ({h['new_cold_s']:.2f} s from the prior) | {h['evaluation_s']:.3f} s (one "
            f"objective evaluation in float64{f32}) | {h['new_s'] / h['evaluation_s']:.0f} evaluations' worth | "
            f"{h['today_s'] / h['new_s']:.1f} |")


def head_reading(h: dict) -> str:
    """The head-retrain sentence of the section's reading (figures from `bench_head`)."""
    met = "met" if h["new_s"] <= 1.0 else "not met here"
    landed = f", {h['landed_s']:.2f} s as landed before" if "landed_s" in h else ""
    return (f"Head retrain with calibration {h['new_s']:.2f} s vs {h['today_s']:.2f} s today{landed} (target <= 1 s, "
            f"{met}: {h['new_s'] / h['evaluation_s']:.0f} float64 objective evaluations' worth at "
            f"{h['evaluation_s'] * 1e3:.0f} ms each; the warm start now stops at a gradient relative to the one it "
            "started from; the *today* column already runs on the one-pass objective, so it understates the change).")


# -- 4. /predict -------------------------------------------------------------------------------------------------
TODAY_REV = "25a1bc4d485351c4b9283e17acaf765591a3dbeb"  # the serving code before the p99 work of issue 13


def code_at(rev: str, into: Path) -> Path:
    """Return a folder holding the backend's importable packages as they were at git revision `rev`
    (extracted once with `git archive`). Raises CalledProcessError when `rev` is not in this clone."""
    import subprocess

    folder = into / f"code-{rev[:12]}"
    if not (folder / "backend" / "app.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "backend", "labelers", "trainers", "labelloop", "configs"],
                                 cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def serve(variant: str) -> None:
    """Run one /predict server: "new" (this code) or "code:<folder>" (the packages in that folder, e.g. today's
    code from `code_at`; imported from there because nothing of the backend is imported before this line)."""
    import os

    if variant.startswith("code:"):
        sys.path.insert(0, variant.removeprefix("code:"))
    import uvicorn

    from backend.app import create_app

    uvicorn.run(create_app(), host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")


def bench_predict(clients: int, requests: int, rounds: int, real: int, today_rev: str = TODAY_REV) -> dict:
    """p50/p99 of /predict (100-task batches from `clients` threads) for today's code (git `today_rev`) and this
    code twice, one server each on copies of one prepared MODEL_DIR, `rounds` rounds in rotating order."""
    import shutil

    from benchmarks import bench_backend as bb

    base = REPO / "benchmarks" / ".work" / "bench_speed_predict"
    files_root, files = bb.prepare(base, real, 100)
    today = code_at(today_rev, REPO / "benchmarks" / ".work")
    servers = {}
    try:
        for name in ("today", "new", "new_again"):
            shutil.copytree(base / "prepared", base / name)
            servers[name] = bb.Server(f"code:{today}" if name == "today" else "new", base / name, files_root,
                                      module="benchmarks.bench_speed")
            servers[name].setup(bb.REAL_PROJECT)
        tasks = bb.real_tasks(files)
        latencies = {name: [] for name in servers}
        cpu = {name: 0.0 for name in servers}  # the server process's CPU seconds over the timed calls
        for name, server in servers.items():  # warm: the head, the prior, the SQLite pages
            bb.predict_load(server, tasks, clients, 2, 100)
        for r in range(rounds):
            for name in bb.rotated(list(servers), r):
                before = process_cpu_s(servers[name].proc.pid)
                latencies[name] += bb.predict_load(servers[name], tasks, clients, requests, 100)["latency"]
                cpu[name] += process_cpu_s(servers[name].proc.pid) - before
    finally:
        for server in servers.values():
            server.stop()
    return {"clients": clients, "requests": len(latencies["new"]), "today_rev": today_rev,
            **{f"{name}_p{q}_ms": 1e3 * bb.percentile(values, q) for name, values in latencies.items()
               for q in (50, 99)},
            **{f"{name}_cpu_ms": 1e3 * cpu[name] / len(latencies[name]) for name in servers}}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process `pid` has used: unlike latency, barely moved by the
    other processes sharing the machine. Linux /proc; clock-tick resolution (10 ms), so read over many calls."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def predict_row(p: dict) -> str:
    """The /predict row of the speed table."""
    cpu = (f"; server CPU per request today {p['today_cpu_ms']:.1f} ms, new {p['new_cpu_ms']:.1f} / "
           f"{p['new_again_cpu_ms']:.1f} ms" if "new_cpu_ms" in p else "")
    return (f"| `/predict` p99, 100-task batches, {p['clients']} clients on 1,000 CIFAR-10 tasks with the ImageNet "
            f"prior (today: the code at {p.get('today_rev', 'the previous revision')[:7]}; new: auth and response "
            "without thread-pool hops, the project and its label config read once per request, the prior's "
            "probabilities and the recent embeddings kept per image, the cold-start pool re-read only when the "
            "project's tasks change, long-lived objects frozen for the GC) "
            f"({p['requests']} requests per variant; p50 today {p['today_p50_ms']:.0f}, new {p['new_p50_ms']:.0f} / "
            f"{p['new_again_p50_ms']:.0f} ms{cpu}) | {p['today_p99_ms']:.0f} ms | **{p['new_p99_ms']:.0f} ms** "
            f"(same code, second server: {p['new_again_p99_ms']:.0f} ms = noise floor "
            f"{p['new_again_p99_ms'] / p['new_p99_ms']:.2f}) | - | - | {p['today_p99_ms'] / p['new_p99_ms']:.1f} |")


def predict_reading(p: dict) -> str:
    """The /predict sentence of the reading under the table."""
    cpu = (f"; per request the server spends {p['new_cpu_ms']:.1f} ms of CPU, today's {p['today_cpu_ms']:.1f} ms "
           f"({p['today_cpu_ms'] / p['new_cpu_ms']:.1f}x less: the figure the machine's load moves least)"
           if "new_cpu_ms" in p else "")
    return (f"/predict p99 {p['new_p99_ms']:.0f} ms vs {p['today_p99_ms']:.0f} ms (target <= 200 ms; the two servers "
            f"running the same new code differ by {abs(1 - p['new_again_p99_ms'] / p['new_p99_ms']):.0%}, so on "
            f"this machine only the ratio is meaningful){cpu}.")


# -- 5. VLM option scoring ---------------------------------------------------------------------------------------
def bench_vlm(n_images: int, rounds: int) -> dict:
    from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset
    from labelers.images import load_image
    from labelers.vlm.labeler import VLMLabeler
    from labelers.vlm.prompting import chat_prompt, make_question
    from labelers.vlm.scoring import _encode, _score_sequences, _score_shared_prefix, answer_token_ids
    from labelers.vlm.tiny import BUILDERS

    paths, _ = cifar10_subset("test", max(1, -(-n_images // 10)))
    images = [load_image(p) for p in paths[:n_images]]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in BUILDERS.items():
            labeler = VLMLabeler.from_pretrained(str(build(Path(tmp) / name)), device="cpu")
            vlm = labeler.vlm
            question = make_question("ordinary", list(range(10)), CIFAR10_CLASSES)
            prompt = chat_prompt(vlm.processor, question, labeler.settings.prompts)
            answers = [f" {c} ." for c in CIFAR10_CLASSES]  # whole class names: a few tokens each
            prompts, rows = [prompt] * len(images), [answers] * len(images)
            ids = [[answer_token_ids(vlm.tokenizer, p, a) for a in row] for p, row in zip(prompts, rows)]
            got = {}
            times = interleaved({
                "today": lambda: got.__setitem__("today", _score_sequences(vlm, images, prompts, rows, ids, 8)),
                "new": lambda: got.__setitem__("new", _score_shared_prefix(vlm, images, prompts, ids, 8)),
            }, rounds)
            encoded = _encode(vlm, [prompt], images[:1])["input_ids"][0]
            config = vlm.model.config
            image_token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index")
            answer_tokens = [len(a) for a in ids[0]]
            out[name] = {**{f"{k}_s": v for k, v in times.items()}, "prefix_tokens": int(len(encoded)),
                         "image_tokens": int((encoded == image_token).sum()), "images": len(images),
                         "answer_tokens": answer_tokens, "options": len(answers),
                         "max_abs_diff": float(np.abs(np.vstack(got["new"]) - np.vstack(got["today"])).max())}
    return out


def token_ratio(prefix: int, answer_tokens: list[int]) -> float:
    """Tokens through the model per image: one sequence per option vs one prefix plus the options' tokens."""
    return sum(prefix + a for a in answer_tokens) / (prefix + sum(a - 1 for a in answer_tokens))


# -- report ------------------------------------------------------------------------------------------------------
def embedding_rows(e: dict) -> list[str]:
    """The two embedding rows: the torch path and the ONNX Runtime path, each against one image at a time
    (today's torch, NCHW) and against its own model's forward alone on decoded tensors."""
    one = e["one_by_one_s"]
    head = f"embed {e['images']} CIFAR-10 images, {e['embedder']}, {e['threads']} threads (one at a time: {one:.2f} s)"
    return [
        f"| {head}, torch | {e['today_s']:.2f} s: batched 64, NCHW = **{one / e['today_s']:.1f}x** one at a time | "
        f"{e['torch_s']:.2f} s: channels-last, batches of 128, decoding read ahead in a thread = "
        f"**{one / e['torch_s']:.1f}x** | {e['forward_s']:.2f} s (torch forward alone on decoded tensors; traced, "
        f"frozen + optimize_for_inference: {e['forward_frozen_s']:.2f} s) | {e['torch_s'] / e['forward_s']:.2f} | "
        f"{e['today_s'] / e['torch_s']:.2f} |",
        f"| the same through ONNX Runtime (`{e['embedder']}+onnx`; max relative diff to torch "
        f"{e['onnx_max_rel_diff']:.1e}) | {e['today_s']:.2f} s | **{e['onnx_s']:.2f} s** = "
        f"**{one / e['onnx_s']:.1f}x** one at a time (decoding serially: {one / e['onnx_serial_s']:.1f}x, in 2 "
        f"DataLoader workers: {one / e['onnx_workers_s']:.1f}x) | {e['forward_onnx_s']:.2f} s (ONNX forward alone; "
        f"decoding alone {e['decode_s']:.2f} s) | {e['onnx_s'] / e['forward_onnx_s']:.2f} | "
        f"{e['today_s'] / e['onnx_s']:.1f} |",
    ]


def embedding_reading(e: dict) -> str:
    one = e["one_by_one_s"]
    return (f"Embedding (target >= 5x one at a time): {one / e['onnx_s']:.1f}x through ONNX Runtime "
            f"({e['onnx_s'] / e['forward_onnx_s']:.2f}x its forward alone), {one / e['torch_s']:.1f}x with torch "
            f"({e['torch_s'] / e['forward_s']:.2f}x torch's forward alone); the torch forward is the limit of the "
            f"torch path, and ONNX Runtime's forward is {e['forward_s'] / e['forward_onnx_s']:.1f}x faster.")


def streaming_row(st: dict) -> str:
    return (f"| the same for {st['rows']:,} x 512 streamed from the embedding cache in blocks, result "
            f"{'identical' if st['equal'] else 'DIFFERENT'} to in memory (in memory: {st['memory_s']:.2f} s = "
            f"{st['memory_s'] / st['gemm_s']:.2f}x the GEMM) | {st['today_s']:.2f} s: SQLite blobs (reading alone "
            f"{st['today_read_only_s']:.2f} s) | **{st['streamed_s']:.2f} s**: the sidecar matrix, memory-mapped "
            f"(reading alone {st['read_only_s']:.2f} s; opened afresh {st['streamed_reopened_s']:.2f} s; pool in "
            f"another order than stored {st['shuffled_s']:.2f} s; first use, mirroring SQLite once "
            f"{st['first_use_s']:.2f} s) | {st['gemm_s']:.2f} s | **{st['streamed_s'] / st['gemm_s']:.2f}** (today "
            f"{st['today_s'] / st['gemm_s']:.2f})" + streaming_cpu(st) + f" | {st['today_s'] / st['streamed_s']:.1f} |")


def streaming_cpu(st: dict) -> str:
    """The CPU-time ratios of the streaming row (runs saved before they were measured have none)."""
    if "gemm_cpu_s" not in st:
        return ""
    return (f"; in CPU time **{st['streamed_cpu_s'] / st['gemm_cpu_s']:.2f}** (in memory "
            f"{st['memory_cpu_s'] / st['gemm_cpu_s']:.2f}, today {st['today_cpu_s'] / st['gemm_cpu_s']:.2f})")


def streaming_reading(st: dict) -> str:
    return (f"Streamed from the cache: {st['streamed_s'] / st['gemm_s']:.2f}x the GEMM (in memory "
            f"{st['memory_s'] / st['gemm_s']:.2f}x; today's SQLite reads {st['today_s'] / st['gemm_s']:.2f}x"
            f"{streaming_cpu(st)}).")


def section(r: dict, command: str, threads: int, note: str = "") -> str:
    e, s, st, h, p, v = (r[k] for k in ("embedding", "scoring", "streaming", "head", "predict", "vlm"))
    lines = [
        "## Hot paths against the machine's limit (`benchmarks/bench_speed.py`)", "",
        f"Command: `{command}` on the shared 2-core CPU machine (no GPU), torch intra-op threads = {threads} "
        "(embedding: `--embed-threads`, 2 by default). "
        "Every row measures today's code, the new code and the limit side by side in one run, interleaved, best "
        "of the rounds; read the ratios, absolute seconds depend on how busy the machine was.", "",
        "| hot path | today | new | machine's limit | new / limit | today / new |", "|---|---|---|---|---|---|",
        *embedding_rows(e),
        f"| margin scores, {s['pool']:,} x {s['dim']} pool, {s['classes']} classes (max diff to today "
        f"{s['max_abs_diff']:.1e}) | {s['today_s']:.2f} s | {s['new_s']:.2f} s | {s['gemm_s']:.2f} s (one float32 "
        f"GEMM, same shape) | **{s['new_s'] / s['gemm_s']:.2f}** (today {s['today_s'] / s['gemm_s']:.2f})"
        + (f"; in CPU time **{s['new_cpu_s'] / s['gemm_cpu_s']:.2f}** (today {s['today_cpu_s'] / s['gemm_cpu_s']:.2f})"
           if "gemm_cpu_s" in s else "") + f" | {s['today_s'] / s['new_s']:.2f} |",
        streaming_row(st),
        head_row(h),
        predict_row(p),
    ]
    for name, m in v.items():
        lines.append(
            f"| VLM option scoring, tiny random {name}, {m['options']} multi-token options x {m['images']} "
            f"images (prefix {m['prefix_tokens']} tokens, answers {m['answer_tokens']}; max log-likelihood diff "
            f"{m['max_abs_diff']:.1e}) | {m['today_s']:.2f} s: one sequence per option | {m['new_s']:.2f} s: one "
            f"shared prefill | - | - | {m['today_s'] / m['new_s']:.1f} |")
    q = v.get("qwen2-vl")
    if q:
        big = 256 + q["prefix_tokens"] - q["image_tokens"]
        lines += ["", f"7B estimate (token counts, compute-bound prefill): a Qwen2-VL-7B prompt with a 448 x 448 image has "
                      f"~256 image tokens, so the prefix is ~{big} tokens; with the same {q['options']} options "
                      f"({sum(q['answer_tokens'])} answer tokens) today pushes {sum(big + a for a in q['answer_tokens']):,} "
                      f"tokens (and the vision tower {q['options']} times) per image, the shared prefill "
                      f"{big + sum(a - 1 for a in q['answer_tokens']):,}: **~{token_ratio(big, q['answer_tokens']):.1f}x** "
                      f"fewer (tiny model here: {token_ratio(q['prefix_tokens'], q['answer_tokens']):.1f}x fewer tokens, "
                      f"{q['today_s'] / q['new_s']:.1f}x faster measured)."]
    lines += ["", f"Reading, against issue 13's targets: pool scoring {s['new_s'] / s['gemm_s']:.2f}x the GEMM (target "
                  f"<= 1.2; today's code {s['today_s'] / s['gemm_s']:.2f}x in the same run); {streaming_reading(st)} "
                  f"{head_reading(h)} {predict_reading(p)} "
                  f"{embedding_reading(e)}"]
    if note:
        lines += ["", note]
    lines += ["", "Threads: `labelloop embed` uses torch's intra-op threads (one per core by default); pool scoring "
                  "as many Python threads as torch has intra-op threads (this run: the number above), each scoring "
                  "whole blocks with torch on one thread; the head fit uses one BLAS thread; the backend serves with "
                  "NumPy's BLAS on one thread (parallelism is across the concurrent requests: a multi-threaded BLAS in "
                  "each of 8 requests is what made today's p99) and torch's default threads for the embedder, which "
                  "runs one batch at a time under its lock."]
    return "\n".join(lines)


def with_threads(threads: int, fn, *args):
    """Run fn(*args) with torch on `threads` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--embedder", default="efficientnet-lite0@128")
    parser.add_argument("--pool", type=int, default=1_000_000)
    parser.add_argument("--stream", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for pool scoring and the rest")
    parser.add_argument("--embed-threads", type=int, default=2, help="torch threads for the embedding rows")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12, help="/predict calls per client, variant and round")
    parser.add_argument("--real", type=int, default=1000, help="CIFAR-10 tasks of the /predict project")
    parser.add_argument("--today-rev", default=TODAY_REV, help="git revision whose backend is /predict's today")
    parser.add_argument("--vlm-images", type=int, default=8)
    parser.add_argument("--only", nargs="*", default=None, help="run only these parts (debugging; no --write)")
    parser.add_argument("--merge", type=Path, help="JSON of parts an earlier run measured: only the others run now")
    parser.add_argument("--save", type=Path, help="write every part's figures to this JSON")
    parser.add_argument("--note", default="", help="a sentence for the section (e.g. how busy the machine was)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    (REPO / "benchmarks" / ".work").mkdir(parents=True, exist_ok=True)
    parts = {
        "embedding": lambda: with_threads(args.embed_threads, bench_embedding, args.images, args.embedder,
                                          args.rounds),
        "scoring": lambda: bench_scoring(args.pool, args.rounds + 2),  # short: more rounds against the noise
        "streaming": lambda: bench_streaming(args.stream, args.rounds + 2),
        "head": lambda: bench_head(args.rounds),
        "predict": lambda: bench_predict(args.clients, args.requests, args.rounds + 2, args.real, args.today_rev),
        "vlm": lambda: bench_vlm(args.vlm_images, args.rounds),
    }
    import json

    results = json.loads(args.merge.read_text()) if args.merge else {}
    earlier = sorted(results)
    for name, run in parts.items():
        if (args.only is None or name in args.only) and name not in results:
            results[name] = run()
            print(name, results[name], file=sys.stderr, flush=True)
    if args.only is not None:
        return
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    text = section(results, "python -m benchmarks.bench_speed " + shlex.join(argv), args.threads, args.note)
    if earlier:
        text += (f"\n\nThe {', '.join(earlier)} rows come from an earlier run of the same script (saved in "
                 f"`{args.merge}`); each row's figures were still measured side by side in one run.")
    print(text)
    if args.write:
        from benchmarks.results_file import write_section

        write_section("bench_speed", text)


if __name__ == "__main__":
    main()
