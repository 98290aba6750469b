"""The VLM as a project's pre-annotator: ordinary choices with scores, complementary labels, per-project
override, lazy loading, and a clear 503 when the VLM cannot be loaded. Tiny random Qwen2-VL / LLaVA-NeXT
models are built locally (tests/conftest.py) and loaded through from_pretrained; no network."""
from __future__ import annotations

import numpy as np
import pytest

from backend.labels import LabelConfigError, parse_label_config
from tests.backend.conftest import COLORS, annotation_event, local_task, setup_project

CLASSES = ("red", "green", "blue", "yellow", "black")
CHOICES_3 = ("red", "green", "blue")  # CHOICES_XML's classes
IMAGE = '<Image name="image" value="$image"/>'


def _choices(name: str, attrs: str = "") -> str:
    return f'<Choices name="{name}" toName="image"{attrs}>' + "".join(f'<Choice value="{c}"/>' for c in CLASSES) \
        + "</Choices>"


LABEL = _choices("label")
NOT_LABEL = _choices("not_label", ' choice="multiple" model_complementary="true"')
TWO_CONTROLS_XML = f"<View>{IMAGE}{LABEL}{NOT_LABEL}</View>"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _preset_config(tmp_path, presets: dict) -> str:
    """Write a VLM config whose presets name local folders; returns its path."""
    import yaml

    path = tmp_path / "vlm.yaml"
    path.write_text(yaml.safe_dump({"presets": {name: {"model": str(folder)} for name, folder in presets.items()}}))
    return str(path)


def _tasks(project: int = 1) -> list[dict]:
    tasks = [local_task(i + 1, f"imgs/{c}{k}.png", project) for i, (c, k) in
             enumerate([(c, k) for c in COLORS for k in range(2)])]
    return tasks + [local_task(99, "imgs/broken.png", project)]


def _predict(client, tasks, project="1.1", xml=None):
    body = {"tasks": tasks, "project": project}
    if xml:
        body["label_config"] = xml
    return client.post("/predict", json=body)


def test_the_complementary_control_is_marked_never_served_and_must_list_every_class():
    target = parse_label_config(f"<View>{IMAGE}{NOT_LABEL}{LABEL}</View>")  # listed first, never served
    assert target.from_name == "label" and target.complementary_from == "not_label"
    assert target.complementary_multiple
    assert target.complementary_region(["red"]) == {"from_name": "not_label", "to_name": "image",
                                                    "type": "choices", "value": {"choices": ["red"]}}
    assert parse_label_config(TWO_CONTROLS_XML.replace(' model_complementary="true"', "")).complementary_from is None
    with pytest.raises(LabelConfigError, match="must list every class.*black"):
        parse_label_config(TWO_CONTROLS_XML.replace('<Choice value="black"/></Choices></View>', "</Choices></View>"))


@pytest.mark.parametrize("model", ["qwen2-vl", "llava-next"])
def test_vlm_ordinary_choices_and_scores_are_the_vlms_option_probabilities(make_client, docroot, tiny_vlm_dirs,
                                                                          model):
    from labelers.images import load_image
    from labelers.strategies import prediction_score
    from labelers.vlm.labeler import shared_labeler

    folder = str(tiny_vlm_dirs[model])
    tasks = _tasks()
    with make_client(local_files_document_root=docroot, predictor="vlm", vlm_model=folder,
                     vlm_device="cpu") as (client, runtime):
        version = setup_project(client)
        assert runtime.vlms.loaded(folder) is None  # /setup never loads the VLM
        resp = _predict(client, tasks)
        health = client.get("/health").json()["vlm"]
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert version.startswith(f"vlm-{model}-") and version.endswith("-p1")
    assert len(results) == len(tasks) and all(r["model_version"] == version for r in results)
    assert results[-1] == {"result": [], "score": None, "model_version": version}  # the broken image
    assert health["models"][folder] == {"loaded": True, "error": None}
    # Same images straight through the labeler: the backend's choice is the argmax, its score the margin.
    images = [load_image((docroot / t["data"]["image"].split("?d=")[1]).read_bytes()) for t in tasks[:-1]]
    probs = shared_labeler(folder, "cpu", "auto", None).classify(images, list(CHOICES_3))
    expected = prediction_score(probs, "margin")
    for row, result, score in zip(probs, results[:-1], expected):
        assert result["result"] == [{"from_name": "label", "to_name": "image", "type": "choices",
                                     "value": {"choices": [CHOICES_3[int(np.argmax(row))]]}}]
        assert 0.0 <= result["score"] <= 1.0 and result["score"] == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("model, mode", [("qwen2-vl", "auto"), ("llava-next", "complementary")])
def test_complementary_labels_go_to_the_second_control(make_client, docroot, tiny_vlm_dirs, model, mode, tmp_path):
    # The project picks a preset the operator configured (extra_params may not name arbitrary models).
    config = _preset_config(tmp_path, {"tiny": tiny_vlm_dirs[model]})
    tasks = _tasks()
    extra = {"predictor": "vlm", "vlm_model": "tiny", "vlm_mode": mode, "vlm_rounds": 3, "vlm_num_options": 2}
    with make_client(local_files_document_root=docroot, vlm_device="cpu", vlm_config=config) as (client, runtime):
        version = setup_project(client, xml=TWO_CONTROLS_XML, **extra)
        resp = _predict(client, tasks, xml=TWO_CONTROLS_XML)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == len(tasks) and version.startswith("vlm-")
    for result in results[:-1]:
        regions = {region["from_name"]: region for region in result["result"]}
        negatives = regions["not_label"]["value"]["choices"]
        assert regions["not_label"]["type"] == "choices" and regions["not_label"]["to_name"] == "image"
        assert len(negatives) == 3 and len(set(negatives)) == 3 and set(negatives) <= set(CLASSES)  # distinct
        assert 0.0 <= result["score"] <= 1.0 and result["model_version"] == version
        if mode == "auto":  # both: the ordinary choice too
            assert len(regions["label"]["value"]["choices"]) == 1
        else:
            assert set(regions) == {"not_label"}
    assert results[-1]["result"] == [] and results[-1]["score"] is None


def test_predictor_is_chosen_per_project_and_the_head_still_trains(make_client, docroot, tiny_vlm_dirs):
    folder = str(tiny_vlm_dirs["qwen2-vl"])
    tasks = _tasks()
    with make_client(local_files_document_root=docroot, vlm_model=folder, vlm_device="cpu") as (client, runtime):
        head_version = setup_project(client, "1.1")
        vlm_version = setup_project(client, "2.1", predictor="vlm")
        head = _predict(client, tasks, "1.1").json()["results"]
        vlm = _predict(client, [dict(t, project=2) for t in tasks], "2.1").json()["results"]
        metrics = client.get("/metrics").json()["projects"]
        # Annotations on the VLM project still train its embedding head; the VLM keeps pre-annotating.
        for i, task in enumerate(tasks[:3]):
            color = task["data"]["image"].split("/")[-1][:-5]
            event = annotation_event(10 + i, dict(task, project=2), color)
            assert client.post("/webhook", json=event).status_code == 201
        assert runtime.queue.wait_idle(120)
        again = setup_project(client, "2.1", predictor="vlm")
        back_to_head = setup_project(client, "2.1", predictor="head")
    assert head_version.endswith("-p1-r0") and not head_version.startswith("vlm-")
    assert vlm_version.startswith("vlm-qwen2-vl-") and vlm_version.endswith("-p2")
    assert all(r["model_version"] == head_version for r in head)
    assert all(r["model_version"] == vlm_version for r in vlm)
    assert metrics["1"]["predictor"]["predictor"] == "head" and metrics["2"]["predictor"]["predictor"] == "vlm"
    assert runtime.store.get_project("2").revision >= 1  # the head was retrained
    assert again == vlm_version  # the VLM's answers did not change, so neither does its version
    assert back_to_head == runtime.store.current_version("2")


def test_a_vlm_that_cannot_be_loaded_is_a_clear_503(make_client, docroot, tmp_path):
    missing = str(tmp_path / "no-such-vlm")
    with make_client(local_files_document_root=docroot, predictor="vlm", vlm_model=missing,
                     vlm_device="cpu") as (client, runtime):
        setup_project(client)  # answers: /setup never loads the model
        first = _predict(client, _tasks())
        second = _predict(client, _tasks())
        health = client.get("/health").json()
        project = client.get("/metrics").json()["projects"]["1"]["predictor"]
    for resp in (first, second):
        assert resp.status_code == 503
        body = resp.json()
        assert body["status"] == 503 and "VLM unavailable" in body["detail"] and "no-such-vlm" in body["detail"]
    assert health["status"] == "UP" and "no-such-vlm" in health["vlm"]["models"][missing]["error"]
    assert project["predictor"] == "vlm" and "no-such-vlm" in project["error"]


@pytest.mark.parametrize("extra, fragment", [
    ({"predictor": "oracle"}, "predictor 'oracle'"),
    ({"predictor": "vlm", "vlm_mode": "complementary"}, "model_complementary"),
    ({"predictor": "vlm", "vlm_mode": "sideways"}, "vlm_mode"),
    ({"predictor": "vlm", "vlm_mode": "complementary", "vlm_rounds": 3, "vlm_num_options": 4}, "need at least 6"),
    ({"predictor": "vlm", "vlm_rounds": "many"}, "whole number"),
])
def test_unusable_predictor_settings_are_refused_at_setup(make_client, extra, fragment):
    xml = TWO_CONTROLS_XML if extra.get("vlm_rounds") == 3 else None
    with make_client() as (client, runtime):
        body = {"project": "1.1", "schema": xml or TWO_CONTROLS_XML.replace(' model_complementary="true"', ""),
                "extra_params": extra}
        resp = client.post("/setup", json=body)
    assert resp.status_code == 422 and fragment in resp.json()["detail"]


def test_extra_params_may_only_choose_a_vlm_the_operator_configured(make_client, tmp_path):
    loads = []
    with make_client() as (client, runtime):
        runtime.vlms._loader = lambda spec: loads.append(spec)
        for model in ("some-org/any-hub-model", str(tmp_path)):
            body = {"project": "1.1", "schema": TWO_CONTROLS_XML.replace(' model_complementary="true"', ""),
                    "extra_params": {"predictor": "vlm", "vlm_model": model}}
            resp = client.post("/setup", json=body)
            assert resp.status_code == 422, resp.text
            assert f"vlm_model {model!r} is not a VLM this backend offers" in resp.json()["detail"]
            assert "llava-next" in resp.json()["detail"]  # the message lists what may be chosen
            predict = client.post("/predict", json={"tasks": _tasks(), "project": "1.1",
                                                    "label_config": body["schema"]})
            assert predict.status_code == 200  # the stored project was never switched to that model
    assert loads == []


def test_loaded_vlms_are_bounded_least_recently_used_first():
    from backend.config import load_settings
    from backend.vlm_models import VLMPool

    loads = []
    pool = VLMPool(load_settings(env={}), None, loader=lambda spec: loads.append(spec) or object(), capacity=2)
    first = pool.get("a")
    pool.get("b")
    assert pool.get("a") is first  # cached: no second load
    pool.get("c")  # evicts "b", the least recently used
    assert pool.loaded_specs() == ["a", "c"] and pool.loaded("b") is None
    pool.get("b")
    assert loads == ["a", "b", "c", "b"] and pool.loaded_specs() == ["c", "b"]
