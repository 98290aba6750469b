"""Cold start: before the head has evidence, the score is a coverage order over the project's whole pool.

200 tasks imported in class order (10 classes x 20), embedded by a fake image-only embedder whose features
are clustered by class (the real EfficientNet-Lite0 on 200 images is too slow for a unit test; the benchmark
benchmarks/bench_cold_start.py measures the real one on CIFAR-10). The fake ends in an "ImageNet classifier"
so the WordNet prior is built for the CIFAR-10 label names; its weights are zero (every ImageNet class
equally likely) unless a test says otherwise, so the prior carries no evidence about any image.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cold_start import coverage_order
from backend.labels import parse_label_config
from backend.runtime import Runtime
from tests.backend.conftest import local_task, setup_project
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.waiting import eventually

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
XML = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
       + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
PER_CLASS = 20


class ClusteredEmbedder:
    """Image-only embedder: pixel (0, 0) holds the class (its red channel = 20 * class), the other pixels are
    noise that moves the feature around its class centre. Has an ImageNet-shaped `model._fc` (zero weights)."""

    id = "fake-clusters-v1"
    dim = 32
    has_text = False

    def __init__(self):
        rng = np.random.default_rng(0)
        self.centres = rng.normal(size=(len(CLASSES), self.dim)).astype(np.float32) * 3
        self.projection = rng.normal(size=(8 * 8 * 3 - 3, self.dim)).astype(np.float32) / 12
        self.model = torch.nn.Module()
        self.model._fc = torch.nn.Linear(self.dim, 1000)
        torch.nn.init.zeros_(self.model._fc.weight)
        torch.nn.init.zeros_(self.model._fc.bias)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((8, 8)), np.float32).reshape(-1) / 255)

    def encode_batch(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.numpy()
        classes = np.rint(x[:, 0] * 255 / 20).astype(int)
        features = self.centres[classes] + (x[:, 3:] - 0.5) @ self.projection
        return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)


EMBEDDER = ClusteredEmbedder()


def image(klass: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels[0, 0] = (20 * klass, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def pool(tmp_path):
    """(docroot, tasks, class of each task id): 200 images, task ids in class order."""
    root = tmp_path / "docroot"
    (root / "imgs").mkdir(parents=True)
    tasks, truth = [], {}
    for c in range(len(CLASSES)):
        for k in range(PER_CLASS):
            task_id = len(tasks) + 1
            (root / "imgs" / f"{task_id}.png").write_bytes(image(c, task_id))
            tasks.append(local_task(task_id, f"imgs/{task_id}.png"))
            truth[task_id] = c
    return root, tasks, truth


@pytest.fixture
def warmed(make_settings, pool):
    """Yield (client, runtime, tasks, truth) with the project connected and all 200 tasks warmed."""
    from fastapi.testclient import TestClient

    from backend.app import create_app

    root, tasks, truth = pool
    fake = FakeLabelStudio(image=b"", tasks=tasks)
    with ServerThread(fake.app()) as ls:
        settings = make_settings(embedder="efficientnet-lite0-fake", local_files_document_root=root,
                                 label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN)
        runtime = Runtime(settings, embedder_loader=lambda spec: EMBEDDER)
        with TestClient(create_app(runtime=runtime, preload=False)) as client:
            setup_project(client, "1.1700000000", XML)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=120)
            yield client, runtime, tasks, truth


def served_head(runtime):
    version = runtime.store.get_version("1", runtime.store.current_version("1"))
    return runtime.heads.get("1", version, parse_label_config(XML), EMBEDDER)


def predict(client, tasks) -> dict[int, dict]:
    results = client.post("/predict", json={"tasks": tasks, "project": "1.1700000000"}).json()["results"]
    return {t["id"]: r for t, r in zip(tasks, results)}


def test_first_page_by_ascending_score_covers_the_classes_without_prechecks(warmed):
    client, runtime, tasks, truth = warmed
    by_task = predict(client, tasks)
    ranked = sorted(by_task, key=lambda t: by_task[t]["score"])
    assert len({truth[t] for t in ranked[:20]}) >= 8
    scores = [by_task[t]["score"] for t in sorted(by_task)]
    assert len(set(scores)) == len(scores)  # never tied, so Label Studio never falls back to ID order
    assert ranked != sorted(ranked) and ranked[:20] != list(range(1, 21))
    # zero ImageNet weights: the prior is uniform, so no label has evidence and none is pre-checked
    assert all(r["result"] == [] for r in by_task.values())


def test_order_is_a_property_of_the_pool_not_of_the_batch(warmed):
    client, runtime, tasks, truth = warmed
    first = predict(client, tasks[::3] + tasks[5:9])
    second = predict(client, tasks[150:] + tasks[:40])
    common = set(first) & set(second)
    assert len(common) > 20
    assert all(first[t]["score"] == second[t]["score"] for t in common)
    assert runtime.heads.cold_start.computed == 1  # the same pool: computed once, then served


def test_health_names_the_labels_that_got_an_imagenet_prior(warmed):
    client, runtime, tasks, truth = warmed
    predict(client, tasks[:2])
    priors = client.get("/health").json()["embedder"]["imagenet_prior"]
    entry = next(p for p in priors if p["labels"] == CLASSES)
    assert "deer" not in entry["matched"] and {"dog", "cat", "airplane", "truck"} <= set(entry["matched"])
    assert entry["details"]["deer"] == "no ImageNet class: uniform prior"
    assert entry["details"]["dog"].split()[0].isdigit() and int(entry["details"]["dog"].split()[0]) > 100


def test_a_confident_prior_prechecks_its_label_with_its_probability(warmed):
    client, runtime, tasks, truth = warmed
    from labelers.imagenet_prior import map_labels_to_imagenet

    dogs = map_labels_to_imagenet(CLASSES).classes["dog"]
    head = served_head(runtime)
    before = predict(client, tasks[:5])  # the prior's probabilities of these images are now cached
    assert all(r["result"] == [] for r in before.values())
    bias = np.zeros_like(head.prior.bias)
    bias[dogs] = 12.0  # every image looks like a dog to the "ImageNet classifier"
    head.prior.bias = bias
    by_task = predict(client, tasks[:5])  # a prior with a replaced array is another prior: never the cached rows
    for r in by_task.values():
        (region,) = r["result"]
        assert region["value"]["choices"] == ["dog"]
        assert region["score"] == pytest.approx(head.prior.proba(np.zeros((1, EMBEDDER.dim)))[0][5], abs=1e-5)
        assert region["score"] > 0.5 and r["score"] < 1  # the task's score stays its cold-start rank


def test_trained_head_takes_over_after_two_annotations_per_label(warmed):
    from tests.backend.conftest import annotation_event

    client, runtime, tasks, truth = warmed
    before = predict(client, tasks)
    for n, t in enumerate(tasks[:: PER_CLASS // 2]):  # 2 per class = 20 annotations
        resp = client.post("/webhook", json=annotation_event(n + 1, t, CLASSES[truth[t["id"]]], xml=XML))
        assert resp.status_code in (200, 201), resp.text
    assert eventually(lambda: runtime.store.get_project("1").revision >= 1
                      and runtime.store.get_version("1", runtime.store.current_version("1")).n_annotations >= 20,
                      timeout=120)
    after = predict(client, tasks)
    assert [after[t]["score"] for t in after] != [before[t]["score"] for t in before]
    assert sum(bool(r["result"]) for r in after.values()) == len(tasks)  # trained: every task pre-checked
    retrained = served_head(runtime)
    assert retrained.n_trained == 20 and retrained.prior is not None  # retrained heads keep the ImageNet prior
    assert "dog" in retrained.prior.matched and "deer" not in retrained.prior.matched


def test_coverage_order_hand_checked_on_two_far_clusters():
    x = np.array([[0, 0], [0, 0.1], [0.1, 0], [10, 10], [10, 10.1], [10.1, 10]], np.float32)
    order = coverage_order(x, 2, seed=3)
    assert sorted(order.tolist()) == list(range(6))
    assert {int(order[0]) // 3, int(order[1]) // 3} == {0, 1}  # the first two come from different clusters


class _Pool:
    """A store and an embedding cache holding `n` clustered vectors under content keys k0000..."""

    def __init__(self, n: int):
        rng = np.random.default_rng(1)
        self.vectors = {f"k{i:04d}": (rng.normal(size=4) + 10 * (i % 5)).astype(np.float32) for i in range(n)}

    def add(self, n: int) -> list[str]:
        start = len(self.vectors)
        for i in range(start, start + n):
            self.vectors[f"k{i:04d}"] = np.full(4, 10.0 * (i % 5), np.float32)
        return [f"k{i:04d}" for i in range(start, start + n)]

    def project_content_keys(self, project):
        return list(self.vectors)

    def get_many(self, embedder_id, keys):
        return {k: self.vectors[k] for k in keys if k in self.vectors}

    def tasks_stamp(self, project):
        return (len(self.vectors),)


def test_a_few_new_tasks_go_after_the_order_and_many_recompute_it():
    from backend.cold_start import ColdStartOrder

    pool = _Pool(100)
    order = ColdStartOrder(pool, pool)
    first = order.scores("7", "e", 5)
    assert sorted(first.values()) == [i / 100 for i in range(100)]
    few = pool.add(10)  # < 25 %: appended, no k-means
    second = order.scores("7", "e", 5)
    assert order.computed == 1
    old = sorted(first, key=first.get)
    assert sorted(first, key=second.get) == old  # the old tasks keep their order ...
    assert min(second[k] for k in few) > max(second[k] for k in old)  # ... and the new ones come after
    assert order.scores("7", "e", 5) == second and order.computed == 1
    many = pool.add(40)  # >= 25 % of the 100 ordered: recomputed over all 150
    third = order.scores("7", "e", 5)
    assert order.computed == 2 and len(third) == 150
    assert min(third[k] for k in many + few) < 0.5  # new images can now lead the order


def test_without_wordnet_the_head_starts_uniform_and_says_so(monkeypatch, caplog):
    import labelers.imagenet_prior as imagenet
    from backend.heads import ImageNetPriors, prior_head

    def missing(folder=None):
        raise imagenet.WordNetMissing("no WordNet at /nowhere (apt-get install wordnet)")

    monkeypatch.setattr(imagenet, "open_wordnet", missing)
    priors = ImageNetPriors()
    with caplog.at_level("WARNING"):
        head = prior_head(parse_label_config(XML), EMBEDDER, priors)
    assert head.prior is None and np.allclose(head.predict_proba(np.ones((2, EMBEDDER.dim))), 0.1)
    (status,) = priors.status()
    assert status["matched"] == [] and "apt-get install wordnet" in status["error"]
    assert any("no ImageNet prior" in r.message and "start uniform" in r.message for r in caplog.records)


def test_setup_builds_the_imagenet_prior_once_before_the_first_predict(make_settings, pool, monkeypatch):
    """The WordNet mapping (5-10 s) starts when a project connects, so the first Retrieve Predictions does
    not pay for it; it is built once per label set however many /setup and /predict calls follow."""
    from fastapi.testclient import TestClient

    import labelers.imagenet_prior as imagenet
    from backend.app import create_app
    from backend.heads import ImageNetPriors

    calls = []
    real = imagenet.imagenet_prior
    monkeypatch.setattr(imagenet, "imagenet_prior", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    root, tasks, _ = pool
    settings = make_settings(embedder="efficientnet-lite0-fake", local_files_document_root=root)
    runtime = Runtime(settings, embedder_loader=lambda spec: EMBEDDER)
    runtime.heads.priors = ImageNetPriors()  # not the process-wide one other tests have filled
    with TestClient(create_app(runtime=runtime, preload=False)) as client:
        setup_project(client, "1.1700000000", XML)
        # no /predict yet: the prior is built in the background by /setup
        assert eventually(lambda: runtime.heads.priors.status(), timeout=60)
        assert calls == [CLASSES] and runtime.counters.snapshot().get("predict_requests", 0) == 0
        setup_project(client, "1.1700000000", XML)  # Label Studio calls /setup again before each retrieve
        predict(client, tasks[:5])
        setup_project(client, "2.1700000000", XML)  # a second project with the same labels shares it
        assert eventually(lambda: runtime.warmer._pool._work_queue.empty(), timeout=60)
        predict(client, tasks[:5])
    assert calls == [CLASSES] and runtime.heads.priors.built == 1


def test_a_repeated_predict_reads_the_prior_the_vectors_and_the_pool_from_memory(warmed, monkeypatch):
    client, runtime, tasks, truth = warmed
    computed = runtime.heads.prior_cache.computed
    assert computed == len(tasks) == runtime.warmer.prepared["prior_rows"]  # filled by the warm-up
    first = client.post("/predict", json={"tasks": tasks[:60], "project": "1.1700000000"}).content
    assert runtime.heads.prior_cache.computed == computed  # so even the first /predict only reads them
    reads = []
    for owner, name in ((runtime.store, "project_content_keys"), (runtime.cache, "get_many")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    again = client.post("/predict", json={"tasks": tasks[:60], "project": "1.1700000000"}).content
    assert again == first  # the same bytes from the cached prior, vectors and cold-start order
    assert runtime.heads.prior_cache.computed == computed and reads == []
    # new images embedded: the pool is read again (the order appends them), and only they get a prior
    late = [local_task(1000 + t["id"], t["data"]["image"].split("d=")[-1]) for t in tasks[:3]]
    runtime.store.remember_tasks("1", [(t["id"], t["data"]["image"] + "&v=2") for t in tasks[60:63]])
    result = predict(client, tasks[60:63] + late)
    assert "project_content_keys" in reads and all(r["score"] is not None for r in result.values())
    assert runtime.heads.prior_cache.computed == computed  # the late tasks share images already cached


def test_the_tasks_stamp_moves_with_every_task_write_and_only_then(tmp_path):
    from backend.store import Store

    store = Store(tmp_path / "state")
    store.remember_tasks("1", [(1, "/a.png"), (2, "/b.png")])
    stamps = [store.tasks_stamp("1")]
    assert store.tasks_stamp("1") == stamps[0] and store.project_content_keys("1") == []  # reads move nothing
    store.set_content_keys("1", {1: "key-a"})
    stamps.append(store.tasks_stamp("1"))
    store.remember_tasks("1", [(1, "/a2.png")])  # a changed URL forgets the key
    stamps.append(store.tasks_stamp("1"))
    store.remember_tasks("2", [(1, "/z.png")])  # another project
    assert store.tasks_stamp("1") == stamps[-1]
    assert len(set(stamps)) == 3
    store.close()


def test_cached_prior_probabilities_are_the_priors_own_and_follow_its_labels():
    from backend.prior_cache import PriorCache
    from labelers.priors import ClassifierPrior

    rng = np.random.default_rng(3)
    weight, bias = rng.normal(size=(40, 8)).astype(np.float32), rng.normal(size=40).astype(np.float32)
    aggregation = np.zeros((4, 40), np.float32)
    for k in range(4):
        aggregation[k, 10 * k:10 * k + 3] = 1.0
    cats = ClassifierPrior(["a", "b", "c", "d"], weight, bias, aggregation)
    dogs = ClassifierPrior(["a", "b", "c", "e"], weight, bias, aggregation[[0, 1, 3, 2]])  # new label config
    x = rng.normal(size=(6, 8)).astype(np.float32)
    keys = [f"k{i}" for i in range(6)]
    cache = PriorCache()
    first = cache.probabilities(cats, "emb", keys, x)
    assert np.array_equal(first, cats.proba(x)) and cache.computed == 6
    # a later batch in another order, with a task without content key: the cached rows as they were; the
    # other computed afresh (equal up to float32 rounding: BLAS sums a row differently in another batch shape)
    mixed = cache.probabilities(cats, "emb", [keys[4], None, keys[0]], x[[4, 2, 0]])
    assert np.array_equal(mixed[[0, 2]], first[[4, 0]]) and cache.computed == 7
    assert np.allclose(mixed[1], first[2], rtol=1e-5, atol=0)
    assert np.array_equal(cache.probabilities(dogs, "emb", keys, x), dogs.proba(x))  # not the cats' rows
    assert cache.computed == 13
    assert np.array_equal(cache.probabilities(cats, "other-embedder", keys, x), cats.proba(x))
    assert cache.computed == 19
    changed = cats.aggregation.copy()
    changed[1] = 0
    cats.aggregation = changed  # a replaced array: another prior
    assert np.array_equal(cache.probabilities(cats, "emb", keys, x), cats.proba(x)) and cache.computed == 25


def test_the_prior_fingerprint_is_hashed_once_per_prior_and_again_when_what_it_names_is_replaced(monkeypatch):
    import backend.prior_cache as prior_cache
    from backend.prior_cache import PriorCache, prior_fingerprint
    from labelers.priors import ClassifierPrior

    hashed = []
    digest = prior_cache._digest
    monkeypatch.setattr(prior_cache, "_digest", lambda prior, embedder_id: hashed.append(embedder_id)
                        or digest(prior, embedder_id))
    rng = np.random.default_rng(6)
    weight, bias = rng.normal(size=(12, 6)).astype(np.float32), rng.normal(size=12).astype(np.float32)
    cats = ClassifierPrior(["a", "b"], weight, bias, np.eye(2, 12, dtype=np.float32))
    x, keys = rng.normal(size=(3, 6)).astype(np.float32), ["k0", "k1", "k2"]
    cache = PriorCache()
    for _ in range(3):  # three /predict of the same label set: hashed once
        cache.probabilities(cats, "emb", keys, x)
    cache.fill(cats, "emb", keys, x)
    cache.missing(cats, "emb", keys)
    assert hashed == ["emb"] and cache.computed == 3
    first = prior_fingerprint(cats, "emb")
    seen = {first}
    assert prior_fingerprint(cats, "other") not in seen and hashed == ["emb", "other"]  # another embedder
    seen.add(prior_fingerprint(cats, "other"))
    cats.label_names[1] = "c"  # the names (a list) changed in place are still seen: compared, not hashed
    assert prior_fingerprint(cats, "emb") not in seen
    seen.add(prior_fingerprint(cats, "emb"))
    cats.weight = cats.weight * 2  # weights replaced, the sample's rows included
    assert prior_fingerprint(cats, "emb") not in seen
    seen.add(prior_fingerprint(cats, "emb"))
    cats.bias = cats.bias + 1
    assert prior_fingerprint(cats, "emb") not in seen and len(hashed) == 5
    again = ClassifierPrior(["a", "b"], weight, bias, np.eye(2, 12, dtype=np.float32))  # equal content
    assert prior_fingerprint(again, "emb") == first  # the content names it, not the object
    assert np.array_equal(cache.probabilities(again, "emb", keys, x), cache.probabilities(again, "emb", keys, x))
    assert cache.computed == 3 and len(hashed) == 6  # the same rows as `cats` had: read, and hashed once


def test_fill_computes_only_the_rows_missing_under_the_priors_key_and_probabilities_then_reads_them():
    from backend.prior_cache import PriorCache, prior_fingerprint
    from labelers.priors import ClassifierPrior

    rng = np.random.default_rng(5)
    weight, bias = rng.normal(size=(12, 6)).astype(np.float32), rng.normal(size=12).astype(np.float32)
    cats = ClassifierPrior(["a", "b"], weight, bias, np.eye(2, 12, dtype=np.float32))
    dogs = ClassifierPrior(["a", "c"], weight, bias, np.eye(2, 12, 3, dtype=np.float32))
    x = rng.normal(size=(3, 6)).astype(np.float32)
    cache = PriorCache()
    assert cache.missing(cats, "emb", ["k0", "k1"]) == ["k0", "k1"]
    assert cache.fill(cats, "emb", ["k0", "k1"], x[:2]) == 2 and cache.computed == 2
    assert cache.missing(cats, "emb", ["k0", "k1", "k2"]) == ["k2"]
    assert cache.missing(dogs, "emb", ["k0"]) == ["k0"] and cache.missing(cats, "other", ["k0"]) == ["k0"]
    assert cache.fill(cats, "emb", ["k0", "k1", "k2"], x) == 1 and cache.computed == 3
    read = cache.probabilities(cats, "emb", ["k2", "k0"], x[[2, 0]])  # the filled rows: read, not computed
    rows = cache._rows[prior_fingerprint(cats, "emb")]
    assert cache.computed == 3 and np.array_equal(read, np.stack([rows["k2"], rows["k0"]]))
    assert np.allclose(read, cats.proba(x[[2, 0]]), rtol=1e-5, atol=0)


def test_the_cached_prior_probabilities_stay_within_their_bounds():
    from backend.prior_cache import PriorCache
    from labelers.priors import ClassifierPrior

    rng = np.random.default_rng(4)
    priors = [ClassifierPrior([f"l{j}", "x"], rng.normal(size=(5, 3)), rng.normal(size=5),
                              np.eye(2, 5, dtype=np.float32)) for j in range(3)]
    cache = PriorCache(max_images=10, max_priors=2)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    for prior in priors:
        cache.probabilities(prior, "e", [f"k{i}" for i in range(8)], x)
    assert len(cache._rows) == 2  # the least recently used label set was dropped
    cache.probabilities(priors[2], "e", [f"m{i}" for i in range(8)], x)  # 16 > 10 images: starts over
    assert max(len(rows) for rows in cache._rows.values()) <= 10


def test_recent_vectors_are_the_caches_and_stay_within_their_bytes():
    from backend.embedding import RecentVectors

    class Cache:
        def __init__(self):
            self.reads = []

        def get_many(self, embedder_id, keys):
            self.reads.append(list(keys))
            return {k: np.full(4, float(k[1:]), np.float32) for k in keys if k != "kmissing"}

    cache, recent = Cache(), RecentVectors(max_bytes=3 * 16)
    got = recent.get_many(cache, "e", ["k1", "k2", "kmissing"])
    assert sorted(got) == ["k1", "k2"] and got["k2"][0] == 2.0
    assert sorted(recent.get_many(cache, "e", ["k1", "k2"])) == ["k1", "k2"] and len(cache.reads) == 1
    recent.get_many(cache, "other", ["k1"])  # another embedder's vector is another entry
    recent.get_many(cache, "e", ["k3"])      # 4 vectors > 3: the least recently used ("e", "k1") goes
    assert recent.bytes == 3 * 16
    recent.get_many(cache, "e", ["k1", "k2"])
    assert cache.reads[-1] == ["k1"]


def test_a_new_label_config_never_reads_the_prior_scores_cached_for_the_old_one(warmed):
    client, runtime, tasks, truth = warmed
    from labelers.imagenet_prior import map_labels_to_imagenet

    mapping = map_labels_to_imagenet(CLASSES).classes
    old_prior = served_head(runtime).prior  # process-wide per label set: other tests may have changed it
    saved = old_prior.bias
    old_prior.bias = np.zeros_like(saved)
    old_prior.bias[mapping["cat"]] = 12.0
    try:
        before = predict(client, tasks[:5])  # the old label set's rows ("cat") are now cached
    finally:
        old_prior.bias = saved
    assert all(r["result"][0]["value"]["choices"] == ["cat"] for r in before.values())
    reordered = ["dog", *[c for c in CLASSES if c != "dog"]]
    xml = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
           + "".join(f'<Choice value="{c}"/>' for c in reordered) + "</Choices></View>")
    fc, dogs = EMBEDDER.model._fc, mapping["dog"]
    try:
        with torch.no_grad():
            fc.bias[dogs] = 12.0  # the new label set's prior is built from this classifier: every image a dog
        results = client.post("/predict", json={"tasks": tasks[:5], "project": "1.1700000000",
                                                "label_config": xml}).json()["results"]
    finally:
        with torch.no_grad():
            fc.bias.zero_()
    for r in results:
        (region,) = r["result"]  # served from the new prior, not from the old label set's cached rows
        assert region["value"]["choices"] == ["dog"] and region["score"] > 0.5


def test_tasks_embedded_after_a_new_label_config_get_its_prior_from_the_warmer_under_its_own_key(warmed,
                                                                                                  tmp_path):
    """The warmer fills the prior's rows for the project's label set as it is when a task is embedded: after a
    new label config, imported tasks are filled under the new prior's key (their first /predict computes
    nothing), and the old label set's rows are never read for it (the old tasks are computed anew)."""
    from backend.prior_cache import prior_fingerprint
    from labelers.imagenet_prior import map_labels_to_imagenet

    client, runtime, tasks, truth = warmed
    root = tmp_path / "docroot"  # the `pool` fixture's document root
    reordered = ["dog", *[c for c in CLASSES if c != "dog"]]
    xml = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
           + "".join(f'<Choice value="{c}"/>' for c in reordered) + "</Choices></View>")
    new = []
    for i in range(4):
        (root / "imgs" / f"new{i}.png").write_bytes(image(i, 900 + i))
        new.append(local_task(500 + i, f"imgs/new{i}.png"))
    fc, dogs = EMBEDDER.model._fc, map_labels_to_imagenet(reordered).classes["dog"]
    try:
        with torch.no_grad():
            fc.bias[dogs] = 12.0  # the new label set's prior is built from this classifier: every image a dog
        setup_project(client, "1.1700000000", xml)
        filled = runtime.warmer.prepared["prior_rows"]
        resp = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": new,
                                             "project": {"id": 1, "label_config": xml}})
        assert resp.status_code == 200
        assert eventually(lambda: runtime.warmer.prepared["prior_rows"] == filled + len(new), timeout=60)
        version = runtime.store.get_version("1", runtime.store.current_version("1"))
        head = runtime.heads.get("1", version, parse_label_config(xml), EMBEDDER)  # the prior of `reordered`
        keys = {runtime.store.content_keys("1", [t["id"]])[t["id"]][1] for t in new}
        cached = set(runtime.heads.prior_cache._rows[prior_fingerprint(head.prior, EMBEDDER.id)])
        assert cached == keys  # the new label set's rows: only the tasks embedded since it is the project's
        computed = runtime.heads.prior_cache.computed
        fresh = client.post("/predict", json={"tasks": new, "project": "1.1700000000",
                                              "label_config": xml}).json()["results"]
        assert runtime.heads.prior_cache.computed == computed  # read, not computed
        old = client.post("/predict", json={"tasks": tasks[:5], "project": "1.1700000000",
                                            "label_config": xml}).json()["results"]
        assert runtime.heads.prior_cache.computed == computed + 5  # the old label set's rows are not its own
    finally:
        with torch.no_grad():
            fc.bias.zero_()
    for r in fresh + old:
        (region,) = r["result"]  # the new prior's probabilities, not the old label set's
        assert region["value"]["choices"] == ["dog"] and region["score"] > 0.5
