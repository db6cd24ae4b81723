"""Bodies the JSON parser cannot take are refused with a message that says why, in-process: the
gateway's middleware and error handlers around a route that echoes what it was given."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from parley_gateway.errors import install_error_handlers
from parley_gateway.limits import MAX_JSON_DEPTH, BodySizeLimit, JsonBodyCheck, json_too_deep

MAX_BYTES = 1_000_000


class Body(BaseModel):
    message: str
    extra: Any = None


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/chat")
    async def chat(body: Body) -> dict[str, Any]:
        return body.model_dump()

    @app.post("/v1/chat/completions")
    async def v1(body: Body) -> dict[str, Any]:
        return body.model_dump()

    app.add_middleware(JsonBodyCheck)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BYTES)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


JSON = {"Content-Type": "application/json"}


def nested(depth: int) -> bytes:
    return b'{"message": "hi", "extra": ' + b"[" * depth + b"]" * depth + b"}"


async def test_invalid_utf8_names_the_byte_and_its_position(client: httpx.AsyncClient) -> None:
    body = b'{"message": "caf\xe9 \xff"}'

    response = await client.post("/chat", content=body, headers=JSON)

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_json",
            "message": "the request body is not valid UTF-8 (byte 0xe9 at position 16); "
            "send JSON encoded as UTF-8",
        }
    }


async def test_utf8_encoded_surrogates_are_not_utf8(client: httpx.AsyncClient) -> None:
    # Python's JSON parser takes them (it decodes with surrogatepass); UTF-8 does not.
    response = await client.post("/chat", content=b'{"message": "\xed\xa0\x80"}', headers=JSON)

    assert response.status_code == 400
    assert "byte 0xed at position 13" in response.json()["error"]["message"]


async def test_nesting_past_the_limit_says_so(client: httpx.AsyncClient) -> None:
    # Depth: the body's object, then the arrays.
    at_limit = await client.post("/chat", content=nested(MAX_JSON_DEPTH - 1), headers=JSON)
    past = await client.post("/chat", content=nested(MAX_JSON_DEPTH), headers=JSON)
    far_past = await client.post("/chat", content=nested(200_000), headers=JSON)

    assert at_limit.status_code == 200, at_limit.text
    for response in (past, far_past):
        assert response.status_code == 400
        assert response.json()["error"] == {
            "type": "invalid_json",
            "message": f"the request body's JSON is nested deeper than {MAX_JSON_DEPTH} levels",
        }


async def test_brackets_in_strings_are_text(client: httpx.AsyncClient) -> None:
    message = '[{"\\"' * 1000 + "]}"

    response = await client.post("/chat", json={"message": message}, headers=JSON)

    assert response.status_code == 200, response.text
    assert response.json()["message"] == message


async def test_a_number_too_long_to_parse_says_so(client: httpx.AsyncClient) -> None:
    body = b'{"message": "hi", "extra": 1' + b"0" * 5000 + b"}"

    response = await client.post("/chat", content=body, headers=JSON)

    assert response.status_code == 400
    assert response.json()["error"] == {
        "type": "invalid_json",
        "message": "the body has a number of more than 4300 digits",
    }


async def test_openai_routes_answer_in_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b'{"message": "\xff"}', headers=JSON
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "the request body is not valid UTF-8 (byte 0xff at position 13); "
            "send JSON encoded as UTF-8",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
    }


async def test_a_body_sent_in_pieces_reaches_the_route_whole(client: httpx.AsyncClient) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"message": "'
        yield "héllo wörld".encode()
        yield b'", "extra": {"a": [1, 2]}}'

    response = await client.post("/chat", content=pieces(), headers=JSON)

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "héllo wörld", "extra": {"a": [1, 2]}}


async def test_the_size_limit_still_comes_first(client: httpx.AsyncClient) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"message": "'
        yield b"\xff" * (MAX_BYTES + 1)
        yield b'"}'

    response = await client.post("/chat", content=pieces(), headers=JSON)

    assert response.status_code == 413
    assert response.json()["error"]["type"] == "body_too_large"


async def test_other_content_types_are_left_to_the_route(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat", content=b"\xff" * 10, headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 422  # not JSON: the route's validation says what is wrong


async def test_json_subtypes_are_checked(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/chat",
        content=b'{"message": "\xff"}',
        headers={"Content-Type": "application/merge-patch+json; charset=utf-8"},
    )

    assert response.status_code == 400
    assert "not valid UTF-8" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[" * 3 + b"]" * 3, False),
        (b"[" * 4 + b"]" * 4, True),
        (b'["[[[[[[["]', False),
        (b'["\\"[[[[[["]', False),  # an escaped quote does not end the string
        (b'{"a": {"b": {"c": [1]}}}', True),
        (b"[]" * 100, False),  # many, side by side
        (b'{"a": "unterminated [[[[[[', False),
        (b"[[[[", True),  # not JSON either, but too deep already
    ],
)
def test_json_too_deep(text: bytes, deep: bool) -> None:
    assert json_too_deep(text, limit=3) is deep
