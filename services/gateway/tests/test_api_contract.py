"""The gateway's published contract, without servers: the OpenAPI schema documents every error
an operation can answer, in the shape it has, and the error bodies are what clients expect."""

from __future__ import annotations

from typing import Any

import pytest

from parley.v1 import types_pb2
from parley_gateway.app import create_app
from parley_gateway.config import Settings
from parley_gateway.errors import ApiError
from parley_gateway.turns import Sampling


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    openapi: dict[str, Any] = create_app(Settings()).openapi()
    return openapi


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    ]


def _error_ref(response: dict[str, Any]) -> str:
    ref: str = response["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


# Signing in and up is what a caller does before it has a key or a session.
PUBLIC = {
    "/auth/sign-up",
    "/auth/sign-in",
    "/auth/methods",
    "/auth/oidc/login",
    "/auth/oidc/callback",
}


def test_bearer_security_everywhere(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {name: (s["type"], s.get("scheme") or s["in"]) for name, s in schemes.items()} == {
        "ApiKey": ("http", "bearer"),
        "AdminKey": ("http", "bearer"),
        "SessionCookie": ("apiKey", "cookie"),
    }
    for method, path, operation in _operations(schema):
        names = {name for entry in operation.get("security", []) for name in entry}
        if path in PUBLIC:
            assert not names, f"{method} {path}"
            continue
        assert names, f"{method} {path} declares no security"
        assert names <= {"ApiKey", "AdminKey", "SessionCookie"}, f"{method} {path}"
        if path.startswith("/admin/"):
            assert "AdminKey" in names, f"{method} {path}"
        if path.startswith(("/chat", "/completions", "/v1/")):
            assert names == {"ApiKey", "SessionCookie"}, f"{method} {path}"


def test_every_error_is_documented_in_its_shape(schema: dict[str, Any]) -> None:
    for method, path, operation in _operations(schema):
        responses = operation["responses"]
        openai = path.startswith("/v1/")
        expected = {"500", "502", "503"} | (set() if path in PUBLIC else {"401", "403"})
        if "requestBody" in operation:
            expected |= {"400", "413"}
        assert expected <= set(responses), f"{method} {path}: {sorted(responses)}"
        # OpenAI's clients get 400 for an invalid request; the chat API says 422.
        if openai:
            assert "422" not in responses, f"{method} {path}"
        elif "requestBody" in operation or operation.get("parameters"):
            assert "422" in responses, f"{method} {path}"
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert _error_ref(response) == ("OpenAIErrorBody" if openai else "ErrorBody")
            if status in ("429", "503"):
                assert "Retry-After" in response["headers"], f"{method} {path} {status}"
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_turns_document_their_answers(schema: dict[str, Any]) -> None:
    for path in ("/chat", "/chat/{chat_id}/completion"):
        responses = schema["paths"][path]["post"]["responses"]
        assert {"200", "202", "429", "503", "504"} <= set(responses)
        assert "text/event-stream" in responses["200"]["content"]
        assert responses["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "CompletionOut"
        )
    completions = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert completions["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "ChatCompletion"
    )
    assert "text/event-stream" in completions["200"]["content"]
    assert "/" not in schema["paths"]  # the web page is not part of the API


def test_openai_error_bodies() -> None:
    invalid = ApiError(422, "invalid_request", "n: only 1", param="n", code="invalid_value")
    response = invalid.response(openai=True)
    assert response.status_code == 400
    assert invalid.openai_body() == {
        "error": {
            "message": "n: only 1",
            "type": "invalid_request_error",
            "param": "n",
            "code": "invalid_value",
        }
    }
    tokens = ApiError(429, "rate_limited", "slow down", retry_after_s=7, code="tokens_per_minute")
    assert tokens.openai_body()["error"] | {"message": ""} == {
        "message": "",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert tokens.response(openai=True).headers["Retry-After"] == "7"
    key = ApiError(401, "authentication_error", "no key").openai_body()["error"]
    assert (key["type"], key["code"]) == ("invalid_request_error", "invalid_api_key")
    assert ApiError(503, "overloaded", "busy").openai_body()["error"]["type"] == "server_error"
    # The chat API keeps its own shape.
    assert ApiError(422, "invalid_request", "x").body() == {
        "error": {"type": "invalid_request", "message": "x"}
    }


def test_sampling_overrides_the_profile() -> None:
    profile = types_pb2.SamplingParams(max_tokens=64, temperature=0.7, stop=["END"])
    merged = Sampling(top_p=0.5, stop=("###",), seed=3).over(profile)
    assert merged.max_tokens == 64
    assert merged.temperature == pytest.approx(0.7)
    assert merged.top_p == pytest.approx(0.5)
    assert list(merged.stop) == ["###"]
    assert merged.seed == 3
    assert list(profile.stop) == ["END"]  # the profile's own is left alone
    assert Sampling().over(profile) == profile
    assert Sampling(temperature=0).cacheable
    assert not Sampling(seed=1).cacheable
    assert not Sampling(stop=("x",)).cacheable
