"""Every chat, message and completion is visible to its owner only, and every operation needs a
valid key. The operations are read from the running gateway's OpenAPI schema, so that a route
added later is checked too; the WebSocket and the OpenAI chat binding are checked by hand."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, connect_ws

from parley_devstack.platform import Platform
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

SECRET = "alice's secret plan"
# Operations that must be among those checked against another user's ids.
MUST_COVER = {
    ("GET", "/chat/{chat_id}"),
    ("DELETE", "/chat/{chat_id}"),
    ("POST", "/chat/{chat_id}/completion"),
    ("GET", "/completions/{completion_id}"),
    ("GET", "/completions/{completion_id}/events"),
    ("POST", "/completions/{completion_id}/cancel"),
}
# Bodies that pass validation, so that what is checked is the ownership and not the body.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/chat/{chat_id}/completion"): {"message": "show me", "max_tokens": 2},
    ("POST", "/chat"): {"message": "hello", "max_tokens": 2},
    ("POST", "/v1/chat/completions"): {
        "model": "parley-tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    ("POST", "/admin/users"): {"name": "nobody"},
    ("PATCH", "/chat/{chat_id}"): {"title": "taken over"},
    ("POST", "/chat/{chat_id}/messages/{message_id}/edit"): {"message": "mine", "max_tokens": 2},
}


@dataclass
class Account:
    user_id: str
    key_id: str
    key: str
    client: httpx.Client


@dataclass
class World:
    url: str
    schema: dict[str, Any]
    alice: Account
    bob: Account
    ids: dict[str, str]


def _account(admin: httpx.Client, url: str, name: str) -> Account:
    user = admin.post("/admin/users", json={"name": name})
    assert user.status_code == 201, user.text
    user_id = user.json()["user_id"]
    return _key_for(admin, url, user_id)


def _key_for(admin: httpx.Client, url: str, user_id: str) -> Account:
    key = admin.post(f"/admin/users/{user_id}/keys", json={"name": "test"})
    assert key.status_code == 201, key.text
    client = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {key.json()['api_key']}"}, timeout=60
    )
    return Account(user_id, key.json()["key_id"], key.json()["api_key"], client)


@pytest.fixture(scope="module")
def world(platform: Platform, admin: httpx.Client) -> Iterator[World]:
    url = platform.gateway_url
    alice, bob = _account(admin, url, "alice"), _account(admin, url, "bob")
    started = alice.client.post("/chat", json={"message": SECRET, "max_tokens": 4})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    submitted = alice.client.post(
        f"/chat/{chat_id}/completion?mode=async", json={"message": "more secrets", "max_tokens": 4}
    )
    assert submitted.status_code == 202, submitted.text
    completion_id = submitted.json()["completion_id"]

    def answered() -> list[dict[str, Any]] | None:
        messages: list[dict[str, Any]] = alice.client.get(f"/chat/{chat_id}").json()["messages"]
        return messages if len(messages) == 4 else None

    messages = eventually(answered, what="alice's four messages")
    ids = {
        "chat_id": chat_id,
        "completion_id": completion_id,
        "message_id": next(m["message_id"] for m in messages if m["role"] == "assistant"),
    }
    attached = alice.client.post(
        f"/chat/{chat_id}/attachments", files={"file": ("notes.txt", b"alice's notes")}
    )
    assert attached.status_code == 201, attached.text
    ids["attachment_id"] = attached.json()["id"]
    schema = httpx.get(f"{url}/openapi.json").json()
    bot = _private_bot(alice, schema)
    if bot:
        ids["bot_id"] = bot
    yield World(url, schema, alice, bob, ids)
    alice.client.close()
    bob.client.close()


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _minimal(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """The smallest value of `node` that its schema accepts."""
    node = _resolve(schema, node)
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node[key] if o.get("type") != "null"]
            return _minimal(schema, options[0])
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if kind == "object" or "properties" in node:
        props = node.get("properties", {})
        return {name: _minimal(schema, props[name]) for name in node.get("required", [])}
    if kind == "string":
        return "x" * max(node.get("minLength", 1), 1)
    if kind == "integer":
        return max(node.get("minimum", 1), 1)
    if kind == "number":
        return node.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "array":
        return [_minimal(schema, node["items"]) for _ in range(node.get("minItems", 0))]
    return None


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def _body(schema: dict[str, Any], method: str, path: str, operation: dict[str, Any]) -> Any:
    if (method, path) in BODIES:
        return BODIES[(method, path)]
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    return _minimal(schema, content["application/json"]["schema"])


def _private_bot(alice: Account, schema: dict[str, Any]) -> str | None:
    """A bot profile of alice's own, where the platform has them."""
    operation = schema["paths"].get("/bots", {}).get("post")
    if operation is None:
        return None
    created = alice.client.post("/bots", json=_body(schema, "POST", "/bots", operation))
    assert created.status_code in (200, 201), created.text
    bot_id: str = created.json()["bot_id"]
    return bot_id


def _call(
    world: World,
    account_headers: Any,
    method: str,
    path: str,
    **params: str,
) -> httpx.Response:
    operation = world.schema["paths"][path][method.lower()]
    url = world.url + path.format(**params)
    if "multipart/form-data" in operation.get("requestBody", {}).get("content", {}):
        files = {"file": ("taken.txt", b"taken over")}
        return httpx.request(method, url, files=files, headers=account_headers, timeout=60)
    body = _body(world.schema, method, path, operation)
    return httpx.request(method, url, json=body, headers=account_headers, timeout=60)


def _error_type(response: httpx.Response, path: str) -> str:
    error = response.json()["error"]
    if path.startswith("/v1/"):
        return {"invalid_api_key": "authentication_error", "permission_denied": "permission_error"}[
            error["code"]
        ]
    kind: str = error["type"]
    return kind


def test_other_users_ids_are_not_found(world: World) -> None:
    bob = {"Authorization": f"Bearer {world.bob.key}"}
    covered = set()
    for method, path, operation in _operations(world.schema):
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        if not names or path.startswith("/admin/") or not names <= set(world.ids):
            continue
        response = _call(world, bob, method, path, **world.ids)
        assert response.status_code == 404, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        assert response.json()["error"]["type"] == "not_found"
        assert "secret" not in response.text
        covered.add((method, path))
    assert covered >= MUST_COVER, MUST_COVER - covered

    # Asynchronous submissions and the OpenAI binding into alice's chat are not found either.
    chat = world.ids["chat_id"]
    for headers in ({}, {"Prefer": "respond-async"}):
        refused = httpx.post(
            f"{world.url}/chat/{chat}/completion?mode=async"
            if not headers
            else f"{world.url}/chat/{chat}/completion",
            json={"message": "x"},
            headers={**bob, **headers},
        )
        assert refused.status_code == 404, refused.text
    for extra, headers in (({"chat_id": chat}, {}), ({}, {"X-Parley-Chat-Id": chat})):
        refused = httpx.post(
            f"{world.url}/v1/chat/completions",
            json={**BODIES[("POST", "/v1/chat/completions")], **extra},
            headers={**bob, **headers},
            timeout=60,
        )
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "not_found"
    events = httpx.get(
        f"{world.url}/completions/{world.ids['completion_id']}/events",
        headers={**bob, "Last-Event-ID": "0"},
    )
    assert events.status_code == 404
    with connect_ws(f"{world.url}/chat/ws", world.bob.client) as socket:
        assert socket.receive_json(timeout=10)["type"] == "ready"
        socket.send_json({"type": "message", "message": "x", "chat_id": chat})
        assert socket.receive_json(timeout=30)["error"]["type"] == "not_found"

    # Bob sees none of it in his lists; his own completion with alice's id is his own.
    assert chat not in {c["chat_id"] for c in world.bob.client.get("/chats").json()["chats"]}
    own = world.bob.client.post(
        "/chat?mode=async",
        json={"message": "mine", "max_tokens": 2, "request_id": world.ids["completion_id"]},
    )
    assert own.status_code == 202, own.text
    assert own.json()["chat_id"] != chat

    # Alice's data is untouched by all of it.
    alice_chat = world.alice.client.get(f"/chat/{chat}")
    assert alice_chat.status_code == 200
    assert len(alice_chat.json()["messages"]) == 4
    alice_completion = world.alice.client.get(f"/completions/{world.ids['completion_id']}")
    assert alice_completion.status_code == 200
    assert alice_completion.json()["chat_id"] == chat


def _unauthorized_headers(world: World, admin: httpx.Client) -> dict[str, dict[str, str | bytes]]:
    revoked = _key_for(admin, world.url, world.bob.user_id)
    assert admin.delete(f"/admin/keys/{revoked.key_id}").status_code == 204
    return {
        "no key": {},
        "empty": {"Authorization": ""},
        "not bearer": {"Authorization": f"Token {world.bob.key}"},
        "no scheme": {"Authorization": world.bob.key},
        "bearer alone": {"Authorization": "Bearer"},
        "too long": {"Authorization": "Bearer " + "k" * 300},
        "not ascii": {"Authorization": "Bearer pk-\u00e9\u00e9".encode("latin-1")},
        "unknown": {"Authorization": "Bearer pk-unknown-key"},
        "revoked": {"Authorization": f"Bearer {revoked.key}"},
    }


def test_every_operation_needs_a_valid_key(
    world: World, admin: httpx.Client, platform: Platform
) -> None:
    variants = _unauthorized_headers(world, admin)
    user_key = {"Authorization": f"Bearer {world.bob.key}"}
    admin_key = {"Authorization": f"Bearer {platform.admin_api_key}"}
    ids = {
        "bot_id": "0" * 32,
        **world.ids,
        "user_id": world.bob.user_id,
        "key_id": "0" * 32,
        "model_id": "x",
        "response_id": "resp_" + "0" * 32,
    }
    checked = 0
    for method, path, operation in _operations(world.schema):
        security = {name for entry in operation.get("security", []) for name in entry}
        if path.startswith("/auth/"):
            # Signing up, in and out, by a browser before or without a key: test_accounts.py.
            continue
        assert security, f"{method} {path} is not protected"
        # A browser's session cookie is a user's credential as a user key is (its own tests are
        # in test_accounts.py): the kinds of key are what this test tells apart.
        security -= {"SessionCookie"}
        params = {
            p["name"]: ids[p["name"]] for p in operation.get("parameters", []) if p["in"] == "path"
        }
        for name, headers in variants.items():
            response = _call(world, headers, method, path, **params)
            assert response.status_code == 401, f"{method} {path} ({name}): {response.text}"
            assert _error_type(response, path) == "authentication_error"
        # An operation for both kinds of key has no wrong kind; one for a browser session only
        # (a password change) refuses every key alike.
        if security and security != {"ApiKey", "AdminKey"}:
            wrong = admin_key if security == {"ApiKey"} else user_key
            response = _call(world, wrong, method, path, **params)
            assert response.status_code == 403, f"{method} {path} (wrong kind): {response.text}"
            assert _error_type(response, path) == "permission_error"
        checked += 1
    assert checked >= 14


def test_a_key_revoked_after_use_stops_working(
    world: World, admin: httpx.Client, platform: Platform
) -> None:
    key = _key_for(admin, world.url, world.alice.user_id)
    assert key.client.get("/chats").status_code == 200
    assert admin.delete(f"/admin/keys/{key.key_id}").status_code == 204
    revoked_at = time.monotonic()
    # Each gateway remembers a checked key for AUTH_CACHE_TTL_S (5 s by default).
    eventually(lambda: key.client.get("/chats").status_code == 401, timeout=10, what="401")
    assert time.monotonic() - revoked_at < 7
    assert admin.delete(f"/admin/keys/{key.key_id}").status_code == 404
    key.client.close()


@pytest.mark.parametrize("api_key", ["revoked", "pk-unknown"])
def test_websocket_refuses_bad_keys(world: World, admin: httpx.Client, api_key: str) -> None:
    if api_key == "revoked":
        revoked = _key_for(admin, world.url, world.alice.user_id)
        assert admin.delete(f"/admin/keys/{revoked.key_id}").status_code == 204
        api_key = revoked.key
    with httpx.Client() as plain, connect_ws(f"{world.url}/chat/ws", plain) as socket:
        socket.send_json({"type": "auth", "api_key": api_key})
        assert socket.receive_json(timeout=10)["error"]["type"] == "authentication_error"
        with pytest.raises(WebSocketDisconnect):
            socket.receive_json(timeout=10)
