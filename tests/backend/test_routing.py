"""One rule decides what serves a project's /predict (backend.routing.Route): /predict takes the
path it names, and the warmer prepares the head's rows for exactly the projects /predict serves with the head."""
from __future__ import annotations

import pytest

from backend.predictor import PredictorRules
from backend.routing import Route
from backend.versions import initial_version
from tests.backend.conftest import CHOICES_XML, MULTI_XML, local_task

BOXES_XML = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
             '<Label value="red"/><Label value="green"/></RectangleLabels></View>')
BROKEN_XML = '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'

# project id: (label config, extra_params, the path /predict takes; None: refused with 422)
CASES = {
    "1": (BOXES_XML, {}, "boxes"),
    "2": (MULTI_XML, {"relabel": {"regions": "grid"}}, "relabel"),
    "3": (CHOICES_XML, {"predictor": "vlm"}, "vlm"),
    "4": (CHOICES_XML, {}, "head"),
    "5": (MULTI_XML, {}, "head"),
    "6": (BROKEN_XML, {}, None),                                        # not valid XML
    "7": (CHOICES_XML, {"relabel": {"regions": "grid"}}, None),         # relabel needs choice="multiple"
    "8": (BOXES_XML, {"predictor": "nope"}, None),                      # the predictor is checked for boxes too
}


def _spy_on_the_paths(runtime, monkeypatch) -> list[tuple[str, str]]:
    """Replace what each path of /predict calls by a recorder answering empty predictions; returns the record
    of (path, project id)."""
    taken: list[tuple[str, str]] = []

    def suggest(path):
        return lambda project, version, served, tasks, *a, **k: (
            taken.append((path, project.id)) or ([[] for _ in tasks], {}, {}))

    monkeypatch.setattr(runtime.suggestions.boxes, "predict", suggest("boxes"))
    monkeypatch.setattr(runtime.suggestions.relabel, "predict", suggest("relabel"))
    monkeypatch.setattr(runtime.vlm, "predict", lambda project, tasks, *a, **k: (
        taken.append(("vlm", project)) or ([[] for _ in tasks], {"tasks_predicted": 0})))
    monkeypatch.setattr(runtime.heads, "predictions", lambda project, version, target, embedded, *a, **k: (
        taken.append(("head", project)) or [[] for _ in embedded.keys]))
    return taken


def _store(runtime, cases) -> None:
    spec = runtime.settings.embedder
    for pid, (xml, extra, _) in cases.items():
        runtime.store.ensure_project(pid, spec, initial_version(spec, pid), label_config=xml, extra_params=extra)


def _warmer_prepares(runtime, pid: str) -> bool:
    stored = runtime.store.get_project(pid)
    return runtime.warmer._served(stored, runtime.embeddings.embedder(stored)) is not None


def test_the_warmer_prepares_exactly_the_projects_predict_serves_with_the_head(make_client, docroot, monkeypatch):
    with make_client(local_files_document_root=docroot) as (client, runtime):
        taken = _spy_on_the_paths(runtime, monkeypatch)
        _store(runtime, CASES)
        for pid, (xml, extra, path) in CASES.items():
            taken.clear()
            resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png", int(pid))],
                                                 "project": f"{pid}.1700000000"})
            assert resp.status_code == (200 if path else 422), (pid, resp.text)
            assert [p for p, _ in taken] == ([path] if path else []), pid
            assert all(project == pid for _, project in taken)
            assert _warmer_prepares(runtime, pid) == (path == "head"), pid


def test_predict_and_the_warmer_both_follow_the_route(make_client, docroot, monkeypatch):
    # A changed rule changes both: the warmer has no rule of its own to disagree with.
    with make_client(local_files_document_root=docroot) as (client, runtime):
        taken = _spy_on_the_paths(runtime, monkeypatch)
        _store(runtime, {"4": CASES["4"]})
        assert _warmer_prepares(runtime, "4")
        monkeypatch.setattr(Route, "kind", property(lambda self: "vlm"))
        resp = client.post("/predict", json={"tasks": [local_task(1, "imgs/red0.png", 4)],
                                             "project": "4.1700000000"})
        assert resp.status_code == 200, resp.text
        assert taken == [("vlm", "4")] and not _warmer_prepares(runtime, "4")


@pytest.mark.parametrize("pid", sorted(CASES))
def test_the_route_names_the_path_of_each_case(pid, make_settings):
    from backend.labels import LabelConfigError
    from backend.runtime import _vlm_settings

    settings = make_settings()
    rules = PredictorRules(settings, _vlm_settings(settings))
    xml, extra, path = CASES[pid]
    served = Route(rules, xml, extra)
    if path is None:
        with pytest.raises(LabelConfigError):
            served.kind
    else:
        assert served.kind == path
