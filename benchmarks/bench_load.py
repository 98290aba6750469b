"""Load test: concurrent clients send 100-task /predict batches to a real `labelloop serve` while annotation
webhooks arrive and retrain the project; reports p50/p99 latency, errors and the versions served meanwhile.

The client is a bounded asyncio loop (httpx.AsyncClient): `clients` coroutines each send between `requests`
and `max_requests` /predict calls (they go on past `requests` only until a retrain's new version has been
served), one coroutine posts the webhooks, and the whole run stops at `deadline` seconds whatever happens.
Loopback only. The project's tasks have synthetic embeddings written straight into the server's cache (class
centres plus noise, as benchmarks/bench_backend.py's project 2), so the figures are the serving path, not
image decoding; annotations train on those embeddings.

Run: python -m benchmarks.bench_load [--workers 2 --clients 8 32 --requests 20 --batch 100 --tasks 5000 --write]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "bench_load"
EMBEDDER = "efficientnet-lite0@64"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PROJECT = "1"


def label_config(classes: list[str]) -> str:
    return ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
            + "".join(f'<Choice value="{c}"/>' for c in classes) + "</Choices></View>")


# -- the server under load --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Backend:
    """`labelloop serve` on a free loopback port, `workers` processes, state in `model_dir`; log in `log_path`."""

    def __init__(self, model_dir: Path, embedder: str, workers: int = 1, debounce: float = 1.0,
                 start_seconds: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        model_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = model_dir.parent / f"{model_dir.name}-serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "LABELLOOP_"))}
        env.update({"LABELLOOP_WARM_CACHE": "false", "LABELLOOP_RETRAIN_DEBOUNCE": str(debounce),
                    "LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)})
        cmd = [sys.executable, "-m", "labelloop.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(workers), "--model-dir", str(model_dir), "--embedder", embedder]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + start_seconds
        with httpx.Client(timeout=10) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the backend exited; see {self.log_path}")
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the backend did not start in {start_seconds:.0f} s; see {self.log_path}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def synthetic_project(backend: Backend, model_dir: Path, embedder_spec: str, n: int, classes: list[str],
                      seed: int = 0) -> list[dict[str, Any]]:
    """Connect the project and give it `n` tasks whose (synthetic) embeddings are in the server's cache;
    returns the tasks. The embedder is loaded here once only to learn its cache id and dimension."""
    from backend.store import Store
    from labelers.cache import EmbeddingCache
    from labelers.embedders import make_embedder

    with httpx.Client(base_url=backend.url, timeout=60) as http:
        http.post("/setup", json={"project": f"{PROJECT}.0", "schema": label_config(classes)}).raise_for_status()
    embedder = make_embedder(embedder_spec, device="cpu")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(classes), embedder.dim)).astype(np.float32)
    features = centres[np.arange(n) % len(classes)] + 2.0 * rng.normal(size=(n, embedder.dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    tasks = [{"id": i + 1, "data": {"image": f"/data/local-files/?d=synthetic/{i}.jpg"}} for i in range(n)]
    keys = {t["id"]: f"synthetic-{i:08d}" for i, t in enumerate(tasks)}
    EmbeddingCache(model_dir / "embeddings.sqlite3").put_many(
        embedder.id, {keys[t["id"]]: features[i] for i, t in enumerate(tasks)})
    store = Store(model_dir)
    try:
        store.remember_tasks(PROJECT, [(t["id"], t["data"]["image"]) for t in tasks])
        store.set_content_keys(PROJECT, keys)
    finally:
        store.close()
    return tasks


def annotation_bodies(tasks: list[dict[str, Any]], classes: list[str], count: int, first_id: int = 1,
                      per_event: int = 10) -> list[dict[str, Any]]:
    """`count` ANNOTATIONS_CREATED webhooks of `per_event` annotations each, labelled with the task's class."""
    bodies = []
    for e in range(count):
        items = [(first_id + e * per_event + j, tasks[(e * per_event + j) % len(tasks)]) for j in range(per_event)]
        bodies.append({
            "action": "ANNOTATIONS_CREATED", "project": {"id": int(PROJECT), "label_config": label_config(classes)},
            "task": [task for _, task in items],
            "annotation": [{"id": aid, "task": task["id"], "project": int(PROJECT), "was_cancelled": False,
                            "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                        "value": {"choices": [classes[(task["id"] - 1) % len(classes)]]}}]}
                           for aid, task in items]})
    return bodies


def warm_up(url: str, tasks: list[dict[str, Any]], workers: int, batch: int, attempts: int = 50) -> int:
    """Send /predict batches on new connections until `workers` different worker processes have answered one
    (each loads its embedder and head on its first call); returns how many answered. At most `attempts`."""
    answered: set[int] = set()
    for _ in range(attempts):
        with httpx.Client(base_url=url, timeout=300) as http:  # one connection: both calls reach one worker
            pid = http.get("/metrics").json()["worker_pid"]
            http.post("/predict", json={"tasks": tasks[:batch], "project": f"{PROJECT}.0"}).raise_for_status()
        answered.add(pid)
        if len(answered) >= workers:
            break
    return len(answered)


# -- the bounded asyncio client -----------------------------------------------------------------------------
@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)   # seconds, /predict answered 200
    statuses: dict[int, int] = field(default_factory=dict)  # /predict status -> count
    errors: list[str] = field(default_factory=list)        # transport errors and non-200 answers, named
    webhook_statuses: dict[int, int] = field(default_factory=dict)
    webhook_latencies: list[float] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)      # model_versions served, in order of first sight
    timed_out: bool = False

    def summary(self) -> dict[str, Any]:
        def ms(values, q):
            return round(1000 * float(np.percentile(values, q)), 1) if values else None

        return {"requests": sum(self.statuses.values()) + sum(e.startswith("transport") for e in self.errors),
                "p50_ms": ms(self.latencies, 50), "p99_ms": ms(self.latencies, 99),
                "max_ms": ms(self.latencies, 100), "errors": len(self.errors),
                "server_errors": sum(n for s, n in self.statuses.items() if s >= 500),
                "webhooks": sum(self.webhook_statuses.values()), "webhook_p99_ms": ms(self.webhook_latencies, 99),
                "webhook_errors": sum(n for s, n in self.webhook_statuses.items() if s >= 300),
                "versions_served": len(self.versions), "timed_out": self.timed_out}


async def run_load(url: str, tasks: list[dict[str, Any]], clients: int, requests: int, batch: int,
                   webhooks: list[dict[str, Any]], every: float = 0.5, max_requests: int | None = None,
                   deadline: float = 300.0, seed: int = 0, timeout: float = 120.0) -> LoadResult:
    """Run `clients` /predict loops (see the module docstring) and the webhook stream; returns what happened.

    Bounded: at most `max_requests` (default 5 x `requests`) calls per client, and `deadline` seconds in all.
    """
    result = LoadResult()
    cap = max_requests or 5 * requests
    webhooks_done = asyncio.Event()
    first_version: list[str] = []

    def newer_seen() -> bool:
        return len(result.versions) > 1 or (bool(first_version) and result.versions[-1:] != first_version)

    async def client(http: httpx.AsyncClient, n: int) -> None:
        rng = np.random.default_rng([seed, n])
        for i in range(cap):
            if i >= requests and (not webhooks or (webhooks_done.is_set() and newer_seen())):
                return
            start = int(rng.integers(0, max(1, len(tasks) - batch + 1)))
            body = {"tasks": tasks[start:start + batch], "project": f"{PROJECT}.0"}
            began = time.perf_counter()
            try:
                resp = await http.post("/predict", json=body)
            except httpx.HTTPError as exc:
                result.errors.append(f"transport: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - began
            result.statuses[resp.status_code] = result.statuses.get(resp.status_code, 0) + 1
            if resp.status_code != 200:
                result.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
            result.latencies.append(elapsed)
            for item in resp.json()["results"]:
                version = item.get("model_version") if isinstance(item, dict) else None
                if version and version not in result.versions:
                    result.versions.append(version)
                    first_version[:] = first_version or [version]

    async def annotator(http: httpx.AsyncClient) -> None:
        try:
            for body in webhooks:
                began = time.perf_counter()
                try:
                    resp = await http.post("/webhook", json=body)
                    status = resp.status_code
                except httpx.HTTPError as exc:
                    result.errors.append(f"webhook transport: {type(exc).__name__}: {exc}")
                    status = 0
                result.webhook_latencies.append(time.perf_counter() - began)
                result.webhook_statuses[status] = result.webhook_statuses.get(status, 0) + 1
                await asyncio.sleep(every)
        finally:
            webhooks_done.set()

    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        jobs = [client(http, n) for n in range(clients)] + ([annotator(http)] if webhooks else [])
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), deadline)
        except asyncio.TimeoutError:
            result.timed_out = True
    return result


# -- the benchmark -----------------------------------------------------------------------------------------
def markdown(rows: list[dict[str, Any]], args, command: str) -> str:
    lines = [
        "## Backend under load: /predict while annotations retrain (bench_load)",
        "",
        f"`{command}`",
        "",
        f"`labelloop serve --workers {args.workers}` on loopback, embedder {args.embedder}, {args.tasks} tasks with "
        f"cached (synthetic) embeddings; each client sends {args.batch}-task /predict batches ({args.requests} "
        f"at least, on until a retrained version was served); meanwhile {args.webhooks} ANNOTATIONS_CREATED "
        f"webhooks of 10 annotations, one every {args.every} s, retrain the project (debounce {args.debounce} s). "
        "Every worker answers one /predict first (embedder and head loaded), then the timed run starts. "
        "Bounded asyncio client (httpx), one run per row on a shared 2-core machine (other benchmarks may run "
        "beside it): latencies include the CPU the retrains take.",
        "",
        "| clients | /predict calls | p50 ms | p99 ms | max ms | errors | 5xx | webhooks (errors) | webhook p99 ms "
        "| versions served |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                     f"{r['errors']} | {r['server_errors']} | {r['webhooks']} ({r['webhook_errors']}) | "
                     f"{r['webhook_p99_ms']} | {r['versions_served']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=20, help="/predict calls per client, at least")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--webhooks", type=int, default=6)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--debounce", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--embedder", default=EMBEDDER)
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.bench_load " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for clients in args.clients:
        model_dir = WORK / f"clients{clients}" / "state"
        subprocess.run(["rm", "-rf", str(model_dir.parent)], check=True)
        backend = Backend(model_dir, args.embedder, workers=args.workers, debounce=args.debounce)
        try:
            tasks = synthetic_project(backend, model_dir, args.embedder, args.tasks, CLASSES)
            bodies = annotation_bodies(tasks, CLASSES, args.webhooks)
            warmed = warm_up(backend.url, tasks, args.workers, args.batch)
            print(f"warm-up: {warmed} of {args.workers} workers answered", file=sys.stderr)
            result = asyncio.run(run_load(backend.url, tasks, clients, args.requests, args.batch, bodies,
                                          every=args.every, deadline=args.deadline))
        finally:
            backend.stop()
        row = {"clients": clients, **result.summary()}
        rows.append(row)
        print(row, file=sys.stderr)
        for error in result.errors[:5]:
            print("  error:", error, file=sys.stderr)
    table = markdown(rows, args, command)
    print(table)
    if args.write:
        from benchmarks.results_file import write_section

        write_section("bench_load", table)


if __name__ == "__main__":
    main()
