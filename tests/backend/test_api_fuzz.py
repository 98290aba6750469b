"""API fuzzing from the app's own OpenAPI schema (issue 13, section 3): schemathesis generates requests for every
operation, valid and invalid, and each answer must be free of 5xx, JSON when it is an error, and match the
response schema the app declares. In process through TestClient (loopback only), bounded and derandomized."""
from __future__ import annotations

import base64
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.backend.conftest import CHOICES_XML, local_task, setup_project

# Per operation and generation mode; 7 operations x 2 modes x 30 stays within seconds in process.
MAX_EXAMPLES = 30
FUZZ_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck), print_blob=True)


USER, PASSWORD = "fuzz", "fuzz-pass"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def send(client, case, authorized: bool):
    """Send a schemathesis case through the app's TestClient; return the httpx response.

    `authorized` replaces whatever Authorization header was generated with the real credentials, so the
    request reaches the route; otherwise the generated (usually wrong or malformed) header is sent as is.
    """
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    headers = {k: v for k, v in (kwargs.get("headers") or {}).items() if not (authorized and k.lower() ==
                                                                            "authorization")}
    if authorized:
        headers["Authorization"] = BASIC
    body = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif isinstance(kwargs.get("data"), (bytes, str)):
        body["content"] = kwargs["data"]
    elif kwargs.get("data") is not None:
        body["data"] = kwargs["data"]
    client.cookies.clear()  # per-request cookies are deprecated in httpx; set them on the client instead
    client.cookies.update(kwargs.get("cookies") or {})
    return client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                          headers=headers, **body)


def error_is_json(response) -> None:
    """Every non-2xx answer carries a JSON object naming the problem in `detail`."""
    if 200 <= response.status_code < 300:
        return
    try:
        payload = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:200]!r}") from None
    assert isinstance(payload, dict) and isinstance(payload.get("detail"), str) and payload["detail"], payload


def operations(app):
    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


PROJECT = "1.1700000000"


def on_served_project(case):
    """Point a generated body at the project set up before the fuzz, so /predict and /webhook reach the model
    (a random project id mostly stops at "no such project"); half the tasks get a real local image."""
    if isinstance(case.body, dict):
        case.body["project"] = PROJECT
        for i, task in enumerate(case.body.get("tasks") or []):
            if isinstance(task, dict) and i % 2 == 0:
                task["data"] = {"image": "/data/local-files/?d=imgs/red0.png"}
    return case


@pytest.mark.timeout(180)  # a hang fails the test instead of stalling CI; not a speed assertion
@pytest.mark.parametrize("mode, served", [(GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False),
                                          (GenerationMode.POSITIVE, True)], ids=["valid", "invalid", "served"])
def test_fuzz_every_operation(make_client, docroot, mode, served):
    with make_client(raise_server_exceptions=False, basic_auth_user=USER, basic_auth_pass=PASSWORD,
                     local_files_document_root=docroot) as (client, _):
        client.headers["Authorization"] = BASIC  # for setup_project; send() sets its own per case
        setup_project(client, project=PROJECT, xml=CHOICES_XML)
        ops = operations(client.app)
        assert {op.path for op in ops} >= {"/", "/health", "/setup", "/predict", "/webhook", "/versions",
                                           "/metrics"}
        seen: dict[str, set[int]] = {}
        for op in ops:
            strategy = op.as_strategy(generation_mode=mode)

            @FUZZ_SETTINGS
            @given(case=strategy.map(on_served_project) if served else strategy)
            def fuzz(case):
                response = send(client, case, authorized=mode == GenerationMode.POSITIVE)
                seen.setdefault(f"{op.method.upper()} {op.path}", set()).add(response.status_code)
                assert response.status_code < 500, (case.as_curl_command(), response.text)
                error_is_json(response)
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

            fuzz()
        # Every operation was reached; invalid input was refused with a 4xx somewhere, valid input accepted.
        assert len(seen) == len(ops), seen
        wanted = range(200, 300) if mode == GenerationMode.POSITIVE else range(400, 500)
        assert any(code in wanted for codes in seen.values() for code in codes), seen


def test_error_body_matches_declared_schema(make_client):
    """Regression (found by the fuzz): a 422 from /setup said {"detail": "<text>", "status": 422} while the
    schema declared FastAPI's HTTPValidationError (detail: a list of field errors) for every 422."""
    with make_client() as (client, _):
        resp = client.post("/setup", json={"project": 0})
        spec = client.app.openapi()
    assert resp.status_code == 422
    body = resp.json()
    assert set(body) == {"detail", "status"} and body["status"] == 422 and "label config is empty" in body["detail"]
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            declared = operation["responses"]
            assert "422" not in declared, (method, path, declared["422"])  # errors fall under "default"
            ref = declared["default"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorResponse", (method, path, ref)
    error_schema = spec["components"]["schemas"]["ErrorResponse"]
    assert set(error_schema["required"]) == set(body)
    assert {k: v["type"] for k, v in error_schema["properties"].items()} == {"detail": "string", "status": "integer"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_setup_with_an_empty_schema_keeps_the_stored_config(make_client, docroot):
    """Regression (found by the fuzz): /setup with "schema": "" answered 200 after validating the stored config,
    then stored "" over it, so every later /predict answered 422 "the label config is empty"."""
    with make_client(local_files_document_root=docroot) as (client, runtime):
        version = setup_project(client, xml=CHOICES_XML)
        resp = client.post("/setup", json={"project": "1.1700000000", "schema": ""})
        assert resp.status_code == 200 and resp.json()["model_version"] == version
        assert runtime.store.get_project("1").label_config == CHOICES_XML
        task = local_task(1, "imgs/red0.png")
        predicted = client.post("/predict", json={"tasks": [task], "project": "1.1700000000"})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["results"][0]["result"][0]["value"]["choices"][0] in {"red", "green", "blue"}
