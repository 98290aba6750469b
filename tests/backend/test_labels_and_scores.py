"""Label configs (Choices, multiple, predicted_values, model_skip, thresholds, Taxonomy), scores, warm cache."""
from __future__ import annotations

import numpy as np
import pytest

from backend.heads import choose, scores
from backend.labels import LabelConfigError, parse_label_config
from tests.backend.conftest import CHOICES_XML, local_task, png, setup_project
from tests.backend.fakes import LEGACY_TOKEN, FakeLabelStudio, ServerThread
from tests.waiting import eventually

TAXONOMY_XML = ('<View><Image name="img" value="$photo"/><Taxonomy name="kind" toName="img">'
                '<Choice value="Animal"><Choice value="Cat" predicted_values="kitten"/><Choice value="Dog"/></Choice>'
                '<Choice value="Vehicle"/></Taxonomy></View>')


def test_choices_single_and_multiple():
    single = parse_label_config(CHOICES_XML)
    assert (single.from_name, single.to_name, single.data_key, single.kind) == ("label", "image", "image", "choices")
    assert single.labels == ("red", "green", "blue") and not single.multiple
    multi = parse_label_config(CHOICES_XML.replace('toName="image"', 'toName="image" choice="multiple"'))
    assert multi.multiple
    assert multi.region(["red", "blue"]) == {"from_name": "label", "to_name": "image", "type": "choices",
                                             "value": {"choices": ["red", "blue"]}}


def test_predicted_values_model_skip_and_threshold():
    xml = ('<View><Image name="image" value="$img"/>'
           '<Choices name="quality" toName="image" model_skip="true"><Choice value="ok"/><Choice value="bad"/>'
           '</Choices>'
           '<Choices name="animal" toName="image" model_score_threshold="0.6">'
           '<Choice value="Cat" predicted_values="cat,kitty"/><Choice value="Dog"/></Choices></View>')
    target = parse_label_config(xml)
    assert target.from_name == "animal" and target.data_key == "img"
    assert target.model_names == (("cat", "kitty"), ("Dog",))
    assert target.score_threshold == 0.6
    assert choose(np.array([0.55, 0.45]), target) == []          # below the threshold: no pre-selection
    assert choose(np.array([0.30, 0.70]), target) == ["Dog"]


def test_a_choice_alias_is_the_class_name_annotations_store():
    # Label Studio writes a <Choice>'s alias (not its value) into results; LabelInterface reads it the same way.
    xml = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
           '<Choice value="A cat" alias="cat"/><Choice value="dog"/></Choices></View>')
    target = parse_label_config(xml)
    assert target.labels == ("cat", "dog") and target.model_names == (("cat",), ("dog",))
    assert target.labels_in([{"from_name": "label", "value": {"choices": ["cat"]}}]) == ["cat"]


def test_taxonomy_leaves_become_classes():
    target = parse_label_config(TAXONOMY_XML)
    assert target.kind == "taxonomy" and target.data_key == "photo"
    assert target.labels == ("Animal / Cat", "Animal / Dog", "Vehicle")
    assert target.model_names == (("kitten",), ("Dog",), ("Vehicle",))
    assert target.region(["Animal / Dog"])["value"] == {"taxonomy": [["Animal", "Dog"]]}
    result = [{"from_name": "kind", "type": "taxonomy", "value": {"taxonomy": [["Animal", "Cat"], ["Animal"]]}}]
    assert target.labels_in(result) == ["Animal / Cat"]  # a non-leaf pick teaches nothing


def test_a_taxonomy_alias_is_the_path_part_annotations_store():
    # Label Studio writes a taxonomy <Choice>'s alias (not its value) into each path of a result.
    xml = ('<View><Image name="img" value="$photo"/><Taxonomy name="kind" toName="img">'
           '<Choice value="Animal" alias="A"><Choice value="A cat" alias="cat"/><Choice value="Dog"/></Choice>'
           '<Choice value="Vehicle" alias="V"/></Taxonomy></View>')
    target = parse_label_config(xml)
    assert target.labels == ("A / cat", "A / Dog", "V")
    assert target.model_names == (("cat",), ("Dog",), ("V",))
    result = [{"from_name": "kind", "type": "taxonomy", "value": {"taxonomy": [["A", "cat"], ["V"]]}}]
    assert target.labels_in(result) == ["A / cat", "V"]
    assert target.region(["A / cat"])["value"] == {"taxonomy": [["A", "cat"]]}


def test_backend_and_export_read_one_result_the_same_way(tmp_path):
    # One parser (labelers.formats.label_studio) for webhooks and exports; odd path items must not crash either.
    import json

    from backend.events import usable
    from labelers.formats.label_studio import read_label_studio_export

    target = parse_label_config(TAXONOMY_XML)
    result = [{"from_name": "kind", "type": "taxonomy", "value": {"taxonomy": [["Vehicle"], ["Animal", 7],
                                                                              ["Animal", "Cat"], ["Vehicle"]]}},
              {"from_name": "other", "type": "choices", "value": {"choices": ["x"]}}, "not a region"]
    annotations = [{"id": 1, "result": result, "was_cancelled": False},
                   {"id": 2, "result": [{"from_name": "kind", "value": {"taxonomy": [["Animal", "Dog"]]}}],
                    "was_cancelled": True}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 9, "data": {"photo": "a.png"}, "annotations": annotations}]))
    exported = read_label_studio_export(export, image_key="photo")[0].labels
    served = [label for ann in annotations if usable(ann) for label in target.labels_in(ann["result"])]
    assert served == ["Vehicle", "Animal / Cat"]
    assert exported["kind"] == ["Vehicle", "Animal / 7", "Animal / Cat"] and exported["other"] == ["x"]
    assert [label for label in exported["kind"] if label in target.labels] == served


@pytest.mark.parametrize("xml, fragment", [
    ("", "empty"),
    ("<View><Image name='i' value='$i'>", "not valid XML"),
    ("<View><Text name='t' value='$t'/><Choices name='c' toName='t'><Choice value='a'/><Choice value='b'/>"
     "</Choices></View>", "<Image>"),
    ("<View><Image name='i' value='$i'/><RectangleLabels name='r' toName='i'><Label value='car'/>"
     "</RectangleLabels></View>", "no <Choices>"),
    ("<View><Image name='i' value='$i'/><Choices name='c' toName='i'><Choice value='only'/></Choices></View>",
     "at least two"),
    ("<View><Image name='i' value='$i'/><Choices name='c' toName='i' model_skip='true'><Choice value='a'/>"
     "<Choice value='b'/></Choices></View>", "model_skip"),
    ("<View><Image name='i' value='$i'/><Choices name='c' toName='i' value='$options'/></View>", "task data"),
    ("<View><Image name='i' value='https://x/y.png'/><Choices name='c' toName='i'><Choice value='a'/>"
     "<Choice value='b'/></Choices></View>", "task field"),
])
def test_unservable_configs_explain_why(xml, fragment):
    with pytest.raises(LabelConfigError, match=fragment):
        parse_label_config(xml)


LAUGHS_XML = ('<?xml version="1.0"?><!DOCTYPE View [<!ENTITY a "cat"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
              '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><View><Image name="image" value="$image"/>'
              '<Choices name="label" toName="image"><Choice value="&c;"/><Choice value="dog"/></Choices></View>')
EXTERNAL_XML = ('<?xml version="1.0"?><!DOCTYPE View [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
                '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                '<Choice value="&x;"/><Choice value="dog"/></Choices></View>')


@pytest.mark.parametrize("xml", [LAUGHS_XML, EXTERNAL_XML, LAUGHS_XML.replace("Choices name", "Taxonomy name")
                                 .replace("</Choices>", "</Taxonomy>")])
def test_configs_with_entities_are_refused_before_any_parser_expands_them(make_client, xml):
    with pytest.raises(LabelConfigError, match="DTD"):
        parse_label_config(xml)
    with make_client() as (client, runtime):
        resp = client.post("/setup", json={"project": "5.1", "schema": xml})
        assert resp.status_code == 422 and "<!DOCTYPE" in resp.json()["detail"]
        with pytest.raises(LabelConfigError, match="DTD"):
            runtime.model("5", label_config=xml).label_interface


def test_scores_are_confidence_low_for_uncertain_rows():
    probs = np.array([[0.98, 0.01, 0.01], [0.40, 0.35, 0.25]])
    for strategy in ("margin", "entropy", "least"):
        s = scores(probs, strategy, multiple=False)
        assert s[0] > s[1] and np.all((0 <= s) & (s <= 1))
    multi = scores(np.array([[0.99, 0.01, 0.02], [0.99, 0.5, 0.02]]), "margin", multiple=True)
    assert multi[0] > multi[1] and multi[1] == pytest.approx(0.0)  # one undecided tag makes the task uncertain
    keys = ["a", "b"]
    assert np.array_equal(scores(probs, "random", False, keys), scores(probs, "random", False, keys))


def test_strategy_comes_from_extra_params_per_project(make_client, docroot):
    tasks = [local_task(i + 1, f"imgs/{c}0.png") for i, c in enumerate(("red", "green", "blue"))]
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client, "1.1")
        setup_project(client, "2.1", strategy="least")
        margin = client.post("/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
        least = client.post("/predict", json={"tasks": [dict(t, project=2) for t in tasks],
                                              "project": "2.1"}).json()["results"]
    m = np.array([r["score"] for r in margin])
    lc = np.array([r["score"] for r in least])
    assert np.all(lc >= m - 1e-9)  # p1 >= p1 - p2 on the same probabilities
    assert not np.allclose(lc, m)


def test_image_only_embedder_ranks_by_cold_start_and_prechecks_nothing_until_trained(make_client, docroot):
    tasks = [local_task(i + 1, f"imgs/{c}0.png") for i, c in enumerate(("red", "green", "blue"))]
    with make_client(local_files_document_root=docroot, embedder="efficientnet-lite0@32") as (client, runtime):
        health = client.get("/health").json()["embedder"]
        version = setup_project(client)
        results = client.post("/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
    assert health["family"] == "efficientnet-lite0" and health["fallback"] and not health["zero_shot"]
    assert version == "efficientnet-lite0-32-p1-r0"
    # red/green/blue name no ImageNet class: no evidence, so nothing is pre-checked (not the first label),
    # and the score is the cold-start rank over the project's 3 embedded images: 0, 1/3, 2/3 in some order.
    assert all(r["result"] == [] for r in results)
    assert sorted(r["score"] for r in results) == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-6)


def test_connecting_a_project_warms_the_cache_so_predict_never_refetches(make_client, docroot):
    ls_tasks = [local_task(i + 1, f"imgs/{c}{k}.png") for i, (c, k) in
                enumerate([(c, k) for c in ("red", "green", "blue") for k in range(3)])]
    fake = FakeLabelStudio(image=png(), tasks=ls_tasks)
    with ServerThread(fake.app()) as ls:
        with make_client(local_files_document_root=docroot, label_studio_url=ls.url,
                         label_studio_api_key=LEGACY_TOKEN) as (client, runtime):
            setup_project(client)
            deadline_ok = eventually(lambda: (runtime.warmer.status("1") or {}).get("state") == "done")
            assert deadline_ok, runtime.warmer.status("1")
            status = runtime.warmer.status("1")
            # remove the files: a predict that still works cannot have read them again
            for path in (docroot / "imgs").glob("*.png"):
                path.unlink()
            results = client.post("/predict", json={"tasks": ls_tasks, "project": "1.1"}).json()["results"]
            counters = client.get("/metrics").json()["counters"]
    assert status["tasks"] == len(ls_tasks) and status["embedded"] == len(ls_tasks)
    assert all(r["result"] and r["score"] is not None for r in results)
    assert counters["images_fetched"] == 0 and counters["tasks_predicted"] == len(ls_tasks)


def test_taxonomy_project_predicts_paths_and_trains_multi_label(make_client, docroot):
    xml = ('<View><Image name="image" value="$image"/><Taxonomy name="kind" toName="image">'
           '<Choice value="Warm"><Choice value="red"/></Choice>'
           '<Choice value="Cold"><Choice value="green"/><Choice value="blue"/></Choice></Taxonomy></View>')
    tasks = [local_task(i + 1, f"imgs/{c}{k}.png") for i, (c, k) in
             enumerate([(c, k) for c in ("red", "green", "blue") for k in range(3)])]
    paths = {"red": ["Warm", "red"], "green": ["Cold", "green"], "blue": ["Cold", "blue"]}
    with make_client(local_files_document_root=docroot) as (client, runtime):
        v0 = setup_project(client, "4.1", xml)
        before = client.post("/predict", json={"tasks": [dict(t, project=4) for t in tasks], "project": "4.1",
                                               "label_config": xml}).json()["results"]
        for i, task in enumerate(tasks):
            color = task["data"]["image"].split("/")[-1][:-5]
            event = {"action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": xml},
                     "task": dict(task, project=4),
                     "annotation": {"id": 50 + i, "task": task["id"], "was_cancelled": False,
                                    "result": [{"from_name": "kind", "to_name": "image", "type": "taxonomy",
                                                "value": {"taxonomy": [paths[color]]}}]}}
            assert client.post("/webhook", json=event).status_code == 201
        assert runtime.queue.wait_idle(120)
        v1 = setup_project(client, "4.1", xml)
        after = client.post("/predict", json={"tasks": [dict(t, project=4) for t in tasks], "project": "4.1",
                                              "label_config": xml}).json()["results"]
    assert v1 != v0 and all(r["model_version"] == v1 for r in after)
    assert all(r["model_version"] == v0 for r in before)
    for task, result in zip(tasks, after):
        color = task["data"]["image"].split("/")[-1][:-5]
        region = result["result"][0]
        assert region["type"] == "taxonomy" and region["from_name"] == "kind"
        assert paths[color] in region["value"]["taxonomy"]  # the trained sigmoid for its own path clears 0.5


def test_imported_tasks_are_embedded_in_the_background(make_client, docroot):
    tasks = [local_task(i + 1, f"imgs/{c}0.png") for i, c in enumerate(("red", "green", "blue"))]
    with make_client(local_files_document_root=docroot) as (client, runtime):
        setup_project(client)
        resp = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": tasks,
                                             "project": {"id": 1, "label_config": CHOICES_XML}})
        assert resp.status_code == 200 and "3 new task(s)" in resp.json()["detail"]
        assert eventually(lambda: all(key for _, key in runtime.store.content_keys("1", [1, 2, 3]).values())
                     and len(runtime.store.content_keys("1", [1, 2, 3])) == 3)
        results = client.post("/predict", json={"tasks": tasks, "project": "1.1"}).json()["results"]
        counters = client.get("/metrics").json()["counters"]
    assert all(r["score"] is not None for r in results)
    assert counters.get("images_fetched", 0) == 0  # everything came from the cache


def test_tasks_not_reached_in_budget_get_no_prediction_and_are_embedded_for_the_next_call(make_client, docroot):
    tasks = [local_task(i + 1, f"imgs/{c}{k}.png") for i, (c, k) in
             enumerate([(c, k) for c in ("red", "green", "blue") for k in range(3)])]
    # budget 0: no image may be fetched inside the request
    with make_client(local_files_document_root=docroot, predict_budget_seconds=0) as (client, runtime):
        setup_project(client)
        first = client.post("/predict", json={"tasks": tasks, "project": "1.1"})
        ids = [t["id"] for t in tasks]
        assert eventually(lambda: all(key for _, key in runtime.store.content_keys("1", ids).values()))
        second = client.post("/predict", json={"tasks": tasks, "project": "1.1"})
        counters = client.get("/metrics").json()["counters"]
    # One item per task (Label Studio's count rule), each an empty list: Label Studio stores nothing for
    # them, so they are not marked predicted for this version and the next Retrieve asks again.
    assert first.status_code == 200 and first.json()["results"] == [[] for _ in tasks]
    assert second.status_code == 200
    assert all(r["score"] is not None for r in second.json()["results"])
    assert counters["tasks_not_predicted"] == 9 and counters["tasks_predicted"] == 9


@pytest.mark.parametrize("multiple", [False, True])
@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("evident", [None, set(), {"b", "c", "e"}, {"a", "b", "c", "d", "e"}])
def test_choosing_a_whole_batch_picks_what_choosing_each_row_picks(multiple, threshold, evident):
    from backend.heads import choose_all

    choice = 'choice="multiple"' if multiple else ""
    cut = f'model_score_threshold="{threshold}"' if threshold is not None else ""
    xml = (f'<View><Image name="image" value="$image"/><Choices name="label" toName="image" {choice} {cut}>'
           + "".join(f'<Choice value="{c}"/>' for c in "abcde") + "</Choices></View>")
    target = parse_label_config(xml)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(5, 0.2), size=400)  # peaked rows: many clear the 0.7 prior floor
    probs[:40] = rng.uniform(0, 1, (40, 5))           # multi-label-like rows, several above the cuts
    probs[40:60] = 0.2                                # ties everywhere: label order decides
    probs[60:70, 1] = probs[60:70, 3] = 0.75          # tied picks above the floor
    assert target.multiple == multiple and target.score_threshold == threshold
    assert choose_all(probs, target, evident) == [choose(row, target, evident) for row in probs]
    assert choose_all(probs[:0], target, evident) == []
