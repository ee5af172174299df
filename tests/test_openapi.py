"""The OpenAPI document tells the truth: every status and body the routes answer with, checked by schemathesis.

The document is read from ``/openapi.json`` as a client would; ``/docs`` must work without internet access;
and a bounded schemathesis run against the in-process app checks that no generated request gets a 5xx and
that every answer matches the document (status, content type, headers, body schema).
"""

from __future__ import annotations

import base64
import copy
import io
import re
import time
import wave
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.protocol import EXAMPLE_AUDIO, EXAMPLE_CHAT
from tests.service_helpers import MODEL_NAME, serving, settings

V1_ERRORS = {"400", "401", "404", "408", "413", "415", "422", "500", "503", "504"}
"""What every ``/v1`` route that decodes audio and runs the model may answer besides 200."""
V1_ROUTES = {
    ("post", "/v1/chat/completions"): V1_ERRORS,
    ("post", "/v1/audio/transcriptions"): V1_ERRORS,
    ("post", "/v1/audio/translations"): V1_ERRORS,
    ("post", "/v1/see"): V1_ERRORS,
    ("get", "/v1/models"): {"401", "500"},
    ("get", "/v1/models/{model_id}"): {"400", "401", "404", "422", "500"},
}
ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}
CONFORMANCE = (
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
"""Schemathesis checks that an answer is what the document says: status, content type, headers, body."""
CHECKS = ("not_a_server_error", *CONFORMANCE)
EXAMPLES_PER_OPERATION = 50
"""Generated requests per operation and generation mode (valid, invalid): the whole run takes about 25 s here."""
KNOWN_SERVER_ERRORS: dict[str, str] = {}
"""Real 5xx that schemathesis found and that are not fixed yet: the symptom, and what it is (none today; a
temperature of 1.4e-45 was one: it now decodes greedily, see test_a_tiny_temperature_is_no_server_error)."""


@pytest.fixture
def paths(model_dirs: dict[str, Path], service_bundle: Path) -> tuple[Path, Path]:
    return model_dirs["qwen2_audio"], service_bundle


def document(app: FastAPI) -> dict[str, Any]:
    """``/openapi.json``, read without starting the app (the document needs no model)."""
    response = TestClient(app).get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def test_every_v1_route_documents_its_statuses_with_the_error_envelope(paths: tuple[Path, Path]) -> None:
    spec = document(create_app(settings(*paths)))
    operations = {(method, path): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert {key for key in operations if key[1].startswith("/v1/")} == set(V1_ROUTES)
    for key, errors in V1_ROUTES.items():
        responses = operations[key]["responses"]
        assert set(responses) == {"200", *errors}, key
        for status in errors:
            assert responses[status]["content"] == {"application/json": {"schema": ENVELOPE}}, (key, status)
            assert responses[status]["description"] not in ("", "Additional Response"), (key, status)
        if "503" in errors:
            assert responses["503"]["headers"]["Retry-After"]["required"] is True
    envelope = spec["components"]["schemas"]["ErrorResponse"]
    assert envelope["required"] == ["error"]
    assert set(spec["components"]["schemas"]["ErrorInfo"]["properties"]) == {"message", "type", "param", "code"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 body is not what we send
    chat = operations["post", "/v1/chat/completions"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}
    audio = operations["post", "/v1/audio/transcriptions"]["responses"]["200"]["content"]
    assert set(audio) == {"application/json", "text/plain"}


def test_operations_routes_document_their_real_bodies(paths: tuple[Path, Path]) -> None:
    spec = document(create_app(settings(*paths)))
    metrics = spec["paths"]["/metrics"]["get"]["responses"]
    assert set(metrics) == {"200"} and set(metrics["200"]["content"]) == {"text/plain"}
    health = spec["paths"]["/health"]["get"]["responses"]
    assert set(health) == {"200"}
    assert health["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Health"}
    ready = spec["paths"]["/ready"]["get"]["responses"]
    assert set(ready) == {"200", "503"}
    assert ready["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    assert ready["503"]["content"]["application/json"]["schema"] == ENVELOPE
    assert "Retry-After" in ready["503"]["headers"]


def test_examples_name_the_served_model_and_carry_decodable_audio(paths: tuple[Path, Path]) -> None:
    spec = document(create_app(settings(*paths)))
    request = spec["components"]["schemas"]["ChatCompletionRequest"]
    plain, streamed = request["examples"]
    assert plain["model"] == streamed["model"] == MODEL_NAME and streamed["stream"] is True
    assert request["properties"]["model"]["examples"] == [MODEL_NAME]
    audio = plain["messages"][0]["content"][0]["input_audio"]
    assert audio["format"] == "wav" and audio["data"] == EXAMPLE_AUDIO
    [data] = spec["components"]["schemas"]["InputAudio"]["properties"]["data"]["examples"]
    with wave.open(io.BytesIO(base64.b64decode(data))) as clip:
        assert clip.getframerate() == 16000 and 0 < clip.getnframes() <= 16000
    form = spec["components"]["schemas"]["Body_transcriptions_v1_audio_transcriptions_post"]
    assert form["properties"]["model"]["examples"] == [MODEL_NAME]


def test_bearer_scheme_is_documented_and_required_on_v1_only_with_api_keys(paths: tuple[Path, Path]) -> None:
    open_spec = document(create_app(settings(*paths)))
    keyed_spec = document(create_app(settings(*paths, api_keys=["secret"])))
    for spec in (open_spec, keyed_spec):
        assert spec["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": spec["components"]["securitySchemes"]["bearer"]["description"],
        }
    for path, operations in keyed_spec["paths"].items():
        for operation in operations.values():
            expected = [{"bearer": []}] if path.startswith("/v1/") else None
            assert operation.get("security") == expected, path
    assert all("security" not in op for ops in open_spec["paths"].values() for op in ops.values())


def test_docs_work_offline(paths: tuple[Path, Path]) -> None:
    """``/docs`` and ``/redoc`` load their scripts and styles from this server, never from a CDN."""
    http = TestClient(create_app(settings(*paths)))
    for page in ("/docs", "/redoc"):
        response = http.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="([^"]+)"', response.text)
        assert assets, page
        assert "/openapi.json" in response.text
        for url in assets:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            asset = http.get(url)
            assert asset.status_code == 200 and len(asset.content) > 0, url
        assert not re.search(r"https?://(?!www\.w3\.org)", response.text), page


def test_refusals_made_before_the_model_loads_match_the_document(paths: tuple[Path, Path]) -> None:
    """401, 404, 400, 413 and 503 (with Retry-After), answered by an app whose model is not loaded, checked by
    schemathesis against the document: documented status and headers, the envelope as the body."""
    import schemathesis

    app = create_app(settings(*paths, api_keys=["secret"], max_audio_bytes=1000))
    schema = schemathesis.openapi.from_dict(document(app))
    checks = [getattr(schemathesis.checks, name) for name in CONFORMANCE]  # a 503 is meant here
    http = TestClient(app)  # not started: the model never loads
    key = {"Authorization": "Bearer secret"}
    body = EXAMPLE_CHAT | {"model": MODEL_NAME}
    answers = [
        ("POST", "/v1/see", {"json": body}, 401),
        ("POST", "/v1/see", {"json": body | {"model": "other"}, "headers": key}, 404),
        ("POST", "/v1/see", {"json": body | {"model": ""}, "headers": key}, 400),
        ("POST", "/v1/see", {"json": body | {"user": "x" * 3_000_000}, "headers": key}, 413),
        ("POST", "/v1/see", {"json": body, "headers": key}, 503),
        (
            "POST",
            "/v1/audio/transcriptions",
            {"data": {"model": MODEL_NAME}, "files": {"file": b"x"}, "headers": key},
            503,
        ),
        ("GET", "/v1/models/other", {"headers": key}, 404),
        ("GET", "/ready", {}, 503),
    ]
    for method, path, request, status in answers:
        response = http.request(method, path, **request)
        assert response.status_code == status, (path, response.text)
        operation = schema.find_operation_by_path(method, path)
        assert operation is not None, path
        sent: dict[str, Any] = {"body": request["json"]} if "json" in request else {}
        if path.startswith("/v1/models/"):
            sent["path_parameters"] = {"model_id": path.rsplit("/", 1)[1]}
        case = operation.Case(headers=request.get("headers"), **sent)
        case.validate_response(response, checks=checks)
        if status == 503:
            assert int(response.headers["Retry-After"]) >= 1


# -- schemathesis ---------------------------------------------------------------------------------------


def wait_ready(app: FastAPI, client: Any, timeout: float = 120.0) -> None:
    state = app.state.service
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert state.load_error is None, state.load_error
        assert time.monotonic() < deadline, "the app was not ready in time"
        time.sleep(0.05)


def answer_code(response: Any) -> str:
    """The envelope's code of an error answer, else the content type."""
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return str(response.headers.get("content-type", [""])[0]).split(";")[0]


def flatmap_body(_context: Any, body: Any) -> Any:
    """Schemathesis hook for valid bodies: as generated, naming the served model, or that with the examples' audio.

    Generated model names are almost never the served one (404) and generated audio almost never decodes (400),
    so two thirds of the requests keep every other field as generated and get past those checks.
    """
    from hypothesis import strategies as st

    if not isinstance(body, dict):
        return st.just(body)
    served = {**body, "model": MODEL_NAME}
    audible = copy.deepcopy(served)
    if "file" in audible:
        audible["file"] = base64.b64decode(EXAMPLE_AUDIO)
    for message in audible.get("messages", []):
        for part in message.get("content") if isinstance(message.get("content"), list) else []:
            if part.get("type") == "input_audio":
                part["input_audio"] = {"data": EXAMPLE_AUDIO, "format": "wav"}
    return st.sampled_from([body, served, audible])


def flatmap_path_parameters(_context: Any, parameters: Any) -> Any:
    """Schemathesis hook for valid path parameters: as generated, or naming the served model."""
    from hypothesis import strategies as st

    if not isinstance(parameters, dict) or "model_id" not in parameters:
        return st.just(parameters)
    return st.sampled_from([parameters, {**parameters, "model_id": MODEL_NAME}])


def fuzz(
    operation: Any, mode: Any, checks: list[Any], statuses: Counter[tuple[str, int, str]], known: list[str]
) -> str | None:
    """Run ``EXAMPLES_PER_OPERATION`` generated requests of one mode; the failure found, if any.

    Answers are counted in ``statuses`` by operation, status and error code; a known server error is added to
    ``known`` and the run goes on.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.hooks import HookDispatcher, HookScope

    hooks = HookDispatcher(scope=HookScope.TEST)
    if mode == GenerationMode.POSITIVE:
        hooks.hook(flatmap_body)
        hooks.hook(flatmap_path_parameters)

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same draws on every run (schemathesis mixes in the schema's examples at random)
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing request is reported as sent
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, hooks=hooks))
    def run(case: Any) -> None:
        try:
            response = case.call()
        except Exception as error:  # the app raised: the in-process transport passes it on after the 500
            found = f"{operation.label}: {type(error).__name__}: {error}\n{case.as_curl_command()}"
            if any(symptom in str(error) for symptom in KNOWN_SERVER_ERRORS):
                known.append(found)
                return
            raise AssertionError(found) from error
        statuses[operation.label, response.status_code, answer_code(response)] += 1
        case.validate_response(response, checks=checks)

    try:
        run()
    except Unsatisfiable:  # nothing can be made invalid in an operation without parameters or body
        assert mode == GenerationMode.NEGATIVE and not operation.body, operation.label
    except (Exception, BaseExceptionGroup) as error:  # schemathesis reports its failures as a group
        notes = "\n".join(getattr(error, "__notes__", []))
        return f"{operation.label} ({mode.value}):\n{error}\n{notes}"
    return None


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(paths: tuple[Path, Path]) -> None:
    """Valid and invalid requests generated from the document for every operation, each answer checked.

    Bounded (``EXAMPLES_PER_OPERATION`` per operation and mode, no shrinking, a fixed seed) to fit in CI; every
    failure of every operation is reported at once, with the request that reproduces it.
    """
    import schemathesis
    from schemathesis.python import asgi

    app = create_app(settings(*paths, max_tokens_default=2, max_tokens_limit=4, warmup=False))
    checks = [getattr(schemathesis.checks, name) for name in CHECKS]
    statuses: Counter[tuple[str, int, str]] = Counter()
    failures: list[str] = []
    known: list[str] = []
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan: the model loads
    try:
        with asgi.get_client(app) as client:
            wait_ready(app, client)
        for result in schema.get_all_operations():
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                failure = fuzz(result.ok(), mode, checks, statuses, known)
                if failure is not None:
                    failures.append(failure)
    finally:
        asgi.shutdown_lifespans()
    print("\n".join(f"{label}: {status} {code} x{n}" for (label, status, code), n in sorted(statuses.items())))
    assert not failures, "\n\n".join(failures)
    for label in ("POST /v1/chat/completions", "POST /v1/see", "POST /v1/audio/transcriptions"):
        assert statuses[label, 200, "application/json"] > 0, f"no generated request to {label} was answered"
    if known:
        reasons = "; ".join(KNOWN_SERVER_ERRORS.values())
        shortest = min(known, key=len)[:1000]
        pytest.xfail(f"known server errors: {reasons}; found {len(known)}, the shortest:\n{shortest}")


@pytest.mark.anyio
async def test_a_tiny_temperature_is_no_server_error(paths: tuple[Path, Path]) -> None:
    """Found by schemathesis: ``temperature`` 1.4e-45 passes the schema (0 to 2) and makes sampling fail."""
    async with serving(*paths, warmup=False) as client:
        chat = await client.post(
            "/v1/chat/completions", json=EXAMPLE_CHAT | {"model": MODEL_NAME, "temperature": 1.4e-45}
        )
        assert chat.status_code == 200, chat.text
