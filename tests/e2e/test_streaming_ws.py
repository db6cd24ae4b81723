"""Streaming: the chat API over a WebSocket (turns, stop, errors), and a client that goes away
(WebSocket or SSE) makes the worker stop, with the text generated so far stored as the answer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketSession, connect_ws

from parley_devstack.platform import Platform
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
# Greedy decoding of the tiny model never ends by itself: a long answer to stop in the middle.
LONG = {"max_tokens": 2000, "temperature": 0, "no_cache": True}


def _key(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def user(new_user: NewUser) -> httpx.Client:
    return new_user("ws-user")


@pytest.fixture
def ws(user: httpx.Client, platform: Platform) -> Iterator[WebSocketSession]:
    """A socket authenticated with its first frame, as a browser does."""
    with (
        httpx.Client() as plain,
        connect_ws(f"{platform.gateway_url}/chat/ws", plain) as socket,
    ):
        socket.send_json({"type": "auth", "api_key": _key(user)})
        ready = socket.receive_json(timeout=10)
        assert ready == {"type": "ready", "user_id": user.user_id}  # type: ignore[attr-defined]
        yield socket


def _until_done(socket: WebSocketSession, timeout: float = 60) -> list[dict[str, Any]]:
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame: dict[str, Any] = socket.receive_json(timeout=max(deadline - time.monotonic(), 0.1))
        frames.append(frame)
        # An error of the turn ends it; one without a request id is about another frame.
        if frame["type"] == "done" or (frame["type"] == "error" and "request_id" in frame):
            return frames


def _assistant(client: httpx.Client, chat_id: str) -> dict[str, Any]:
    def answer() -> dict[str, Any] | None:
        messages = client.get(f"/chat/{chat_id}").json()["messages"]
        found: list[dict[str, Any]] = [m for m in messages if m["role"] == "assistant"]
        return found[-1] if found else None

    return eventually(answer, what="the stored answer")


def test_turns_over_a_websocket(ws: WebSocketSession, user: httpx.Client) -> None:
    ws.send_json(
        {"type": "message", "message": "Hello over a socket", "max_tokens": 8, "temperature": 0}
    )
    frames = _until_done(ws)
    assert frames[0]["type"] == "chat"
    chat_id, request_id = frames[0]["chat_id"], frames[0]["request_id"]
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert chunks
    assert all(f["request_id"] == request_id for f in frames[1:])
    done = frames[-1]
    assert done["type"] == "done"
    assert done["chat_id"] == chat_id
    assert done["answer"]["content"] == "".join(f["text"] for f in chunks)
    assert done["answer"]["usage"]["completion_tokens"] == 8

    ws.send_json({"type": "message", "message": "And again", "chat_id": chat_id, "max_tokens": 4})
    second = _until_done(ws)
    assert second[0]["chat_id"] == chat_id
    assert second[-1]["type"] == "done"
    # The second answer is stored from the results topic, a moment after the socket has it.
    messages = eventually(
        lambda: (m := user.get(f"/chat/{chat_id}").json()["messages"]) and len(m) == 4 and m,
        what="the second stored answer",
    )
    assert messages[-1]["content"] == second[-1]["answer"]["content"]

    ws.send_json({"type": "ping"})
    assert ws.receive_json(timeout=5) == {"type": "pong"}


def test_header_authentication(user: httpx.Client, platform: Platform) -> None:
    with connect_ws(f"{platform.gateway_url}/chat/ws", user) as socket:
        assert socket.receive_json(timeout=10)["type"] == "ready"
        socket.send_json({"type": "message", "message": "hi", "max_tokens": 2})
        assert _until_done(socket)[-1]["type"] == "done"


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "api_key": "pk-not-a-key"},
        {"type": "message", "message": "no auth first"},
        {"type": "auth"},
    ],
)
def test_refused_authentication_closes(platform: Platform, first: dict[str, Any]) -> None:
    with httpx.Client() as plain, connect_ws(f"{platform.gateway_url}/chat/ws", plain) as socket:
        socket.send_json(first)
        error = socket.receive_json(timeout=10)
        assert error["type"] == "error"
        assert error["error"]["type"] == "authentication_error"
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_json(timeout=10)
        assert closed.value.code == 4401


def test_admin_key_is_not_a_user(platform: Platform) -> None:
    with httpx.Client() as plain, connect_ws(f"{platform.gateway_url}/chat/ws", plain) as socket:
        socket.send_json({"type": "auth", "api_key": platform.admin_api_key})
        assert socket.receive_json(timeout=10)["error"]["type"] == "permission_error"


def test_bad_frames_keep_the_socket_open(ws: WebSocketSession, platform: Platform) -> None:
    def error_of(frame: str | dict[str, Any]) -> dict[str, Any]:
        if isinstance(frame, str):
            ws.send_text(frame)
        else:
            ws.send_json(frame)
        reply: dict[str, Any] = ws.receive_json(timeout=10)
        assert reply["type"] == "error", reply
        error: dict[str, Any] = reply["error"]
        return error

    assert error_of("{not json")["type"] == "invalid_json"
    ws.send_bytes(b'{"type": "ping"}')
    assert "binary" in ws.receive_json(timeout=10)["error"]["message"]
    assert error_of("[1, 2]")["type"] == "invalid_request"
    assert "surprise" in error_of({"type": "surprise"})["message"]
    assert "message" in error_of({"type": "message"})["message"]
    assert error_of({"type": "message", "message": "x", "max_tokens": 0})["type"] == (
        "invalid_request"
    )
    assert error_of({"type": "message", "message": "x" * 40_000})["type"] == "message_too_large"
    assert error_of({"type": "message", "message": "x", "chat_id": "0" * 32})["type"] == (
        "not_found"
    )
    assert error_of({"type": "stop"})["type"] == "nothing_to_stop"
    ws.send_json({"type": "ping"})
    assert ws.receive_json(timeout=5) == {"type": "pong"}


def test_stop_keeps_the_text_so_far(ws: WebSocketSession, user: httpx.Client) -> None:
    ws.send_json({"type": "message", "message": "Count to a thousand", **LONG})
    chat = ws.receive_json(timeout=30)
    assert chat["type"] == "chat"
    first = ws.receive_json(timeout=30)
    assert first["type"] == "chunk"
    # One turn at a time per socket.
    ws.send_json({"type": "message", "message": "and another"})
    stopped_at = time.monotonic()
    ws.send_json({"type": "stop"})
    frames = [first, *_until_done(ws, timeout=30)]
    took = time.monotonic() - stopped_at
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["error"]["type"] for e in errors] == ["busy"]
    done = frames[-1]
    assert done["type"] == "done"
    answer = done["answer"]
    assert answer["finish_reason"] == "cancelled"
    assert answer["content"] == "".join(f["text"] for f in frames if f["type"] == "chunk")
    assert 0 < answer["usage"]["completion_tokens"] < 2000
    assert took < 5, f"the worker took {took:.1f} s to stop"

    stored = _assistant(user, chat["chat_id"])
    assert stored["finish_reason"] == "cancelled"
    assert stored["content"] == answer["content"]


def test_websocket_that_goes_away_stops_the_worker(user: httpx.Client, platform: Platform) -> None:
    with connect_ws(f"{platform.gateway_url}/chat/ws", user) as socket:
        assert socket.receive_json(timeout=10)["type"] == "ready"
        socket.send_json({"type": "message", "message": "Keep talking", **LONG})
        chat_id = socket.receive_json(timeout=30)["chat_id"]
        assert socket.receive_json(timeout=30)["type"] == "chunk"
    gone_at = time.monotonic()
    stored = _assistant(user, chat_id)
    assert stored["finish_reason"] == "cancelled"
    assert 0 < stored["token_count"] < 2000
    assert stored["content"]
    # The whole answer would take about ten seconds; the cancelled one is stored well before.
    assert time.monotonic() - gone_at < 8


def test_sse_client_that_goes_away_stops_the_worker(user: httpx.Client) -> None:
    with user.stream(
        "POST", "/chat", json={"message": "Tell me everything", "stream": True, **LONG}
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        chat_line = next(line for line in lines if line.startswith("data: "))
        chat_id = httpx.Response(200, content=chat_line[6:]).json()["chat_id"]
        assert any(line.startswith("event: chunk") for line in lines)
    stored = _assistant(user, chat_id)
    assert stored["finish_reason"] == "cancelled"
    assert 0 < stored["token_count"] < 2000
