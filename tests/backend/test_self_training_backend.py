"""The "+self" strategy modifier of the backend (backend/learners.py parse_strategy, backend/learner_fit.py
PoolLearner._self_train): the head refitted, warm-started, on the annotations plus the mix's surest pool rows."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest

from backend.config import ConfigError, load_settings
from backend.labels import LabelConfigError
from backend.learner_fit import PoolLearner
from backend.learners import GraphCache, StrategySpec, parse_strategy
from backend.predictor import PredictorRules
from labelers.head import ClassifierHead
from labelers.self_training import DEFAULT_PER_CLASS, confident_pseudo_labels
from labelers.strategies import STRATEGIES
from tests.backend.conftest import CHOICES_XML
from tests.backend.test_learner import (TASKS, _Cache, _predict, _Store, _train, published_note, setup_project,
                                       versions_around_a_setup)


def test_self_is_parsed_and_refused_without_the_mix_learner():
    assert parse_strategy("margin+kmeans+mix+self", STRATEGIES) == StrategySpec("margin", "mix", "kmeans",
                                                                                DEFAULT_PER_CLASS)
    assert parse_strategy("margin+self30", STRATEGIES).self_train == 30
    assert parse_strategy("margin+kmeans", STRATEGIES).self_train == 0
    with pytest.raises(ValueError, match="head learner has no pool scores"):
        parse_strategy("margin+self+head", STRATEGIES)
    with pytest.raises(ValueError, match="lp learner serves label spreading alone"):
        parse_strategy("margin+lp+self", STRATEGIES)
    with pytest.raises(ValueError, match=r"\+self0 not served"):
        parse_strategy("margin+self0", STRATEGIES)
    with pytest.raises(ValueError, match="repeats a modifier"):
        parse_strategy("margin+self+self5", STRATEGIES)
    with pytest.raises(ValueError, match=r"\+balance not served"):  # the existing refusals stay
        parse_strategy("margin+self+balance", STRATEGIES)
    # the learner may come from elsewhere than the strategy: refused at start-up and at /setup (422) too
    with pytest.raises(ConfigError, match="head learner has no pool scores"):
        load_settings(env={"LABELLOOP_STRATEGY": "margin+self", "LABELLOOP_LEARNER": "head"})
    rules = PredictorRules(load_settings(env={}), None)
    assert rules.self_train({"strategy": "margin+kmeans+self7"}) == 7 and rules.self_train(None) == 0
    assert rules.learner({"strategy": "margin+self"}) == "mix"  # the default learner
    with pytest.raises(LabelConfigError, match="head learner has no pool scores"):
        rules.learner({"strategy": "margin+self", "learner": "head"})


# Two directions in 4-D; class x has ONE annotation, class y three; 12 unlabelled rows near each direction.
def _pool():
    rng = np.random.default_rng(0)
    vectors, labeled, y = {}, [], []
    for c, axis in enumerate((0, 1)):
        for i in range(13 if c == 0 else 15):
            v = np.full(4, 0.05) + rng.normal(0, 0.05, 4)
            v[axis] = 1.0
            key = f"{'xy'[c]}{i:02d}"
            vectors[key] = v.astype(np.float32)
            if i < (1 if c == 0 else 3):
                labeled.append(key)
                y.append(c)
    return vectors, labeled, np.asarray(y)


def _head_fit(x, labels, warm=None):
    return ClassifierHead(["x", "y"], l2=1.0, calibrate=False).fit(x, labels, warm_start=warm)


def _self_fit(folder, per_class=5, refit=_head_fit):
    vectors, labeled, y = _pool()
    features = np.stack([vectors[k] for k in labeled])
    head = _head_fit(features, y)
    target = SimpleNamespace(multiple=False, labels=("x", "y"))
    learner = PoolLearner(_Store(sorted(vectors)), _Cache(vectors), GraphCache(folder))
    fit = learner.fit("p", "mix", target, "emb", labeled, y, head, self_train=per_class, features=features,
                      refit=refit)
    return fit, head, vectors, labeled, y, features


def test_the_self_head_is_fitted_on_the_annotations_plus_the_mix_surest_pool_rows(tmp_path):
    fit, head, vectors, labeled, y, features = _self_fit(tmp_path, per_class=5)
    keys = sorted(vectors)
    pool = np.stack([vectors[k] for k in keys])
    mixed = fit.pool.combine(head.predict_proba(pool), keys, pool, _Cache(vectors).get_many)
    rows, classes = confident_pseudo_labels(mixed, [keys.index(k) for k in labeled], 5)
    assert fit.used == "mix" and fit.reason is None and fit.tag == "mix-self"
    assert fit.pseudo_labels == len(rows) == 10 and sorted(classes.tolist()) == [0] * 5 + [1] * 5
    expected = _head_fit(np.concatenate([features, pool[rows]]), np.concatenate([y, classes]), head)
    x_rows = pool[[i for i, k in enumerate(keys) if k.startswith("x") and k not in labeled]]
    np.testing.assert_allclose(fit.head.predict_proba(x_rows), expected.predict_proba(x_rows), atol=1e-6)
    # class x had one annotation: refitted on its 5 confident rows, the head is surer of the x cluster
    assert (fit.head.predict_proba(x_rows)[:, 0] > head.predict_proba(x_rows)[:, 0]).all()


def test_a_failing_self_training_keeps_the_plain_head_loudly(tmp_path, caplog):
    def broken(*args):
        raise MemoryError("no room")

    with caplog.at_level(logging.ERROR, logger="backend.learners"):
        fit, *_ = _self_fit(tmp_path, refit=broken)
    assert fit.used == "mix" and fit.head is None and fit.pseudo_labels is None and fit.tag == "mix"
    assert "+self not applied (MemoryError: no room)" in fit.reason
    assert fit.state("v")["fallback"] == fit.reason and fit.state("v")["configured_self_train"] == 5
    assert any("+self not applied" in r.getMessage() for r in caplog.records)


# -- through the backend ----------------------------------------------------------------------------------------
def test_served_self_version_names_it_and_reports_the_pseudo_labels(make_client, docroot):
    with make_client(local_files_document_root=docroot, strategy="margin+kmeans+mix+self",
                     kmeans_batch=3) as (client, runtime):
        setup_project(client)
        _predict(client)
        _train(client, runtime, [TASKS[0], TASKS[3], TASKS[6]])  # one per class: 6 open tasks
        got = _predict(client)
        metrics = client.get("/metrics").json()["projects"]["1"]
        note = published_note(runtime)
    assert all(re.search(r"-mix-self-kmeans-p1-r\d+$", r["model_version"]) for r in got)
    learner = metrics["learner"]
    assert learner["used"] == "mix" and learner["fallback"] is None and learner["pseudo_labels"] == 6
    assert "3 annotations + 6 pseudo-labels" in note


def test_served_self_failure_publishes_the_plain_head_and_says_so(make_client, docroot, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("broken")

    monkeypatch.setattr("labelers.self_training.confident_pseudo_labels", broken)
    with make_client(local_files_document_root=docroot, strategy="margin+mix+self") as (client, runtime):
        setup_project(client)
        _predict(client)
        _train(client, runtime, [TASKS[0], TASKS[3], TASKS[6]])
        got = _predict(client)
        metrics = client.get("/metrics").json()["projects"]["1"]
        note = published_note(runtime)
    assert all(re.search(r"-mix-p1-r\d+$", r["model_version"]) for r in got)  # no "-self-"
    assert "+self not applied (ValueError: broken)" in metrics["learner"]["fallback"]
    assert "+self not applied" in note


def test_asking_for_self_in_extra_params_retrains_into_a_self_version_and_head_is_a_422(make_client, docroot):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        before, after = versions_around_a_setup(client, runtime, strategy="margin+self2")
        learner = client.get("/metrics").json()["projects"]["1"]["learner"]
        refused = client.post("/setup", json={"project": "1.1700000000", "schema": CHOICES_XML,
                                              "hostname": "http://localhost:8080", "access_token": "x" * 40,
                                              "extra_params": {"strategy": "margin+self", "learner": "head"}})
    assert "-self-" not in before and re.search(r"-mix-self-p1-r\d+$", after)
    assert learner["configured_self_train"] == 2 and learner["pseudo_labels"] == 6  # 2 per class, 3 classes
    assert refused.status_code == 422 and "head learner has no pool scores" in refused.text
