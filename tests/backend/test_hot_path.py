from threadpoolctl import threadpool_info

from labelers.head import ClassifierHead
from tests.backend.conftest import setup_project
from tests.backend.test_webhook_training import TASKS, annotate_all


def test_a_started_backend_runs_numpy_blas_on_one_thread(make_client):
    # Requests are served concurrently (8 Label Studio clients at once); a multi-threaded BLAS in every one of
    # them spun its threads against each other and made /predict's p99 seconds (benchmarks/bench_speed.py).
    with make_client():
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        assert blas, "numpy's BLAS was not found"
        assert {lib["num_threads"] for lib in blas} == {1}


def test_a_retrain_starts_from_the_served_head(make_client, docroot, monkeypatch):
    starts = []
    fit = ClassifierHead.fit

    def recording_fit(self, features, labels, warm_start=None):
        starts.append(None if warm_start is None else warm_start.n_trained)
        return fit(self, features, labels, warm_start=warm_start)

    monkeypatch.setattr(ClassifierHead, "fit", recording_fit)
    with make_client(local_files_document_root=docroot, retrain="manual") as (client, runtime):
        setup_project(client)
        annotate_all(client, tasks=TASKS[:len(TASKS) // 2])
        runtime.trainer.train("1")
        first = list(starts)
        annotate_all(client)
        runtime.trainer.train("1")
        second = starts[len(first):]
    # (the accuracy estimate's k-fold fits come after each publish, from the prior: only the first fit counts)
    assert first[0] is None  # r0 is the untrained prior: nothing to start from
    assert second[0] == len(TASKS) // 2  # r2 starts from r1, trained on the first half
