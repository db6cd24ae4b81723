"""Bad input on the chat endpoints: a precise 4xx with a message, and nothing stored."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from parley_devstack.platform import Platform

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
UNKNOWN_CHAT = "0" * 32


def _error(response: httpx.Response, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_
    assert error["message"]
    message: str = error["message"]
    return message


@pytest.fixture
def erin(new_user: NewUser) -> httpx.Client:
    return new_user("erin")


def test_malformed_json(erin: httpx.Client) -> None:
    response = erin.post(
        "/chat", content=b'{"message": "hi"', headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in _error(response, 400, "invalid_json")


def test_missing_and_wrong_fields(erin: httpx.Client) -> None:
    assert "message" in _error(erin.post("/chat", json={}), 422, "invalid_request")
    assert "message" in _error(erin.post("/chat", json={"message": ""}), 422, "invalid_request")
    assert "max_tokens" in _error(
        erin.post("/chat", json={"message": "x", "max_tokens": 0}), 422, "invalid_request"
    )
    assert "surprise" in _error(
        erin.post("/chat", json={"message": "x", "surprise": 1}), 422, "invalid_request"
    )
    assert "message" in _error(
        erin.post("/chat", json={"message": {"$gt": ""}}), 422, "invalid_request"
    )


def test_unknown_and_malformed_chat_ids(erin: httpx.Client) -> None:
    body = {"message": "hello"}
    assert UNKNOWN_CHAT in _error(
        erin.post(f"/chat/{UNKNOWN_CHAT}/completion", json=body), 404, "not_found"
    )
    assert "32 hexadecimal" in _error(
        erin.post("/chat/not-an-id/completion", json=body), 404, "not_found"
    )
    _error(erin.get(f"/chat/{UNKNOWN_CHAT}"), 404, "not_found")
    _error(erin.get("/chat/$where"), 404, "not_found")
    _error(erin.delete(f"/chat/{UNKNOWN_CHAT}"), 404, "not_found")


def test_too_large(erin: httpx.Client, platform: Platform) -> None:
    _error(erin.post("/chat", json={"message": "x" * 40_000}), 413, "message_too_large")
    _error(erin.post("/chat", json={"message": "x" * 2_000_000}), 413, "body_too_large")


def test_nothing_was_stored(erin: httpx.Client) -> None:
    test_malformed_json(erin)
    test_missing_and_wrong_fields(erin)
    test_unknown_and_malformed_chat_ids(erin)
    assert erin.get("/chats").json()["chats"] == []


def test_keys_and_ownership(new_user: NewUser, platform: Platform) -> None:
    frank, grace = new_user("frank"), new_user("grace")
    started = frank.post("/chat", json={"message": "my secret plan", "max_tokens": 4})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    for response in (
        grace.get(f"/chat/{chat_id}"),
        grace.post(f"/chat/{chat_id}/completion", json={"message": "show me"}),
        grace.delete(f"/chat/{chat_id}"),
    ):
        assert "secret" not in _error(response, 404, "not_found")
    assert grace.get("/chats").json()["chats"] == []
    anonymous = httpx.get(f"{platform.gateway_url}/chats")
    _error(anonymous, 401, "authentication_error")
    bogus = httpx.get(f"{platform.gateway_url}/chats", headers={"Authorization": "Bearer pk-nope"})
    _error(bogus, 401, "authentication_error")
    malformed = httpx.get(f"{platform.gateway_url}/chats", headers={"Authorization": "Token x"})
    _error(malformed, 401, "authentication_error")
    assert frank.get(f"/chat/{chat_id}").status_code == 200
