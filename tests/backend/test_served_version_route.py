"""The version a project is told it is served with (backend.versions.ServedVersion: /setup, /metrics, the Label
Studio version sync) names what /predict serves it with: both follow backend.routing.Route."""
from __future__ import annotations

import pytest

from backend.schemas import PredictionValue
from backend.versions import initial_version
from tests.backend.conftest import CHOICES_XML, MULTI_XML, local_task
from tests.backend.test_routing import BOXES_XML

RELABEL = {"relabel": {"regions": "grid"}}
# project id: (label config, extra_params); the operator's default predictor decides the rest
PROJECTS = {"1": (BOXES_XML, {}), "2": (MULTI_XML, RELABEL), "3": (CHOICES_XML, {"predictor": "vlm"}),
            "4": (CHOICES_XML, {"predictor": "head"}), "5": (CHOICES_XML, {})}


def _record_the_paths(runtime, monkeypatch) -> list[str]:
    """Replace the box, relabel and VLM paths of /predict by recorders answering one prediction per task that
    carries the version the path was handed (the head path runs as it is); returns the paths taken."""
    taken: list[str] = []

    def answer(path, tasks, version):
        taken.append(path)
        return [PredictionValue(result=[], score=0.5, model_version=version) for _ in tasks]

    monkeypatch.setattr(runtime.suggestions.boxes, "predict", lambda project, version, served, tasks, *a, **k: (
        answer("boxes", tasks, served), {}, {}))
    monkeypatch.setattr(runtime.suggestions.relabel, "predict", lambda project, version, served, tasks, *a, **k: (
        answer("relabel", tasks, served), {}, {}))
    monkeypatch.setattr(runtime.vlm, "predict", lambda project, tasks, target, choice, strategy, version, **k: (
        answer("vlm", tasks, version), {"tasks_predicted": len(tasks)}))
    return taken


def _expected(pid: str, default_predictor: str, head: str):
    """Return (the path /predict takes, a check of the version it must carry) for project `pid`."""
    vlm = (PROJECTS[pid][1].get("predictor") or default_predictor) == "vlm"
    if pid == "1":  # a box project: its labeller's version (the VLM's or the head's), suffixed -boxes-
        return "boxes", (lambda v: v.startswith("vlm-") and "-p1-boxes-" in v) if vlm else (
            lambda v: v.startswith(head + "-boxes-"))
    if pid == "2":  # the head scores the regions whatever the predictor: the head's version, suffixed
        return "relabel", lambda v: v.startswith(head + "-relabel-")
    if vlm:
        return "vlm", lambda v: v.startswith("vlm-") and v.endswith(f"-p{pid}")
    return "head", lambda v: v == head


@pytest.mark.parametrize("default_predictor", ["head", "vlm"])
def test_the_served_version_names_what_predict_serves(make_client, docroot, monkeypatch, default_predictor):
    # Stored directly: /setup refuses relabel under predictor vlm, but a project connected before the operator
    # made the VLM the default is still served relabel suggestions by /predict (Route), with the head.
    with make_client(local_files_document_root=docroot, predictor=default_predictor, warm_cache=False) as (
            client, runtime):
        taken = _record_the_paths(runtime, monkeypatch)
        spec = runtime.settings.embedder
        for pid, (xml, extra) in PROJECTS.items():
            runtime.store.ensure_project(pid, spec, initial_version(spec, pid), label_config=xml,
                                         extra_params=extra)
        for pid in PROJECTS:
            taken.clear()
            resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png", int(pid))],
                                                 "project": f"{pid}.1700000000"})
            assert resp.status_code == 200, (pid, resp.text)
            path, names_it = _expected(pid, default_predictor, runtime.store.get_project(pid).model_version)
            served = runtime.served_version(pid)
            assert taken == ([] if path == "head" else [path]), pid
            (result,) = resp.json()["results"]
            assert result["model_version"] == served, pid
            assert names_it(served), (pid, served)
