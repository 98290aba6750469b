"""What the backend's `mix` learner costs (backend/learners.py) at 10 000 embeddings of 1280 dimensions.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_learner_cost

Synthetic features (10 Gaussian classes), an in-memory store and cache, 200 annotations: the first retrain's
learner step (k-NN graph built), the next one (graph reused), one in a new process (graph read from
MODEL_DIR/graphs), and /predict's mix for 100 tasks in the graph and 100 tasks embedded after it.
Prints the timings; docs/backend.md §4 "Learner" quotes them.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from backend.learners import GraphCache, PoolLearner


def main() -> None:
    n, d, K = 10000, 1280, 10
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((K, d))
    cls = rng.integers(0, K, n)
    x = (centres[cls] + 2.0 * rng.standard_normal((n, d))).astype(np.float32)
    keys = [f"k{i:05d}" for i in range(n)]
    vec = dict(zip(keys, x))
    store = SimpleNamespace(project_content_keys=lambda p: keys)
    cache = SimpleNamespace(get_many=lambda e, ks: {k: vec[k] for k in ks if k in vec})
    target = SimpleNamespace(multiple=False, labels=tuple(map(str, range(K))))
    labeled = rng.choice(n, 200, replace=False)
    with tempfile.TemporaryDirectory() as tmp:
        learner = PoolLearner(store, cache, GraphCache(Path(tmp)))
        for what in ("first retrain (graph built)", "next retrain (graph reused)"):
            t = time.perf_counter()
            fit = learner.fit("p", "mix", target, "e", [keys[i] for i in labeled], cls[labeled])
            print(f"{what}: {time.perf_counter() - t:.2f}s, used={fit.used}, graph={fit.graph}")
        learner2 = PoolLearner(store, cache, GraphCache(Path(tmp)))
        t = time.perf_counter()
        fit = learner2.fit("p", "mix", target, "e", [keys[i] for i in labeled], cls[labeled])
        print(f"new process, graph read from disk: {time.perf_counter() - t:.2f}s, graph={fit.graph}")
        from labelers.head import ClassifierHead

        head = ClassifierHead(list(target.labels))
        head.fit(x[labeled], cls[labeled])
        for what in ("first, imports scikit-learn's KMeans", "next"):
            t = time.perf_counter()
            fit = learner2.fit("p", "mix", target, "e", [keys[i] for i in labeled], cls[labeled], head, "margin",
                               "kmeans", 20)
            print(f"retrain with margin+kmeans+mix ({what}; graph reused, batch of 20): "
                  f"{time.perf_counter() - t:.2f}s, batch {len(fit.pool.batch.keys)}")
        probs = np.full((100, K), 1.0 / K)
        new = x[:100] + 0.1
        timings = []
        for keys_, features in ((keys[:100], x[:100]), ([None] * 100, new), ([None] * 100, new)):
            t = time.perf_counter()
            fit.pool.combine(probs, keys_, features, cache.get_many)
            timings.append(1000 * (time.perf_counter() - t))
        print(f"/predict combine, 100 pool tasks: {timings[0]:.1f} ms; 100 new tasks: first {timings[1]:.0f} ms "
              f"(graph vectors loaded), then {timings[2]:.0f} ms")


if __name__ == "__main__":
    main()
