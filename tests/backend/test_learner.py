"""The learner behind the backend's probabilities (backend/learners.py): head, mix (head + label spreading over
the project's k-NN graph) or lp; how it reaches the scores, the version name, new tasks and the fallback."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from backend.config import ConfigError, load_settings
from backend.heads import label_probabilities
from backend.labels import LabelConfigError, parse_label_config
from backend.learner_fit import PoolLearner
from backend.learners import GraphCache, PoolScores, StrategySpec, parse_strategy
from backend.predictor import PredictorRules
from backend.status import render
from labelers.strategies import STRATEGIES
from tests.backend.conftest import CHOICES_XML, annotation_event, local_task, png, setup_project

TASKS = [local_task(i + 1, f"imgs/{name}{k}.png") for i, (name, k) in
         enumerate([(n, k) for n in ("red", "green", "blue") for k in range(3)])]
LABELS = {t["id"]: re.match(r"[a-z]+", t["data"]["image"].split("/")[-1]).group(0) for t in TASKS}


class _Store:
    def __init__(self, keys):
        self.keys = keys

    def project_content_keys(self, project):
        return list(self.keys)


class _Cache:
    def __init__(self, vectors):
        self.vectors = vectors

    def get_many(self, embedder_id, keys):
        return {k: self.vectors[k] for k in keys if k in self.vectors}


def _softmax_of_share(v):
    share = v / v.sum(axis=1, keepdims=True)
    e = np.exp((share - share.max(axis=1, keepdims=True)) / 0.1)
    return e / e.sum(axis=1, keepdims=True)


# Four images in two directions, a fifth embedded after the graph; "a" is labelled x, "d" is labelled y.
POINTS = {"a": [1.0, 0.0], "b": [0.95, 0.31], "c": [0.31, 0.95], "d": [0.0, 1.0]}
NEW = np.asarray([[0.8, 0.6]], np.float32)


def _by_hand():
    """Label spreading on POINTS written out: W = cos^3 (all pairs: k = 3 = N - 1), S = D^-1/2 W D^-1/2,
    40 steps of F <- 0.9 S F + 0.1 Y with Y one-hot per labelled row (one label per class: no balancing)."""
    x = np.asarray(list(POINTS.values()), np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.clip(x @ x.T, 0, None) ** 3
    np.fill_diagonal(w, 0)
    d = 1 / np.sqrt(w.sum(axis=1))
    s = d[:, None] * w * d[None, :]
    y = np.zeros((4, 2))
    y[0, 0] = y[3, 1] = 1
    f = y.copy()
    for _ in range(40):
        f = 0.9 * s @ f + 0.1 * y
    new = NEW / np.linalg.norm(NEW)
    weights = np.clip(new @ x.T, 0, None) ** 3  # its k = 3 nearest of 4: c is the farthest, dropped
    top = np.argsort(-weights[0])[:3]
    share = f / f.sum(axis=1, keepdims=True)
    return _softmax_of_share(f), _softmax_of_share(weights[:, top] @ share[top])


def _fit(folder, learner="mix", labels=(0, 1), keys=("a", "d")):
    vectors = {k: np.asarray(v, np.float32) for k, v in POINTS.items()}
    target = SimpleNamespace(multiple=False, labels=("x", "y"))
    pool = PoolLearner(_Store(sorted(POINTS)), _Cache(vectors), GraphCache(folder))
    return pool.fit("p", learner, target, "emb", list(keys), np.asarray(labels)), vectors


def test_mix_is_the_mean_of_the_head_and_label_spreading_by_hand(tmp_path):
    fit, vectors = _fit(tmp_path, "mix")
    pool_hand, new_hand = _by_hand()
    head = np.asarray([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    got = fit.pool.combine(head, list(POINTS), np.stack(list(vectors.values())), _Cache(vectors).get_many)
    assert fit.used == "mix" and fit.reason is None
    np.testing.assert_allclose(got, 0.5 * (head + pool_hand), atol=1e-5)
    # "b" (near the x label) leans x, "c" leans y: the spreading part is not uniform
    assert pool_hand[1, 0] > 0.5 > pool_hand[2, 0]
    # a task embedded after the graph: its lp part from its 3 nearest graph rows
    new = fit.pool.combine(np.asarray([[0.3, 0.7]]), ["e"], NEW, _Cache(vectors).get_many)
    np.testing.assert_allclose(new, 0.5 * (np.asarray([[0.3, 0.7]]) + new_hand), atol=1e-5)
    lp, _ = _fit(tmp_path / "lp", "lp")
    np.testing.assert_allclose(lp.pool.combine(head, list(POINTS), np.stack(list(vectors.values())),
                                               _Cache(vectors).get_many), pool_hand, atol=1e-5)


def _mix_counting_searches(tmp_path, monkeypatch):
    """Return (a mix fit, its vectors, the hand-computed new-task mix, the list each neighbour search appends
    its row count to)."""
    import labelers.propagation as propagation

    fit, vectors = _fit(tmp_path, "mix")
    _, new_hand = _by_hand()
    searched = []
    real = propagation.new_neighbours
    monkeypatch.setattr(propagation, "new_neighbours", lambda graph, x: searched.append(len(x)) or real(graph, x))
    return fit, vectors, new_hand, searched


def test_a_task_embedded_after_the_graph_is_searched_once_per_content_key(tmp_path, monkeypatch):
    fit, vectors, new_hand, searched = _mix_counting_searches(tmp_path, monkeypatch)
    head = np.asarray([[0.3, 0.7], [0.3, 0.7], [0.9, 0.1]])
    features = np.concatenate([NEW, NEW, np.asarray([vectors["a"]])])
    first = fit.pool.combine(head, ["e", None, "a"], features, _Cache(vectors).get_many)
    again = fit.pool.combine(head, [None, "e", "a"], features, _Cache(vectors).get_many)
    np.testing.assert_allclose(first[0], 0.5 * (head[0] + new_hand[0]), atol=1e-5)
    assert np.array_equal(again[1], first[0])  # "e" read back, not searched again
    np.testing.assert_allclose(again[0], first[1], atol=1e-6)  # a task without content key: searched each time
    assert searched == [2, 1]  # "e" and the keyless one, then the keyless one only; "a" is in the graph


def test_one_class_or_a_failing_graph_falls_back_to_the_head_loudly(tmp_path, monkeypatch, caplog):
    fit, _ = _fit(tmp_path, "mix", labels=(0, 0))
    assert fit.used == "head" and fit.pool is None and "1 class" in fit.reason
    monkeypatch.setattr("labelers.propagation.knn_graph", lambda *a, **k: (_ for _ in ()).throw(MemoryError("x")))
    with caplog.at_level(logging.ERROR, logger="backend.learners"):
        fit, _ = _fit(tmp_path / "fails", "mix")
    assert fit.used == "head" and "label spreading failed (MemoryError" in fit.reason
    assert any("serving the head's probabilities" in r.getMessage() for r in caplog.records)


def test_strategy_modifiers_are_parsed_or_refused_naming_the_accepted_values():
    assert parse_strategy("margin+mix", STRATEGIES) == StrategySpec("margin", "mix")
    assert parse_strategy("entropy", STRATEGIES) == StrategySpec("entropy")
    assert parse_strategy("margin+kmeans+mix", STRATEGIES) == StrategySpec("margin", "mix", "kmeans")
    with pytest.raises(ValueError, match=r"\+balance not served.*accepted: 'margin'"):
        parse_strategy("margin+balance", STRATEGIES)
    with pytest.raises(ValueError, match="two learners"):
        parse_strategy("margin+mix+lp", STRATEGIES)
    with pytest.raises(ConfigError, match="LABELLOOP_STRATEGY.*marginn"):
        load_settings(env={"LABELLOOP_STRATEGY": "marginn+mix"})
    with pytest.raises(ConfigError, match="learner"):
        load_settings(env={"LABELLOOP_LEARNER": "mixx"})
    settings = load_settings(env={"LABELLOOP_STRATEGY": "least+lp"})
    rules = PredictorRules(settings, None)
    assert settings.learner == "mix" and rules.strategy(None) == "least" and rules.learner(None) == "lp"
    assert rules.learner({"learner": "head"}) == "head"  # the project's choice over the operator's
    assert rules.learner({"strategy": "margin+mix"}) == "mix"
    assert PredictorRules(load_settings(env={}), None).learner(None) == "mix"  # the default
    with pytest.raises(LabelConfigError, match="names learner 'mix' but extra_params learner is 'head'"):
        rules.learner({"strategy": "margin+mix", "learner": "head"})


# -- through the backend ----------------------------------------------------------------------------------------
def _predict(client, tasks=TASKS):
    resp = client.post("/predict", json={"tasks": tasks, "project": "1.1", "label_config": CHOICES_XML})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def _train(client, runtime, tasks):
    for offset, task in enumerate(tasks):
        resp = client.post("/webhook", json=annotation_event(100 + offset, task, LABELS[task["id"]]))
        assert resp.status_code == 201, resp.text
    assert runtime.queue.wait_idle(120)


def published_note(runtime, project: str = "1") -> str:
    """Return the note of the run that published the served version (not /metrics' last run: a burst's second
    run finds the training set unchanged and publishes nothing, with a note of its own)."""
    served = runtime.store.current_version(project)
    published = [r for r in runtime.store.runs(project) if r["model_version"] == served]
    assert len(published) == 1, published
    return published[0]["note"] or ""


def versions_around_a_setup(client, runtime, **extra) -> tuple[str, str]:
    """Train on one red, green and blue task, then send Label Studio's /setup with `extra` as extra_params;
    return the served version before and after the retrain it queues."""
    setup_project(client)
    _predict(client)
    _train(client, runtime, [TASKS[0], TASKS[3], TASKS[6]])
    before = runtime.store.current_version("1")
    setup_project(client, **extra)
    assert runtime.queue.wait_idle(120)
    return before, runtime.store.current_version("1")


def _margin(probs):
    part = np.sort(probs, axis=1)
    return part[:, -1] - part[:, -2]


def _served(runtime):
    version = runtime.store.get_version("1", runtime.store.current_version("1"))
    target = parse_label_config(CHOICES_XML)
    head = runtime.heads.get("1", version, target, runtime.embeddings.embedder(runtime.store.get_project("1")))
    return version, target, head


def test_scores_follow_the_learner_and_the_version_names_it(make_client, docroot):
    annotated = [TASKS[0], TASKS[3], TASKS[6]]  # one per class
    results = {}
    for learner in ("head", "mix"):
        with make_client(local_files_document_root=docroot, learner=learner,
                         model_dir=docroot.parent / f"md-{learner}") as (client, runtime):
            setup_project(client)
            _predict(client)  # embeds the pool
            _train(client, runtime, annotated)
            results[learner] = _predict(client)
            version, target, head = _served(runtime)
            metrics = client.get("/metrics").json()["projects"]["1"]
            if learner == "mix":
                pool = PoolScores.load(version.head_dir)
                keys = [runtime.store.content_keys("1", [t["id"]])[t["id"]][1] for t in TASKS]
                vectors = runtime.cache.get_many(pool.embedder_id, keys)
                features = np.stack([vectors[k] for k in keys])
                lp = np.stack([_softmax_of_share(pool.scores[[pool.row[k]]])[0] for k in keys])
                mixed = 0.5 * (label_probabilities(head, target, features) + lp)
                graphs_built = runtime.trainer.learner.graphs.built
                _train(client, runtime, [TASKS[1]])  # same pool: the graph is reused
                assert runtime.trainer.learner.graphs.built == graphs_built == 1
    head_versions = {r["model_version"] for r in results["head"]}
    mix_versions = {r["model_version"] for r in results["mix"]}
    assert len(head_versions) == 1 and "-mix-" not in head_versions.pop()
    assert len(mix_versions) == 1 and re.search(r"-mix-p1-r\d+$", mix_versions.pop())
    assert metrics["learner"]["used"] == "mix" and metrics["learner"]["fallback"] is None
    np.testing.assert_allclose([r["score"] for r in results["mix"]], _margin(mixed), atol=1e-5)
    assert [r["score"] for r in results["mix"]] != [r["score"] for r in results["head"]]


def test_tasks_embedded_after_the_graph_get_the_mix_from_their_neighbours(make_client, docroot):
    from labelers.propagation import KnnGraph, new_neighbours, predict_from_neighbours
    from labelers.similarity import normalize

    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        _predict(client)
        _train(client, runtime, [TASKS[0], TASKS[3], TASKS[6]])
        for i, color in enumerate([(200, 40, 40), (40, 40, 200)]):
            (docroot / "imgs" / f"late{i}.png").write_bytes(png(color, noise=20, seed=50 + i))
        late = [local_task(50 + i, f"imgs/late{i}.png") for i in range(2)]
        got = _predict(client, late)
        version, target, head = _served(runtime)
        pool = PoolScores.load(version.head_dir)
        keys = [runtime.store.content_keys("1", [t["id"]])[t["id"]][1] for t in late]
        assert not set(keys) & set(pool.keys)  # really new since the graph
        cached = runtime.cache.get_many(pool.embedder_id, pool.keys + keys)
        graph = KnnGraph(None, normalize(np.stack([cached[k] for k in pool.keys])), pool.k, pool.power)
        features = np.stack([cached[k] for k in keys])
        lp = predict_from_neighbours(pool.scores, new_neighbours(graph, features))
        expected = _margin(0.5 * (label_probabilities(head, target, features) + lp))
    assert all("-mix-" in r["model_version"] for r in got)
    np.testing.assert_allclose([r["score"] for r in got], expected, atol=1e-5)


def test_one_annotated_class_serves_the_head_and_says_so(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        _predict(client)
        _train(client, runtime, [TASKS[0], TASKS[1]])  # both red
        got = _predict(client)
        metrics = client.get("/metrics").json()
        note = published_note(runtime)
    learner = metrics["projects"]["1"]["learner"]
    assert learner["configured"] == "mix" and learner["used"] == "head" and "1 class" in learner["fallback"]
    assert all("-mix-" not in r["model_version"] and r["score"] is not None for r in got)
    assert "learner mix not used" in note
    console = Console(record=True, width=300)
    render(metrics, {"details": []}, console)
    assert "head (mix not used: annotations of 1 class(es)" in console.export_text()


def test_changing_the_learner_retrains_into_a_new_version(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        mixed, after = versions_around_a_setup(client, runtime, learner="head")
        got = _predict(client)
    assert "-mix-" in mixed and "-mix-" not in after and after != mixed
    assert {r["model_version"] for r in got} == {after}


def test_kmeans_puts_a_diverse_batch_of_open_tasks_first_then_the_strategy_order(make_client, docroot):
    from backend.cold_start import project_embeddings, project_seed
    from labelers.strategies import select_batch

    annotated = [TASKS[0], TASKS[3], TASKS[6]]
    with make_client(local_files_document_root=docroot, strategy="margin+kmeans", kmeans_batch=3) as (client,
                                                                                                      runtime):
        setup_project(client)
        _predict(client)
        _train(client, runtime, annotated)
        got = _predict(client)
        version, target, head = _served(runtime)
        pool = PoolScores.load(version.head_dir)
        keys, features = project_embeddings(runtime.store, runtime.cache, "1", pool.embedder_id)
        task_key = {t["id"]: runtime.store.content_keys("1", [t["id"]])[t["id"]][1] for t in TASKS}
    lp = _softmax_of_share(pool.scores[[pool.row[k] for k in keys]])
    mixed = 0.5 * (label_probabilities(head, target, features) + lp)
    labelled = {task_key[t["id"]] for t in annotated}
    open_rows = np.asarray([i for i, k in enumerate(keys) if k not in labelled])
    picks = [keys[i] for i in open_rows[select_batch(mixed[open_rows], 3, "margin", features=features[open_rows],
                                                     diversity="kmeans", seed=project_seed("1"))]]
    order = sorted(range(len(TASKS)), key=lambda i: got[i]["score"])
    first = [task_key[TASKS[i]["id"]] for i in order[:3]]
    assert all(re.search(r"-mix-kmeans-p1-r\d+$", r["model_version"]) for r in got)
    assert first == picks and not set(first) & labelled
    assert len({LABELS[TASKS[i]["id"]] for i in order[:3]}) == 3  # one of each colour: the batch is diverse
    assert [got[i]["score"] for i in order[:3]] == [0.0, 0.1, 0.2]  # rank / (pool + 1)
    margin = dict(zip(keys, _margin(mixed)))
    rest = [margin[task_key[TASKS[i]["id"]]] for i in order[3:]]
    assert rest == sorted(rest)  # then the strategy's order
    assert all(0 < r["result"][0]["score"] <= 1 for r in got)  # the region keeps its probability


def test_prepare_searches_the_tasks_outside_the_graph_once_and_combine_then_only_reads(tmp_path, monkeypatch):
    fit, vectors, new_hand, searched = _mix_counting_searches(tmp_path, monkeypatch)
    features = np.concatenate([NEW, np.asarray([vectors["a"]]), NEW])
    assert fit.pool.unsearched(["e", "a", "f"]) == ["e", "f"]
    assert fit.pool.prepare(["e", "a", "e"], features, _Cache(vectors).get_many) == 1  # "a" is in the graph
    assert searched == [1] and fit.pool.prepare(["e"], NEW, _Cache(vectors).get_many) == 0
    assert fit.pool.unsearched(["e", "a", "f"]) == ["f"]
    got = fit.pool.combine(np.asarray([[0.3, 0.7]]), ["e"], NEW, _Cache(vectors).get_many)
    assert searched == [1]  # read from the memo
    np.testing.assert_allclose(got, 0.5 * (np.asarray([[0.3, 0.7]]) + new_hand), atol=1e-5)
    head_only = PoolScores("head", [], None, ("x", "y"), "emb", 3, 3.0)
    assert head_only.prepare(["e"], NEW, _Cache(vectors).get_many) == 0


def test_the_warmer_searches_imported_and_late_tasks_before_their_first_predict(make_client, docroot, monkeypatch):
    """Tasks imported after the graph was built get their label spreading rows from the warmer, and after a
    retrain (a new version, the same graph) the warmer searches them again for it: /predict only reads."""
    import labelers.propagation as propagation
    from tests.waiting import eventually

    more = []  # a pool larger than the graph's k, so that the graph built is the one a retrain reuses
    for i, color in enumerate([(220, 20, 20), (20, 200, 20), (20, 20, 220)] * 6):  # k = min(20, pool - 1)
        (docroot / "imgs" / f"more{i}.png").write_bytes(png(color, noise=12, seed=20 + i))
        more.append(local_task(20 + i, f"imgs/more{i}.png"))
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        _predict(client, TASKS + more)
        _train(client, runtime, [TASKS[0], TASKS[3], TASKS[6]])
        for i, color in enumerate([(200, 40, 40), (40, 40, 200)]):
            (docroot / "imgs" / f"late{i}.png").write_bytes(png(color, noise=20, seed=50 + i))
        late = [local_task(50 + i, f"imgs/late{i}.png") for i in range(2)]
        resp = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": late,
                                             "project": {"id": 1, "label_config": CHOICES_XML}})
        assert resp.status_code == 200
        assert eventually(lambda: runtime.warmer.prepared["late_rows"] == 2, timeout=60)
        searched = []
        real = propagation.new_neighbours
        monkeypatch.setattr(propagation, "new_neighbours",
                            lambda graph, x: searched.append(len(x)) or real(graph, x))
        first = _predict(client, late)
        assert searched == [] and all("-mix-" in r["model_version"] for r in first)
        before, built = runtime.store.current_version("1"), runtime.trainer.learner.graphs.built
        _train(client, runtime, [TASKS[1]])  # 2 new of 27: the graph is reused, its late rows start empty
        assert runtime.store.current_version("1") != before and runtime.trainer.learner.graphs.built == built
        assert eventually(lambda: runtime.warmer.prepared["late_rows"] == 4, timeout=60)
        assert searched == [2]  # by the warmer, for the new version
        again = _predict(client, late)
        assert searched == [2] and {r["model_version"] for r in again} == {runtime.store.current_version("1")}
        version, target, head = _served(runtime)
        pool = runtime.heads.pool("1", version)
        keys = [runtime.store.content_keys("1", [t["id"]])[t["id"]][1] for t in late]
        features = np.stack([runtime.cache.get_many(pool.embedder_id, keys)[k] for k in keys])
        pool._late.clear()  # what a /predict computes itself when the warmer has not got there
        expected = _margin(pool.combine(label_probabilities(head, target, features), keys, features,
                                        runtime.cache.get_many))
    assert searched == [2, 2]
    assert [r["score"] for r in again] == [round(float(s), 6) for s in expected]


def test_a_retrain_ending_after_the_warmer_closed_is_not_failed_by_its_preparation(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        runtime.warmer.close()
        assert runtime.warmer.prepare_served("1") is False
        runtime.warmer._closing.clear()  # shut down, but not yet flagged: the executor refuses the work
        assert runtime.warmer.prepare_served("1") is False
