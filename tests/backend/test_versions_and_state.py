"""One version per burst, accuracy per version, warm-up progress and retries, `labelloop status`, bad input."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from tenacity import wait_fixed

from backend import accuracy as acc
from backend import status as report
from backend import warmer as warmer_module
from tests.backend.conftest import CHOICES_XML, annotation_event, local_task, png, setup_project
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.backend.test_webhook_training import LABELS, TASKS, annotate_all, predict, runs
from tests.waiting import eventually


# -- accuracy maths ---------------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_hand_computed_value():
    # 8/10: p=0.8, z^2=3.8415; centre=(0.8+0.19208)/1.38415=0.71675, half=1.96*sqrt(0.016+0.0096039)/1.38415
    low, high = acc.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert acc.wilson_interval(0, 5)[0] == 0.0 and acc.wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        acc.wilson_interval(0, 0)


class Centroids:
    """Nearest-centroid head: makes the held-out predictions computable by hand."""

    fits = 0

    def fit(self, x, y):
        Centroids.fits += 1
        self.classes = np.unique(y)
        self.centres = np.stack([x[y == c].mean(axis=0) for c in self.classes])
        return self


def centroid_probs(head, x):
    d = ((x[:, None, :] - head.centres[None]) ** 2).sum(-1)
    probs = np.zeros((len(x), 2))
    probs[np.arange(len(x)), head.classes[d.argmin(axis=1)]] = 1.0
    return probs


def test_k_fold_accuracy_counts_the_one_mislabelled_task_and_bounds_the_folds():
    x = np.concatenate([np.zeros((10, 1)), np.ones((10, 1)) * 10]) + np.linspace(0, 0.5, 20)[:, None]
    y = np.array([0] * 10 + [1] * 10)
    y[3] = 1  # a task at 0 labelled 1: held out, the others say 0, so it is the one miss
    Centroids.fits = 0
    result = acc.estimate_accuracy(x, y, Centroids, centroid_probs, multiple=False)
    assert (result["correct"], result["n"], result["folds"]) == (19, 20, acc.MAX_FOLDS)
    assert Centroids.fits == acc.MAX_FOLDS  # its cost: one extra fit per fold, bounded
    assert (result["low"], result["high"]) == pytest.approx(acc.wilson_interval(19, 20))
    assert acc.estimate_accuracy(x[:3], y[:3], Centroids, centroid_probs, multiple=False) is None


def test_folds_shrink_for_small_counts():
    assert [acc.folds_for(n) for n in (4, 6, 9, 10, 100)] == [2, 3, 4, 5, 5]
    assert acc.folds_for(9, largest_class=3) == 3  # stratified: no more folds than the largest class has


# -- one version per burst, only when something changed ------------------------------------------------------
def test_start_training_with_nothing_new_publishes_nothing(make_client, docroot, caplog):
    caplog.set_level(logging.INFO)
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        before = client.get("/versions").json()["versions"]
        client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert runtime.queue.wait_idle(120)
        after = client.get("/versions").json()["versions"]
        last = client.get("/metrics").json()["projects"]["1"]["training"]["last_run"]
        # a new annotation changes the training set: exactly one more version
        client.post("/webhook", json=annotation_event(999, TASKS[0], "green"))
        assert runtime.queue.wait_idle(120)
        final = client.get("/versions").json()["versions"]
    assert after == before and last["status"] == "skipped" and "training set unchanged" in last["note"]
    assert "nothing published" in caplog.text
    assert len(final) == len(before) + 1


def test_burst_with_label_studios_own_start_training_yields_one_version(make_client, docroot):
    # Label Studio's "train on submit" posts START_TRAINING after the annotation webhooks; each reads the
    # same annotations from Label Studio, so however the runs split, one version comes out.
    ls_tasks = [dict(t, annotations=[{"id": 100 + i, "result": annotation_event(0, t, LABELS[t["id"]])
                                      ["annotation"]["result"], "was_cancelled": False}])
                for i, t in enumerate(TASKS)]
    fake = FakeLabelStudio(image=png(), tasks=ls_tasks)
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN,
                         warm_cache=False, retrain_debounce_seconds=1.0) as (client, runtime):
            setup_project(client)
            for i, task in enumerate(TASKS):
                client.post("/webhook", json=annotation_event(100 + i, task, LABELS[task["id"]]))
                client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
            assert runtime.queue.wait_idle(120)
            # Label Studio's START_TRAINING of the last submit, arriving after the run: nothing new in it
            client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
            assert runtime.queue.wait_idle(120)
            versions = client.get("/versions").json()["versions"]
            statuses = [r["status"] for r in runs(runtime)]
    assert len(versions) == 2, statuses  # r0 and one trained version
    assert statuses.count("succeeded") == 1 and statuses[0] == "skipped"


# -- accuracy you can see ---------------------------------------------------------------------------------------
def test_each_published_version_carries_its_accuracy(make_client, docroot, caplog):
    caplog.set_level(logging.INFO)
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        body = client.get("/versions?project=1").json()
        metrics = client.get("/metrics").json()["projects"]["1"]
    assert body["versions"] == [d["model_version"] for d in body["details"]]  # LS still reads "versions"
    r0, trained = body["details"][0], body["details"][-1]
    assert r0["accuracy"] is None
    estimate = trained["accuracy"]
    assert estimate["n"] == len(TASKS) and estimate["folds"] == 3  # 9 tasks, 3 per class: 3 stratified folds
    assert estimate["accuracy"] == estimate["correct"] / len(TASKS)
    assert (estimate["low"], estimate["high"]) == pytest.approx(acc.wilson_interval(estimate["correct"], 9))
    assert metrics["accuracy"] == estimate
    assert acc.describe(estimate) in caplog.text


# -- project version in Label Studio --------------------------------------------------------------------------------
def test_project_version_follows_after_predict_without_a_refused_update(make_client, docroot, caplog):
    caplog.set_level(logging.INFO)
    fake = FakeLabelStudio(image=png(), tasks=[], versions_with_predictions=set())
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN,
                         warm_cache=False) as (client, runtime):
            runtime.version_sync.delays = (0.0, 0.2)
            setup_project(client)
            annotate_all(client)
            assert runtime.queue.wait_idle(120)
            v1 = runtime.store.current_version("1")
            fake.versions_with_predictions.add(v1)
            predict(client)
            assert eventually(lambda: fake.project_versions == {1: v1})
            # The backend records Label Studio's version once the PATCH has answered: wait for that as well.
            assert eventually(lambda: client.get("/metrics").json()["projects"]["1"]
                              ["label_studio_model_version"] == v1)
    patches = [r for r in fake.requests if r["method"] == "PATCH"]
    assert len(patches) == 1
    assert "did not take model_version" not in caplog.text


def test_version_switch_waits_until_label_studio_lists_the_stored_predictions(make_client, docroot, caplog):
    # Label Studio stores a /predict answer after receiving it; for 200 tasks that takes seconds, during which
    # it would refuse the switch (HTTP 400). The backend asks which versions have predictions first.
    caplog.set_level(logging.INFO)
    fake = FakeLabelStudio(image=png(), tasks=[], versions_with_predictions=set())
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN,
                         warm_cache=False) as (client, runtime):
            runtime.version_sync.delays = (0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2)
            setup_project(client)
            annotate_all(client)
            assert runtime.queue.wait_idle(120)
            v1 = runtime.store.current_version("1")
            predict(client)  # answered, but not stored in Label Studio yet
            assert eventually(lambda: sum(r["path"].endswith("/model-versions/") for r in fake.requests) >= 2)
            fake.versions_with_predictions.add(v1)  # now stored
            assert eventually(lambda: fake.project_versions == {1: v1})
    patches = [r for r in fake.requests if r["method"] == "PATCH"]
    assert len(patches) == 1
    assert "did not take model_version" not in caplog.text


# -- warm-up you can see ----------------------------------------------------------------------------------------
def ls_with_tasks(docroot_tasks=TASKS, **kwargs) -> FakeLabelStudio:
    return FakeLabelStudio(image=png(), tasks=[dict(t) for t in docroot_tasks], **kwargs)


def test_warm_up_reports_total_rate_eta_and_logs_progress(make_client, docroot, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(warmer_module, "WARM_BATCH", 2)
    fake = ls_with_tasks()
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            runtime.warmer.progress_every = 4
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=60)
            warm = client.get("/metrics").json()["projects"]["1"]["warm_cache"]
    assert (warm["total"], warm["tasks"], warm["embedded"], warm["failed"]) == (9, 9, 9, 0)
    assert warm["rate"] > 0 and warm["eta_seconds"] == 0.0 and warm["attempt"] == 1
    progress_lines = [r for r in caplog.records if "warm-up 4/9" in r.getMessage() or "warm-up 8/9" in r.getMessage()]
    assert len(progress_lines) == 2  # batches of 2: a line when 4 and 8 tasks were passed


def test_eta_from_rate_and_total():
    entry = {"state": "running", "total": 100, "tasks": 20, "attempt_started_at": 0.0}
    out = warmer_module.progress(entry, now=10.0)
    assert out["rate"] == 2.0 and out["eta_seconds"] == 40.0
    assert warmer_module.progress(dict(entry, total=None), now=10.0)["eta_seconds"] is None
    # a finished warm-up keeps the rate it ran at (the walkthrough's status said 0.11/s an hour later)
    done = dict(entry, state="done", tasks=100, finished_at=20.0)
    assert warmer_module.progress(done, now=3600.0)["rate"] == 5.0


def test_warm_up_retries_with_back_off_when_label_studio_comes_back(make_client, docroot):
    # Label Studio answers 503 three times (down, or restarting: the client's three tries of one listing
    # fail), then lists the tasks again.
    down = [(503, {"detail": "restarting"}, {})] * 3
    fake = ls_with_tasks(task_list_failures=list(down))
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            runtime.warmer.backoff = wait_fixed(0)
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=90)
            warm = runtime.warmer.status("1")
    assert warm["attempt"] == 2 and (warm["embedded"], warm["total"]) == (9, 9)
    assert fake.task_list_failures == []


def test_failed_warm_up_is_shown_and_the_next_setup_starts_it_again(make_client, docroot):
    down = [(503, {"detail": "down"}, {})] * 3  # the client's 3 tries: one warm-up attempt fails
    fake = ls_with_tasks(task_list_failures=list(down))
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            runtime.warmer.attempts = 1
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "failed", timeout=60)
            failed = client.get("/metrics").json()["projects"]["1"]["warm_cache"]
            degraded = client.get("/health").json()
            setup_project(client)  # Label Studio calls /setup before each prediction batch: recovery, no restart
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=60)
            done = runtime.warmer.status("1")
            healthy = client.get("/health").json()
    assert "503" in failed["last_error"]
    assert degraded["status"] == "DEGRADED" and any("project 1: warm-up failed" in p for p in degraded["problems"])
    assert done["embedded"] == 9 and healthy["status"] == "UP"


def test_wrong_key_is_a_clear_state_and_not_retried(make_client, docroot):
    fake = ls_with_tasks()
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key="wrong-key-0123456789") as (client, runtime):
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "failed", timeout=60)
            warm = runtime.warmer.status("1")
            health = client.get("/health").json()
    assert warm["attempt"] == 1 and "refused LABEL_STUDIO_API_KEY" in warm["last_error"]
    assert health["status"] == "DEGRADED"


def test_a_fixed_key_file_recovers_without_a_restart(make_client, docroot, tmp_path):
    key_file = tmp_path / "ls-key"
    key_file.write_text("wrong-key-0123456789\n")
    fake = ls_with_tasks()
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key_file=key_file) as (client, runtime):
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "failed", timeout=60)
            degraded = client.get("/health").json()
            key_file.write_text(LEGACY_TOKEN + "\n")  # the operator fixes the key; the backend keeps running
            healthy = client.get("/health").json()  # a changed key file is asked about at once
            setup_project(client)  # Label Studio's next /setup restarts the failed warm-up
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=60)
            warm = runtime.warmer.status("1")
    assert degraded["status"] == "DEGRADED" and "refused LABEL_STUDIO_API_KEY" in degraded["problems"][0]
    assert healthy["status"] == "UP" and healthy["problems"] == []
    assert warm["embedded"] == len(fake.tasks) and warm["failed"] == 0
    assert runtime.redactor.text(f"key {LEGACY_TOKEN}") == "key ***"  # the new key is redacted too


def test_a_key_label_studio_accepts_again_clears_the_state_at_the_next_recheck(make_client, docroot):
    from backend.ls_auth import RECHECK_SECONDS

    key = "revoked-then-restored-0123456789"
    fake = ls_with_tasks()
    now = [1000.0]
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=key) as (client, runtime):
            runtime.auth._clock = lambda: now[0]
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "failed", timeout=60)
            first = client.get("/health").json()  # asks Label Studio: still refused
            fake.other_legacy_tokens.add(key)  # the token is fixed on Label Studio's side
            now[0] += RECHECK_SECONDS / 2
            soon = client.get("/health").json()  # too soon to ask again: Label Studio is not hammered
            probes = sum(r["path"] == "/api/current-user/whoami" for r in fake.requests)
            now[0] += RECHECK_SECONDS
            later = client.get("/health").json()
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=60)
    assert first["status"] == soon["status"] == "DEGRADED" and probes == 1
    assert later["status"] == "UP"


def test_wrong_document_root_shows_in_the_warm_up(make_client, docroot, tmp_path):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    fake = ls_with_tasks()
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=empty, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            setup_project(client)
            assert eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done", timeout=60)
            warm = client.get("/metrics").json()["projects"]["1"]["warm_cache"]
    assert (warm["embedded"], warm["failed"]) == (0, 9)
    assert "imgs/" in warm["last_task_error"] or "document root" in warm["last_task_error"].lower()


# -- labels that change after annotating -----------------------------------------------------------------------------
def test_label_config_changed_after_annotating_is_said_and_nothing_is_lost(make_client, docroot):
    new_xml = CHOICES_XML.replace('<Choice value="blue"/>', '<Choice value="yellow"/>')
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        setup_project(client, xml=new_xml)  # "blue" removed, "yellow" added
        client.post("/webhook", json=annotation_event(999, TASKS[0], "red", xml=new_xml))
        assert runtime.queue.wait_idle(120)
        last = runs(runtime)[0]
        results = client.post("/predict", json={"tasks": TASKS, "project": "1.1", "label_config": new_xml}).json()
        stored = runtime.store.count_annotations("1")
        setup_project(client)  # "blue" back: its annotations were kept, so they are learnt from again
        client.post("/webhook", json=annotation_event(1000, TASKS[1], "red"))
        assert runtime.queue.wait_idle(120)
        back = runs(runtime)[0]
    assert last["status"] == "succeeded" and "'blue' (3)" in last["note"] and last["n_annotations"] == 6
    chosen = {r["result"][0]["value"]["choices"][0] for r in results["results"]}
    assert chosen <= {"red", "green", "yellow"}
    assert stored == len(TASKS) + 1
    assert back["n_annotations"] == len(TASKS) and "not in the label config" not in (back["note"] or "")


# -- labelloop status ---------------------------------------------------------------------------------------------
VERSIONS = {"versions": ["m-p1-r0", "m-p1-r1", "m-p1-r2"], "details": [
    {"model_version": "m-p1-r0", "project": "1", "accuracy": None},
    {"model_version": "m-p1-r1", "project": "1", "accuracy": {"accuracy": 0.5, "low": 0.2, "high": 0.8, "n": 10,
                                                               "correct": 5, "folds": 5}},
    {"model_version": "m-p1-r2", "project": "1", "accuracy": {"accuracy": 0.8, "low": 0.6, "high": 0.9, "n": 30,
                                                               "correct": 24, "folds": 5}},
    {"model_version": "m-p2-r1", "project": "2", "accuracy": {"accuracy": 1.0, "low": 0.5, "high": 1.0, "n": 4,
                                                               "correct": 4, "folds": 2}}]}


def test_learning_curve_is_read_from_the_versions():
    curve = report.learning_curve(VERSIONS, "1")
    assert [(p["n"], p["accuracy"]) for p in curve] == [(10, 0.5), (30, 0.8)]


def test_status_prints_the_table_and_writes_the_plot(make_client, docroot, tmp_path):
    from typer.testing import CliRunner

    from labelloop.cli import app as cli

    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        annotate_all(client)
        assert runtime.queue.wait_idle(120)
        with ServerThread(client.app) as backend:
            png_path = tmp_path / "curve.png"
            result = CliRunner().invoke(cli, ["status", "--url", backend.url, "--plot", str(png_path)],
                                        env={"COLUMNS": "250"})
            unreachable = CliRunner().invoke(cli, ["status", "--url", "http://127.0.0.1:9"])
        version = runtime.store.current_version("1")
        estimate = runtime.store.get_version("1", version).accuracy
        # debounce 0: the submits may share one run or be split over two (timing), each a point
        points = sum(1 for v in runtime.store.list_versions("1") if v.accuracy)
    assert result.exit_code == 0, result.output
    assert version in result.output and "learning curve" in result.output
    assert f"{estimate['accuracy']:.1%}" in result.output and "9/9" not in result.output  # warm-up off: "-"
    assert f"{points} point(s)" in result.output and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert unreachable.exit_code == 2 and "cannot reach the backend" in unreachable.output


def test_status_uses_basic_auth_when_the_backend_asks_for_it(make_client, docroot):
    from typer.testing import CliRunner

    from labelloop.cli import app as cli

    with make_client(local_files_document_root=docroot, basic_auth_user="ann", basic_auth_pass="pw-123") as \
            (client, runtime):
        with ServerThread(client.app) as backend:
            refused = CliRunner().invoke(cli, ["status", "--url", backend.url])
            allowed = CliRunner().invoke(cli, ["status", "--url", backend.url, "--user", "ann", "--password",
                                               "pw-123"], env={"COLUMNS": "250"})
    assert refused.exit_code == 2 and "--user and --password" in refused.output
    assert allowed.exit_code == 0 and "labelloop projects" in allowed.output
