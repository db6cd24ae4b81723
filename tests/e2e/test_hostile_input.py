"""Hostile input on every public endpoint: MongoDB operator injection where a value reaches a
query (bodies, query strings, path segments, headers), oversized bodies and messages, invalid
UTF-8, deeply nested JSON, absurd numbers. Each is answered by a precise 4xx with a message;
nothing is stored; no service logs an error; the gateway stays healthy.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from parley_gateway.limits import MAX_JSON_DEPTH

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
ADMIN = "admin"  # a case sent with the admin key
GT = {"$gt": ""}
UNKNOWN_CHAT = "0" * 32


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    type: str = ""  # the error type; OpenAI-style errors of /v1 all have invalid_request_error
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    key: str = "user"  # "user", ADMIN, or a literal Authorization header value
    message: str = ""  # a part of the error's message, where it must say precisely what is wrong


def _raw(text: bytes) -> dict[str, Any]:
    return {"content": text, "headers": {"Content-Type": "application/json"}}


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _v1(**fields: Any) -> dict[str, Any]:
    return {"model": "parley-tiny", "messages": [{"role": "user", "content": "hi"}], **fields}


DEEP = 100_000
CASES = [
    # Operator injection in bodies: an object where a string goes is a 422 naming the field.
    Case("body-message-gt", "POST", "/chat", 422, "invalid_request", json={"message": GT}),
    Case(
        "body-message-list", "POST", "/chat", 422, "invalid_request", json={"message": ["$gt", ""]}
    ),
    Case(
        "body-request-id-ne",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "request_id": {"$ne": None}},
    ),
    Case(
        "body-request-id-dollar",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "request_id": "$gt"},
    ),
    Case(
        "body-bot-where",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "bot_id": {"$where": "sleep(5000)"}},
    ),
    Case(
        "body-bot-as-text",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "bot_id": '{"$gt": ""}'},
    ),
    Case(
        "body-continue-regex",
        "POST",
        f"/chat/{UNKNOWN_CHAT}/completion",
        422,
        "invalid_request",
        json={"message": {"$regex": ".*"}},
    ),
    Case(
        "body-stream-gt",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "stream": GT},
    ),
    Case(
        "admin-name-gt",
        "POST",
        "/admin/users",
        422,
        "invalid_request",
        json={"name": GT},
        key=ADMIN,
    ),
    Case(
        "admin-tenant-gt",
        "POST",
        "/admin/users",
        422,
        "invalid_request",
        json={"name": "eve", "tenant_id": GT},
        key=ADMIN,
    ),
    Case("v1-model-gt", "POST", "/v1/chat/completions", 400, json=_v1(model=GT)),
    Case("v1-model-as-text", "POST", "/v1/chat/completions", 404, json=_v1(model='{"$gt": ""}')),
    Case("v1-chat-id-gt", "POST", "/v1/chat/completions", 400, json=_v1(chat_id=GT)),
    Case(
        "v1-chat-id-as-text", "POST", "/v1/chat/completions", 404, json=_v1(chat_id='{"$gt": ""}')
    ),
    Case("v1-user-gt", "POST", "/v1/chat/completions", 400, json=_v1(user=GT)),
    Case(
        "v1-content-gt",
        "POST",
        "/v1/chat/completions",
        400,
        json=_v1(messages=[{"role": "user", "content": GT}]),
    ),
    Case(
        "v1-role-dollar",
        "POST",
        "/v1/chat/completions",
        400,
        json=_v1(messages=[{"role": "$where", "content": "hi"}]),
    ),
    # ... in query strings,
    Case("query-cursor-gt", "GET", '/chats?cursor={"$gt": ""}', 422, "invalid_request"),
    Case(
        "query-cursor-huge-time",
        "GET",
        f"/chats?cursor={_cursor('9' * 20 + ':x')}",
        422,
        "invalid_request",
    ),
    Case(
        "query-cursor-negative-time",
        "GET",
        f"/chats?cursor={_cursor('-' + '9' * 17 + ':x')}",
        422,
        "invalid_request",
    ),
    Case("query-limit-gt", "GET", '/chats?limit={"$gt": 0}', 422, "invalid_request"),
    Case("query-limit-negative", "GET", "/chats?limit=-1", 422, "invalid_request"),
    Case("query-limit-huge", "GET", "/chats?limit=1000000000", 422, "invalid_request"),
    Case("query-mode-ne", "POST", "/chat?mode=$ne", 422, "invalid_request", json={"message": "hi"}),
    # ... in path segments,
    Case("path-chat-gt", "GET", '/chat/{"$gt": ""}', 404, "not_found"),
    Case("path-chat-where", "GET", "/chat/$where", 404, "not_found"),
    Case("path-delete-ne", "DELETE", '/chat/{"$ne": null}', 404, "not_found"),
    Case(
        "path-continue-gt",
        "POST",
        '/chat/{"$gt": ""}/completion',
        404,
        "not_found",
        json={"message": "hi"},
    ),
    Case("path-completion-gt", "GET", '/completions/{"$gt": ""}', 404, "not_found"),
    Case("path-completion-events-ne", "GET", "/completions/$ne/events", 404, "not_found"),
    Case("path-completion-cancel-gt", "POST", "/completions/$gt/cancel", 404, "not_found"),
    Case("path-model-gt", "GET", '/v1/models/{"$gt": ""}', 404),
    Case(
        "path-admin-user-gt",
        "POST",
        '/admin/users/{"$gt": ""}/keys',
        422,
        "invalid_request",
        json={},
        key=ADMIN,
    ),
    Case("path-admin-key-ne", "DELETE", '/admin/keys/{"$ne": null}', 404, "not_found", key=ADMIN),
    # ... and in headers.
    Case("header-key-gt", "GET", "/chats", 401, "authentication_error", key='Bearer {"$gt": ""}'),
    Case("header-key-ne", "GET", "/chats", 401, "authentication_error", key="Bearer $ne"),
    Case(
        "header-chat-id-gt",
        "POST",
        "/v1/chat/completions",
        404,
        json=_v1(),
        headers={"X-Parley-Chat-Id": '{"$gt": ""}'},
    ),
    Case(
        "header-idempotency-gt",
        "POST",
        "/v1/chat/completions",
        400,
        json=_v1(),
        headers={"Idempotency-Key": '{"$gt": ""}'},
    ),
    # Oversized bodies and messages.
    Case(
        "message-too-long",
        "POST",
        "/chat",
        413,
        "message_too_large",
        json={"message": "x" * 32_001},
    ),
    Case(
        "v1-message-too-long",
        "POST",
        "/v1/chat/completions",
        413,
        json=_v1(messages=[{"role": "user", "content": "x" * 32_001}]),
    ),
    Case(
        "body-too-large", "POST", "/chat", 413, "body_too_large", json={"message": "x" * 2_000_000}
    ),
    Case(
        "v1-too-many-messages",
        "POST",
        "/v1/chat/completions",
        400,
        json=_v1(messages=[{"role": "user", "content": "x"}] * 2000),
    ),
    Case(
        "stop-too-many",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "stop": ["a"] * 1000},
    ),
    Case(
        "stop-too-long",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "stop": ["a" * 10_000]},
    ),
    Case("path-chat-id-huge", "GET", "/chat/" + "a" * 10_000, 404, "not_found"),
    # Invalid UTF-8 and other undecodable bodies.
    Case(
        "utf8-invalid",
        "POST",
        "/chat",
        400,
        "invalid_json",
        message="the request body is not valid UTF-8 (byte 0xff at position 13)",
        **_raw(b'{"message": "\xff\xfe hi"}'),
    ),
    Case(
        "utf8-invalid-v1",
        "POST",
        "/v1/chat/completions",
        400,
        message="not valid UTF-8 (byte 0xc3 at position 67)",
        **_raw(b'{"model": "parley-tiny", "messages": [{"role": "user", "content": "\xc3("}]}'),
    ),
    Case(
        "utf8-encoded-surrogate",
        "POST",
        "/chat",
        400,
        "invalid_json",
        message="not valid UTF-8 (byte 0xed at position 13)",
        **_raw(b'{"message": "\xed\xa0\x80 hi"}'),
    ),
    Case(
        "utf8-lone-surrogate",
        "POST",
        "/chat",
        422,
        "invalid_request",
        **_raw(b'{"message": "\\ud800 hi"}'),
    ),
    Case("utf8-invalid-path", "GET", "/chat/%FF%FE", 404, "not_found"),
    Case("json-truncated", "POST", "/chat", 400, "invalid_json", **_raw(b'{"message": "hi"')),
    Case(
        "json-not-object", "POST", "/chat", 422, "invalid_request", **_raw(b'[{"message": "hi"}]')
    ),
    # Deeply nested JSON: past the limit a 400 that says so, within it a 422 naming the field.
    Case(
        "nested-deep",
        "POST",
        "/chat",
        400,
        "invalid_json",
        message=f"nested deeper than {MAX_JSON_DEPTH} levels",
        **_raw(b'{"message": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ),
    Case(
        "nested-deep-object",
        "POST",
        "/chat",
        400,
        "invalid_json",
        message=f"nested deeper than {MAX_JSON_DEPTH} levels",
        **_raw(b'{"message": "hi", "stop": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"),
    ),
    Case(
        "nested-500",
        "POST",
        "/chat",
        400,
        "invalid_json",
        message=f"nested deeper than {MAX_JSON_DEPTH} levels",
        **_raw(b'{"message": ' + b"[" * 500 + b"]" * 500 + b"}"),
    ),
    Case(
        "nested-v1",
        "POST",
        "/v1/chat/completions",
        400,
        message=f"nested deeper than {MAX_JSON_DEPTH} levels",
        **_raw(b'{"model": "parley-tiny", "messages": ' + b"[" * 100 + b"]" * 100 + b"}"),
    ),
    Case(
        "nested-within-limit",
        "POST",
        "/chat",
        422,
        "invalid_request",
        message="message",
        **_raw(b'{"message": ' + b"[" * 60 + b"]" * 60 + b"}"),
    ),
    # Absurd numbers.
    Case(
        "max-tokens-huge",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "max_tokens": 10**30},
    ),
    Case(
        "max-tokens-over-limit",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "max_tokens": 1_000_000},
    ),
    Case(
        "max-tokens-zero",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "max_tokens": 0},
    ),
    Case(
        "max-tokens-negative",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "max_tokens": -5},
    ),
    Case(
        "max-tokens-fraction",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "max_tokens": 1.5},
    ),
    Case(
        "max-tokens-infinity",
        "POST",
        "/chat",
        422,
        "invalid_request",
        **_raw(b'{"message": "hi", "max_tokens": Infinity}'),
    ),
    Case(
        "max-tokens-5000-digits",
        "POST",
        "/chat",
        400,
        "invalid_json",
        message="a number of more than 4300 digits",
        **_raw(b'{"message": "hi", "max_tokens": 1' + b"0" * 5000 + b"}"),
    ),
    Case(
        "temperature-negative",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "temperature": -1},
    ),
    Case(
        "temperature-huge",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "temperature": 1e308},
    ),
    Case(
        "temperature-nan",
        "POST",
        "/chat",
        422,
        "invalid_request",
        **_raw(b'{"message": "hi", "temperature": NaN}'),
    ),
    Case("top-p-zero", "POST", "/chat", 422, "invalid_request", json={"message": "hi", "top_p": 0}),
    Case(
        "top-p-over-one",
        "POST",
        "/chat",
        422,
        "invalid_request",
        json={"message": "hi", "top_p": 1.5},
    ),
    Case(
        "seed-negative", "POST", "/chat", 422, "invalid_request", json={"message": "hi", "seed": -1}
    ),
    Case(
        "seed-huge", "POST", "/chat", 422, "invalid_request", json={"message": "hi", "seed": 2**80}
    ),
    Case("v1-max-tokens-huge", "POST", "/v1/chat/completions", 400, json=_v1(max_tokens=10**12)),
    Case("v1-temperature-huge", "POST", "/v1/chat/completions", 400, json=_v1(temperature=5)),
    Case("v1-top-p-negative", "POST", "/v1/chat/completions", 400, json=_v1(top_p=-0.5)),
    Case("v1-n-many", "POST", "/v1/chat/completions", 400, json=_v1(n=5)),
    Case(
        "v1-presence-penalty-huge",
        "POST",
        "/v1/chat/completions",
        400,
        json=_v1(presence_penalty=100),
    ),
]


@dataclass
class Evidence:
    """What a hostile request could leave behind: documents, and lines in the services' logs."""

    mongo: MongoClient[dict[str, Any]]
    logs: list[Path]

    def counts(self, user_id: str) -> dict[str, int]:
        db = self.mongo["parley"]
        chats = [c["_id"] for c in db["chats"].find({"user_id": user_id}, {"_id": 1})]
        return {
            "users": db["users"].count_documents({}),
            "api_keys": db["api_keys"].count_documents({}),
            "chats": len(chats),
            "messages": db["messages"].count_documents({"chat_id": {"$in": chats}}),
        }

    def log_sizes(self) -> list[int]:
        return [path.stat().st_size if path.exists() else 0 for path in self.logs]

    def errors_since(self, sizes: list[int]) -> list[str]:
        found = []
        for path, size in zip(self.logs, sizes, strict=True):
            with path.open("rb") as log:
                log.seek(size)
                for line in log.read().decode(errors="replace").splitlines():
                    if '"level": "error"' in line or "Traceback" in line:
                        found.append(f"{path.name}: {line[:300]}")
        return found


@pytest.fixture(scope="module")
def evidence(local_stack: LocalStack, platform: Platform) -> Iterator[Evidence]:
    mongo: MongoClient[dict[str, Any]] = MongoClient(local_stack.addresses.mongodb_uri)
    with mongo:
        yield Evidence(
            mongo,
            [p.log_path for p in (*platform.gateways, platform.session, platform.cache)],
        )


def _send(platform: Platform, case: Case, user_key: str) -> httpx.Response:
    if case.key == ADMIN:
        authorization = f"Bearer {platform.admin_api_key}"
    elif case.key == "user":
        authorization = f"Bearer {user_key}"
    else:
        authorization = case.key
    headers = {"Authorization": authorization, **case.headers}
    # Paths are sent as written (httpx would re-quote them): build the URL by hand.
    url = httpx.URL(platform.gateway_url).copy_with(raw_path=case.path.encode())
    with httpx.Client(timeout=60) as client:
        if case.content is not None:
            return client.request(case.method, url, content=case.content, headers=headers)
        if case.json is not None:
            return client.request(case.method, url, json=case.json, headers=headers)
        return client.request(case.method, url, headers=headers)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request_is_refused_precisely(
    case: Case, platform: Platform, new_user: NewUser, evidence: Evidence
) -> None:
    mallory = new_user("mallory")
    user_id: str = mallory.user_id  # type: ignore[attr-defined]
    key = mallory.headers["Authorization"].removeprefix("Bearer ")
    before, sizes = evidence.counts(user_id), evidence.log_sizes()

    response = _send(platform, case, key)

    assert response.status_code == case.status, response.text[:500]
    error = response.json()["error"]
    assert error["message"]
    if case.path.startswith("/v1/"):
        assert error["type"] == "invalid_request_error"
    elif case.type:
        assert error["type"] == case.type, error
    assert case.message in error["message"]
    assert "Traceback" not in response.text
    assert evidence.counts(user_id) == before
    assert evidence.errors_since(sizes) == []
    assert mallory.get("/chats").json()["chats"] == []


def test_operators_in_text_are_plain_text(new_user: NewUser, evidence: Evidence) -> None:
    """Operator syntax inside a string is data: stored and returned as written, matching nothing."""
    mallory = new_user("mallory")
    message = '{"$gt": ""} {"$where": "sleep(5000)"} $ne'
    started = mallory.post("/chat", json={"message": message, "max_tokens": 2})
    assert started.status_code == 200, started.text
    chat = mallory.get(f"/chat/{started.json()['chat_id']}").json()
    assert chat["messages"][0]["content"] == message
    assert chat["title"] == message
    # A cursor that decodes to operator syntax is compared as a plain string: no other user's chat.
    listed = mallory.get("/chats", params={"cursor": _cursor(f'{2**40}:{{"$gt": ""}}')})
    assert listed.status_code == 200, listed.text
    assert {c["chat_id"] for c in listed.json()["chats"]} <= {started.json()["chat_id"]}


def test_gateway_is_healthy_after_the_hostile_requests(
    platform: Platform, new_user: NewUser
) -> None:
    assert httpx.get(f"{platform.gateway_url}/healthz/ready", timeout=10).status_code == 200
    mallory = new_user("mallory")
    turn = mallory.post("/chat", json={"message": "Still there?", "max_tokens": 2})
    assert turn.status_code == 200, turn.text
    assert [c["chat_id"] for c in mallory.get("/chats").json()["chats"]] == [turn.json()["chat_id"]]


def test_chunked_body_over_the_limit_is_413(platform: Platform, new_user: NewUser) -> None:
    """Without a Content-Length the limit is found while reading: still a 413, not a 400."""
    mallory = new_user("mallory")
    chunks = iter([b'{"message": "', b"x" * 1_500_000, b'"}'])
    response = mallory.post("/chat", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "body_too_large"
    assert mallory.get("/chats").json()["chats"] == []


def test_json_in_a_form_body_is_not_parsed(new_user: NewUser) -> None:
    mallory = new_user("mallory")
    response = mallory.post(
        "/chat",
        content=json.dumps({"message": "hi"}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422, response.text
    assert mallory.get("/chats").json()["chats"] == []
