"""Backend benchmarks: /predict latency under concurrent clients, and annotation webhook -> new version served.

Each figure is measured side by side, in one run, against the upstream pattern implemented here on the same
model class: `LabelloopModel.fit()` followed by the head trainer's `train()` *inside* the webhook request (label-studio-ml-backend
trains synchronously in `/webhook`, with no queue). Ours answers the webhook at once and trains in the
background queue (debounced, coalesced).

Every variant is a real `uvicorn` server process on loopback, started from a copy of one prepared MODEL_DIR;
all run at once and are measured interleaved, round by round, in a rotating order (the machine is shared):
- project 1: 1,000 real CIFAR-10 training images (100 per class) served as local files, embedded once by a
  warm-up /predict, so the timed calls read the embedding cache;
- project 2: 10,000 tasks with synthetic cached embeddings (class clusters plus noise, written straight into the
  embedding cache), since embedding 10k real images on this 2-core machine would dominate the run.

Run: python -m benchmarks.bench_backend [--clients 8 --requests 24 --batch 100 --reps 5 --write]
Prints a Markdown table and writes JSON to benchmarks/.work/bench_backend/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "bench_backend"
EMBEDDER = "efficientnet-lite0@64"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LABEL_CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
REAL_PROJECT, SYNTH_PROJECT = "1", "2"
SYNTH_TASK_BASE = 100_000  # synthetic task ids start here, far from the real ones


# -- the two server variants (run inside the server subprocess) ----------------------------------------------------
def upstream_app():
    """The backend app with upstream's webhook: store the event, then retrain synchronously before answering."""
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    from backend.app import create_app
    from backend.config import load_settings
    from backend.model import TRAIN_EVENTS
    from backend.runtime import Runtime
    from backend.schemas import project_id

    runtime = Runtime(load_settings())
    # No background queue: the webhook below trains inside the request itself.
    runtime.queue.request = lambda project, reason, full_sync=False: None
    inner = create_app(runtime=runtime, start=False)
    runtime.start(preload=True)
    outer = FastAPI()

    @outer.post("/webhook")
    def webhook(data: dict = Body(...)):  # a sync route: runs in the server's thread pool, like Flask threads
        pid = project_id(data.get("project"))
        model = runtime.model(pid, label_config=(data.get("project") or {}).get("label_config"))
        outcome = model.fit(data["action"], data)
        if data["action"] in TRAIN_EVENTS:
            version, n_annotations, _ = runtime.trainer.train(pid)
            outcome["detail"] = f"trained {version} on {n_annotations}"
        return JSONResponse({"status": outcome["status"], "detail": outcome["detail"]}, status_code=201)

    outer.mount("/", inner)
    return outer


def serve(variant: str) -> None:
    import uvicorn

    if variant == "upstream":
        app = upstream_app()
    else:
        from backend.app import create_app

        app = create_app()
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")


# -- orchestration -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One backend variant as a subprocess on a free loopback port."""

    def __init__(self, variant: str, model_dir: Path, files_root: Path, debounce: float | None = None,
                 module: str = "benchmarks.bench_backend"):
        self.variant, self.port = variant, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LABELLOOP_"))}
        env.update({"MODEL_DIR": str(model_dir), "PORT": str(self.port), "LABELLOOP_EMBEDDER": EMBEDDER,
                    "LOCAL_FILES_DOCUMENT_ROOT": str(files_root), "LABELLOOP_WARM_CACHE": "false",
                    "LOG_LEVEL": "WARNING"})
        if debounce is not None:
            env["LABELLOOP_RETRAIN_DEBOUNCE"] = str(debounce)
        self.log = open(model_dir.parent / f"{model_dir.name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "serve", variant],
                                     env=env, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=600.0)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{variant} server exited; see {self.log.name}")
            try:
                if self.http.get("/health").json()["embedder"].get("loaded"):
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant} server did not start; see {self.log.name}")
            time.sleep(0.3)

    def setup(self, project: str) -> str:
        r = self.http.post("/setup", json={"project": f"{project}.0", "schema": LABEL_CONFIG})
        r.raise_for_status()
        return r.json()["model_version"]

    def predict(self, project: str, tasks: list[dict], client: httpx.Client | None = None) -> dict:
        r = (client or self.http).post("/predict", json={"tasks": tasks, "project": f"{project}.0",
                                                          "label_config": LABEL_CONFIG})
        r.raise_for_status()
        return r.json()

    def webhook(self, body: dict, client: httpx.Client | None = None) -> float:
        """POST /webhook; returns the response time in seconds."""
        started = time.perf_counter()
        r = (client or self.http).post("/webhook", json=body)
        elapsed = time.perf_counter() - started
        if r.status_code >= 300:
            raise RuntimeError(f"webhook answered {r.status_code}: {r.text[:300]}")
        return elapsed

    def training_runs(self, project: str) -> int:
        """Return how many training runs the queue has recorded for `project` (ours only)."""
        entry = self.http.get("/metrics").json()["projects"].get(project)
        return sum(entry["training"]["runs"].values()) if entry else 0

    def wait_idle(self, timeout: float = 600.0) -> None:
        """Wait until no project has training queued or running (ours; the upstream variant is always idle)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            projects = self.http.get("/metrics").json()["projects"]
            if all(p["training"]["state"] == "idle" for p in projects.values()):
                return
            time.sleep(0.1)
        raise RuntimeError("training did not settle")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.http.close()
        self.log.close()


def real_tasks(files: list[tuple[str, int]]) -> list[dict]:
    return [{"id": i + 1, "data": {"image": f"/data/local-files/?d={path}"}} for i, (path, _) in enumerate(files)]


def synth_tasks(n: int) -> list[dict]:
    return [{"id": SYNTH_TASK_BASE + i, "data": {"image": f"/data/local-files/?d=synthetic/{i}.jpg"}}
            for i in range(n)]


def annotation_event(action: str, project: str, items: list[tuple[int, dict, str]]) -> dict:
    """A Label Studio webhook body for (annotation id, task, label) items; plural events carry lists."""
    annotations = [{"id": aid, "task": task["id"], "project": int(project), "was_cancelled": False,
                    "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                "value": {"choices": [label]}}]} for aid, task, label in items]
    tasks = [task for _, task, _ in items]
    plural = action == "ANNOTATIONS_CREATED"
    return {"action": action, "annotation": annotations if plural else annotations[0],
            "task": tasks if plural else tasks[0],
            "project": {"id": int(project), "label_config": LABEL_CONFIG}}


def prepare(base: Path, n_real: int, n_synth: int) -> tuple[Path, list[tuple[str, int]]]:
    """Build the shared starting state: local files, a warm cache for project 1, synthetic project 2."""
    from labelers.sample_data import cifar10_subset

    files_root, model_dir = base / "files", base / "prepared"
    shutil.rmtree(base, ignore_errors=True)
    (files_root / "cifar10").mkdir(parents=True)
    paths, labels = cifar10_subset("train", per_class=n_real // len(CLASSES))
    files = []
    for path, label in zip(paths, labels):
        name = f"cifar10/{CLASSES[label]}_{path.name}"
        shutil.copyfile(path, files_root / name)
        files.append((name, int(label)))
    server = Server("ours", model_dir, files_root)
    try:
        server.setup(REAL_PROJECT)
        tasks = real_tasks(files)
        started = time.perf_counter()
        for start in range(0, len(tasks), 100):  # embeds every image once; later calls read the cache
            server.predict(REAL_PROJECT, tasks[start:start + 100])
        print(f"prepared: embedded {len(tasks)} CIFAR-10 images in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        server.setup(SYNTH_PROJECT)
        embedder_id = server.http.get("/health").json()["embedder"]["id"]
    finally:
        server.stop()
    write_synthetic(model_dir, n_synth, embedder_id)
    return files_root, files


def write_synthetic(model_dir: Path, n: int, embedder_id: str) -> None:
    """Give project 2 `n` tasks whose embeddings are already cached: class centres plus noise, unit norm."""
    from backend.store import Store
    from labelers.cache import EmbeddingCache

    cache = EmbeddingCache(model_dir / "embeddings.sqlite3")
    probe = next(iter(cache.get_many(embedder_id, _some_keys(model_dir)).values()))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(CLASSES), probe.shape[0])).astype(np.float32)
    labels = np.arange(n) % len(CLASSES)
    features = centres[labels] + 2.0 * rng.normal(size=(n, probe.shape[0])).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    tasks = synth_tasks(n)
    keys = {task["id"]: f"synthetic-{i:08d}" for i, task in enumerate(tasks)}
    cache.put_many(embedder_id, {keys[t["id"]]: features[i] for i, t in enumerate(tasks)})
    store = Store(model_dir)
    try:
        store.remember_tasks(SYNTH_PROJECT, [(t["id"], t["data"]["image"]) for t in tasks])
        store.set_content_keys(SYNTH_PROJECT, keys)
    finally:
        store.close()


def _some_keys(model_dir: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(model_dir / "embeddings.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT key FROM embeddings LIMIT 1")]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def predict_load(server: Server, tasks: list[dict], clients: int, requests: int, batch: int,
                 stream: list[dict] | None = None, every: float = 0.5) -> dict[str, list[float]]:
    """`clients` threads each send `requests` /predict calls of `batch` tasks.

    With `stream` (webhook bodies), another thread meanwhile posts them `every` seconds after each answer and
    then waits until the server has finished training; the clients keep predicting until then (at most
    100 x `requests` calls each), so the latencies cover all the training the webhooks caused.
    Returns {"latency": [s, ...], "webhook": [s, ...]}.
    """
    latencies: list[float] = []
    webhook_times: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=600.0) as http:
            for n in range(100 * requests if stream else requests):
                if n >= requests and done.is_set():
                    return
                start = int(rng.integers(0, len(tasks) - batch + 1))
                began = time.perf_counter()
                body = server.predict(REAL_PROJECT, tasks[start:start + batch], client=http)
                elapsed = time.perf_counter() - began
                assert len(body["results"]) == batch
                with lock:
                    latencies.append(elapsed)

    def annotator() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=600.0) as http:
                for body in stream:
                    webhook_times.append(server.webhook(body, client=http))
                    time.sleep(every)
            server.wait_idle()
        finally:
            done.set()

    streamer = threading.Thread(target=annotator) if stream else None
    if streamer:
        streamer.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    if streamer:
        streamer.join()
    return {"latency": latencies, "webhook": webhook_times}


def new_version(server: Server, project: str, task: dict, label: str, annotation_id: int,
                first: bool) -> dict[str, float | None]:
    """Send one annotation webhook; return its response time, the time until /setup reports a new
    model_version, and (ours) how long the training run itself took, all in seconds."""
    before = server.setup(project)
    action = "ANNOTATION_CREATED" if first else "ANNOTATION_UPDATED"
    body = annotation_event(action, project, [(annotation_id, task, label)])
    began = time.perf_counter()
    webhook = server.webhook(body)
    while server.setup(project) == before:
        if time.perf_counter() - began > 600:
            raise RuntimeError(f"{server.variant}: no new version after 600 s")
        # 50 ms: fine enough for multi-second runs, and light enough not to slow the training thread
        # (ours trains while we poll; the upstream pattern is done by the time its webhook answers).
        time.sleep(0.05)
    served = time.perf_counter() - began
    server.wait_idle()
    last = server.http.get("/metrics").json()["projects"][project]["training"]["last_run"]
    train = last["finished_at"] - last["started_at"] if server.variant == "ours" and last else None
    return {"webhook": webhook, "served": served, "train": train}


VARIANTS = (("ours", "ours", None), ("ours_no_debounce", "ours", 0.0), ("upstream", "upstream", None))


def rotated(names: list[str], round_: int) -> list[str]:
    """The variants in a different order each round, so none always runs first (or last) on a busy machine."""
    k = round_ % len(names)
    return names[k:] + names[:k]


def run_all(base: Path, files_root: Path, files: list[tuple[str, int]], args) -> dict[str, Any]:
    """Start every variant from a copy of the prepared state, then measure them interleaved, round by round."""
    real, synth = real_tasks(files), synth_tasks(args.synth)
    servers: dict[str, Server] = {}
    raw: dict[str, dict[str, list]] = {}
    try:
        for name, variant, debounce in VARIANTS:
            shutil.copytree(base / "prepared", base / name)
            servers[name] = Server(variant, base / name, files_root, debounce=debounce)
            raw[name] = {"idle": [], "loaded": [], "loaded_webhook": [], "loaded_trainings": 0, "1k": [], "10k": []}
        names = list(servers)
        # Label all but the last task of each project in one bulk event (not timed): the starting point.
        for name in names:
            for project, tasks, truth in ((REAL_PROJECT, real, [CLASSES[label] for _, label in files]),
                                          (SYNTH_PROJECT, synth, [CLASSES[i % 10] for i in range(len(synth))])):
                items = [(10_000_000 + task["id"], task, truth[i]) for i, task in enumerate(tasks[:-1])]
                servers[name].webhook(annotation_event("ANNOTATIONS_CREATED", project, items))
                servers[name].wait_idle()
        for name in names:  # untimed: the first call after training loads the new head from disk
            servers[name].predict(REAL_PROJECT, real[:args.batch])
        per_round = max(1, args.requests // args.rounds)
        for round_ in range(args.rounds):
            for name in rotated(names, round_):
                raw[name]["idle"] += predict_load(servers[name], real, args.clients, per_round,
                                                  args.batch)["latency"]
        # The same load while an annotator relabels project-1 tasks (one webhook per submit).
        relabel = [annotation_event("ANNOTATION_UPDATED", REAL_PROJECT,
                                    [(10_000_000 + real[i]["id"], real[i], CLASSES[(files[i][1] + 1) % 10])])
                   for i in range(0, len(real) - 1, 7)]
        per_stream = max(1, args.stream // args.rounds)
        for round_ in range(args.rounds):
            bodies = relabel[round_ * per_stream:(round_ + 1) * per_stream]
            for name in rotated(names, round_):
                runs_before = servers[name].training_runs(REAL_PROJECT)
                load = predict_load(servers[name], real, args.clients, per_round, args.batch, stream=bodies)
                raw[name]["loaded"] += load["latency"]
                raw[name]["loaded_webhook"] += load["webhook"]
                # ours: runs recorded by the queue; upstream: one synchronous training per webhook.
                raw[name]["loaded_trainings"] += (servers[name].training_runs(REAL_PROJECT) - runs_before
                                                  if servers[name].variant == "ours" else len(bodies))
        for rep in range(args.reps):
            for name in rotated(names, rep):
                for key, project, tasks, aid in (("1k", REAL_PROJECT, real, 20_000_000),
                                                 ("10k", SYNTH_PROJECT, synth, 20_000_001)):
                    raw[name][key].append(new_version(servers[name], project, tasks[-1], ("cat", "dog")[rep % 2],
                                                      aid, first=rep == 0))
    finally:
        for server in servers.values():
            server.stop()
    return {name: summarise(r) for name, r in raw.items()}


def summarise(raw: dict[str, list]) -> dict[str, Any]:
    def ms(values, q):
        return round(1000 * percentile(values, q), 1) if values else None

    out = {"predict_idle": {"p50_ms": ms(raw["idle"], 50), "p99_ms": ms(raw["idle"], 99),
                            "requests": len(raw["idle"])},
           "predict_with_annotations": {"p50_ms": ms(raw["loaded"], 50), "p99_ms": ms(raw["loaded"], 99),
                                        "requests": len(raw["loaded"]),
                                        "webhook_p50_ms": ms(raw["loaded_webhook"], 50),
                                        "webhook_max_ms": ms(raw["loaded_webhook"], 100),
                                        "webhooks": len(raw["loaded_webhook"]),
                                        "trainings": raw["loaded_trainings"]}}
    for key in ("1k", "10k"):
        runs = raw[key]
        trains = [r["train"] for r in runs if r["train"] is not None]
        out[f"new_version_{key}"] = {
            "webhook_ms": round(1000 * statistics.median(r["webhook"] for r in runs), 1),
            "served_ms": round(1000 * statistics.median(r["served"] for r in runs), 1),
            "train_ms": round(1000 * statistics.median(trains), 1) if trains else None,
            "served_all_ms": [round(1000 * r["served"], 1) for r in runs]}
    return out


def markdown(results: dict[str, Any], args) -> str:
    ours, quick, upstream = results["ours"], results["ours_no_debounce"], results["upstream"]

    def ratio(a, b):
        return f"{a / b:.2f}" if a and b else "n/a"

    lines = [
        f"**`/predict` latency**: {args.batch}-task batches, warm cache, {args.clients} concurrent clients, "
        f"{args.requests} requests per client per variant, measured in {args.rounds} interleaved rounds "
        f"(loopback, 1 uvicorn worker, embedder `{EMBEDDER}`):",
        "",
        "| load | ours p50 / p99 (ms) | upstream pattern p50 / p99 (ms) | p50 ratio upstream/ours "
        "| p99 ratio upstream/ours |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("predict_idle", "predictions only"),
                       ("predict_with_annotations", f"+ {args.stream} annotation webhooks (0.5 s apart), "
                                                    "until training is done")):
        o, u = ours[key], upstream[key]
        lines.append(f"| {label} | {o['p50_ms']:.0f} / {o['p99_ms']:.0f} | {u['p50_ms']:.0f} / {u['p99_ms']:.0f} "
                     f"| {ratio(u['p50_ms'], o['p50_ms'])} | {ratio(u['p99_ms'], o['p99_ms'])} |")
    o, u = ours["predict_with_annotations"], upstream["predict_with_annotations"]
    lines += ["", f"Webhook response time during that load: ours p50 {o['webhook_p50_ms']:.0f} ms "
                  f"(max {o['webhook_max_ms']:.0f}), upstream pattern p50 {u['webhook_p50_ms']:.0f} ms "
                  f"(max {u['webhook_max_ms']:.0f}). Label Studio waits 1 s for a webhook (`WEBHOOK_TIMEOUT`). "
                  f"Training runs caused by the {o['webhooks']} webhooks: ours {o['trainings']} (bursts coalesce), "
                  f"upstream pattern {u['trainings']} (one per webhook).",
              "",
              f"**Annotation webhook -> new `model_version` reported by `/setup`** (median of {args.reps}, "
              "interleaved; *webhook* = its HTTP response time, *served* = until `/setup` reports the new "
              "version, *train* = the training run alone):", "",
              "| labeled tasks | ours, debounce 1 s (default): webhook / served / train | ours, debounce 0: "
              "webhook / served / train | upstream pattern: webhook = served | served ratio upstream/ours "
              "(debounce 0) | webhook ratio upstream/ours (debounce 0) |",
              "|---|---|---|---|---|---|"]
    for key, label in (("new_version_1k", f"{len(results['files'])} (real CIFAR-10)"),
                       ("new_version_10k", f"{args.synth} (synthetic embeddings)")):
        o, q, u = ours[key], quick[key], upstream[key]
        lines.append(f"| {label} | {o['webhook_ms']:.0f} / {o['served_ms']:.0f} / {o['train_ms']:.0f} ms "
                     f"| {q['webhook_ms']:.0f} / {q['served_ms']:.0f} / {q['train_ms']:.0f} ms "
                     f"| {u['webhook_ms']:.0f} / {u['served_ms']:.0f} ms "
                     f"| {ratio(u['served_ms'], q['served_ms'])} | {ratio(u['webhook_ms'], q['webhook_ms'])} |")
    o, q, u = ours["new_version_10k"], quick["new_version_10k"], upstream["new_version_10k"]
    lines += ["", f"Reading: the training is the same code in both patterns, so a new version is served after about "
                  f"the same time ({args.synth:,} tasks: {q['served_ms'] / 1000:.1f} s ours with debounce 0, "
                  f"{u['served_ms'] / 1000:.1f} s upstream pattern; the default 1 s debounce adds "
                  f"{(o['served_ms'] - q['served_ms']) / 1000:.1f} s, the price of coalescing bursts of submits into "
                  "one run). The difference is the webhook: ours answers in milliseconds, while the upstream pattern "
                  f"holds it for the whole training ({u['webhook_ms'] / 1000:.1f} s at {args.synth:,} tasks). Label Studio "
                  "gives an annotation webhook 1 s and does not retry it, and it waits up to 100 s for "
                  "START_TRAINING while the annotator's submit blocks."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=24, help="/predict calls per client and variant")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--real", type=int, default=1000, help="real CIFAR-10 tasks (project 1)")
    parser.add_argument("--synth", type=int, default=10_000, help="synthetic-embedding tasks (project 2)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--stream", type=int, default=6, help="annotation webhooks sent during the /predict load")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds per variant")
    parser.add_argument("--workdir", type=Path, default=WORK)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of RESULTS.md")
    parser.add_argument("--from-results", type=Path, help="only render a results.json of an earlier run")
    args = parser.parse_args(argv)
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        for name, value in results["args"].items():
            if name in ("clients", "requests", "batch", "real", "synth", "reps", "stream", "rounds"):
                setattr(args, name, int(value))
        table = markdown(results, args)
        print(table)
        if args.write:
            write_section(table, [a for a in results["args"].get("argv", "").split() if a])
        return
    # A SIGTERM becomes SystemExit, so the `finally` blocks stop the server processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    files_root, files = prepare(args.workdir, args.real, args.synth)
    results: dict[str, Any] = {"args": {**{k: str(v) for k, v in vars(args).items()}, "argv": " ".join(argv)},
                               "files": files}
    results.update(run_all(args.workdir, files_root, files, args))
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, args)
    print(table)
    if args.write:
        write_section(table, argv)


def write_section(table: str, argv: list[str]) -> None:
    """Replace the text between this benchmark's markers in benchmarks/RESULTS.md (append it if missing)."""
    path = REPO / "benchmarks" / "RESULTS.md"
    begin, end = "<!-- bench_backend:begin -->", "<!-- bench_backend:end -->"
    command = " ".join(["python -m benchmarks.bench_backend", *argv])
    section = "\n".join([
        begin, "## ML backend (`benchmarks/bench_backend.py`)", "",
        f"Command: `{command}` on a shared 2-core CPU machine, no GPU. Every variant is a real uvicorn process "
        "(1 worker) started from a copy of one prepared MODEL_DIR; they run at once and are measured in the same "
        "run, interleaved round by round in a rotating order. *Upstream pattern* = the same `LabelloopModel`, but `/webhook` stores the event and then runs "
        "`train()` inside the request before answering, as label-studio-ml-backend does; *ours* answers at once "
        "and trains in the background queue. Absolute milliseconds depend on this machine; compare the ratios. "
        "The *predictions only* row runs the same /predict code in both variants, so its deviation from 1.0 is "
        "the noise floor of this shared machine.",
        "", table, "",
        "The 1,000-task project uses real CIFAR-10 images (embedded once during preparation; every timed call "
        "reads the embedding cache). The 10,000-task project uses synthetic embeddings written straight into "
        "the cache (10 class centres plus noise), because embedding 10k real images here would dominate the "
        "run; training cost depends only on the number and size of the embeddings, not on where they came from.",
        end])
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
