"""Asynchronous mode: `202 Accepted` with a completion at once, its state and answer at
`/completions/{id}`, an event stream that resumes after a reconnect (`Last-Event-ID`) and still
delivers the answer when the gateway that accepted it was restarted meanwhile."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from parley_devstack.platform import Platform
from tests.conftest import eventually
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
# Greedy decoding of the tiny model runs to max_tokens: long answers, the same every time.
LONG = {"max_tokens": 1500, "temperature": 0, "no_cache": True}

Event = tuple[str | None, str, dict[str, Any]]


@pytest.fixture
def user(new_user: NewUser) -> httpx.Client:
    return new_user("async-user")


def _events(lines: Iterator[str]) -> Iterator[Event]:
    """(id, event, data) of a text/event-stream, comments skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def _follow(
    client: httpx.Client, completion_id: str, last_event_id: str | None = None
) -> list[Event]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with client.stream(
        "GET", f"/completions/{completion_id}/events", headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(_events(response.iter_lines()))


def _final(client: httpx.Client, completion_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        got: dict[str, Any] = client.get(f"/completions/{completion_id}").json()
        return got if got["state"] in ("done", "failed", "cancelled") else None

    return eventually(done, timeout=60, what="a final state")


def _stored_answer(client: httpx.Client, chat_id: str, count: int = 2) -> dict[str, Any]:
    def stored() -> dict[str, Any] | None:
        messages = client.get(f"/chat/{chat_id}").json()["messages"]
        found: dict[str, Any] | None = messages[-1] if len(messages) == count else None
        return found

    return eventually(stored, what="the stored answer")


def test_submit_then_follow_and_read(user: httpx.Client) -> None:
    submitted = user.post(
        "/chat?mode=async", json={"message": "Tell me about owls", **LONG, "max_tokens": 300}
    )
    assert submitted.status_code == 202, submitted.text
    completion = submitted.json()
    completion_id = completion["completion_id"]
    assert submitted.headers["Location"] == f"/completions/{completion_id}"
    assert completion["state"] in ("queued", "running")
    assert completion["answer"] is None
    assert completion["model"] == "parley-tiny"

    events = _follow(user, completion_id)
    assert events[0][1] == "state"
    chunks = [e for e in events if e[1] == "chunk"]
    assert [e[0] for e in chunks] == [str(i) for i in range(len(chunks))]
    last_id, kind, done = events[-1]
    assert (last_id, kind) == ("done", "done")
    assert done["state"] == "done"
    answer = done["answer"]
    assert "".join(e[2]["text"] for e in chunks) == answer["content"]
    assert answer["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 300

    read = _final(user, completion_id)
    assert read["answer"] == answer
    assert read["chat_id"] == completion["chat_id"]
    assert _stored_answer(user, completion["chat_id"])["content"] == answer["content"]
    # A final completion's stream is its `done` alone.
    assert [(e[0], e[1]) for e in _follow(user, completion_id)] == [("done", "done")]


def test_prefer_respond_async_continues_a_chat(user: httpx.Client) -> None:
    first = user.post("/chat", json={"message": "Hi", "max_tokens": 3})
    chat_id = first.json()["chat_id"]
    _stored_answer(user, chat_id)
    submitted = user.post(
        f"/chat/{chat_id}/completion",
        json={"message": "Go on", "max_tokens": 5},
        headers={"Prefer": "respond-async"},
    )
    assert submitted.status_code == 202, submitted.text
    assert submitted.headers["Preference-Applied"] == "respond-async"
    assert submitted.json()["chat_id"] == chat_id
    final = _final(user, submitted.json()["completion_id"])
    assert final["state"] == "done"
    assert _stored_answer(user, chat_id, 4)["content"] == final["answer"]["content"]
    # ?mode=sync overrides the preference.
    sync = user.post(
        f"/chat/{chat_id}/completion?mode=sync",
        json={"message": "More", "max_tokens": 2},
        headers={"Prefer": "respond-async"},
    )
    assert sync.status_code == 200
    assert "answer" in sync.json()


def test_resume_after_a_reconnect(user: httpx.Client) -> None:
    submitted = user.post("/chat?mode=async", json={"message": "Count sheep", **LONG})
    completion_id = submitted.json()["completion_id"]
    received: list[Event] = []
    with user.stream("GET", f"/completions/{completion_id}/events", timeout=60) as response:
        for event in _events(response.iter_lines()):
            received.append(event)
            if sum(1 for e in received if e[1] == "chunk") == 3:
                break
    last = [e for e in received if e[1] == "chunk"][-1][0]
    assert last == "2"
    resumed = _follow(user, completion_id, last_event_id=last)
    later = [e for e in resumed if e[1] == "chunk"]
    assert later[0][0] == "3"
    assert [e[0] for e in later] == [str(i) for i in range(3, 3 + len(later))]
    final = resumed[-1][2]["answer"]
    text = "".join(e[2]["text"] for e in [*received, *resumed] if e[1] == "chunk")
    assert text == final["content"]
    assert final["usage"]["completion_tokens"] == 1500


def test_cancel_keeps_the_text_so_far(user: httpx.Client) -> None:
    submitted = user.post("/chat?mode=async", json={"message": "Go on and on", **LONG})
    completion_id = submitted.json()["completion_id"]
    eventually(
        lambda: user.get(f"/completions/{completion_id}").json()["state"] == "running",
        what="running",
    )
    cancelled = user.post(f"/completions/{completion_id}/cancel")
    assert cancelled.status_code == 202
    final = _final(user, completion_id)
    assert final["state"] == "cancelled"
    assert final["answer"]["finish_reason"] == "cancelled"
    assert 0 < final["answer"]["usage"]["completion_tokens"] < 1500
    assert final["answer"]["content"]
    stored = _stored_answer(user, submitted.json()["chat_id"])
    assert stored["finish_reason"] == "cancelled"
    assert stored["content"] == final["answer"]["content"]
    # Cancelling what is final already changes nothing.
    again = user.post(f"/completions/{completion_id}/cancel")
    assert again.status_code == 202
    assert again.json() == final


def test_submitting_twice_is_one_completion(user: httpx.Client) -> None:
    body = {"message": "Once only", "max_tokens": 4, "request_id": "async-once-1"}
    first = user.post("/chat?mode=async", json=body)
    second = user.post("/chat?mode=async", json=body)
    assert first.status_code == second.status_code == 202
    assert first.json()["completion_id"] == second.json()["completion_id"] == "async-once-1"
    assert first.json()["chat_id"] == second.json()["chat_id"]
    _final(user, "async-once-1")
    chat_id = first.json()["chat_id"]
    _stored_answer(user, chat_id)
    assert [m["role"] for m in user.get(f"/chat/{chat_id}").json()["messages"]] == [
        "user",
        "assistant",
    ]
    # A synchronous retry of it answers from what is stored.
    retry = user.post("/chat", json=body)
    assert retry.json()["answer"]["content"] == _final(user, "async-once-1")["answer"]["content"]


def test_bad_requests(user: httpx.Client) -> None:
    both = user.post("/chat?mode=async", json={"message": "x", "stream": True})
    assert both.status_code == 422
    assert "stream" in both.json()["error"]["message"]
    assert user.post("/chat?mode=later", json={"message": "x"}).status_code == 422
    for missing in ("0" * 32, "not-an-id!", "x" * 200):
        assert user.get(f"/completions/{missing}").status_code == 404
        assert user.get(f"/completions/{missing}/events").status_code == 404
        assert user.post(f"/completions/{missing}/cancel").status_code == 404


def test_answer_survives_a_restart_of_the_accepting_gateway(
    platform: Platform, user: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with extra_gateways(platform, tmp_path_factory.mktemp("restart"), 1, {}) as (gateway,):
        url = gateway_url(gateway)
        accepting = httpx.Client(base_url=url, headers=dict(user.headers), timeout=60)
        submitted = accepting.post("/chat?mode=async", json={"message": "A long tale", **LONG})
        assert submitted.status_code == 202
        completion_id = submitted.json()["completion_id"]
        seen: list[Event] = []

        def read_then_kill() -> None:
            with accepting.stream("GET", f"/completions/{completion_id}/events") as response:
                for event in _events(response.iter_lines()):
                    seen.append(event)
                    if event[1] == "chunk":
                        # Killed with the stream open, the moment the first text arrived (a
                        # graceful stop can take longer than the rest of the generation).
                        gateway.kill()

        with pytest.raises(httpx.TransportError):
            read_then_kill()
        assert seen
        assert seen[-1][1] == "chunk"
        # Gone mid-generation: nothing of the completion is final yet ...
        state = user.get(f"/completions/{completion_id}").json()["state"]
        assert state in ("queued", "running")
        # ... and another replica follows it to its end.
        elsewhere = _follow(user, completion_id)
        assert elsewhere[-1][1] == "done"
        answer = elsewhere[-1][2]["answer"]
        assert answer["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 1500
        # What the killed replica streamed (chunks read from its buffer after the kill count
        # too; a reset voids those before it) is where the answer starts.
        streamed = [e for e in seen if e[1] in ("chunk", "reset")]
        last_reset = max((i for i, e in enumerate(streamed) if e[1] == "reset"), default=-1)
        text = "".join(e[2]["text"] for e in streamed[last_reset + 1 :])
        assert answer["content"].startswith(text)

        gateway.start()
        platform.wait_ready([gateway], timeout=60)
        # Restarted, it has no memory of the chunks: the stream resumes with the whole answer.
        resumed = _follow(accepting, completion_id, last_event_id=seen[-1][0])
        assert [(e[0], e[1]) for e in resumed] == [("done", "done")]
        assert resumed[0][2]["answer"] == answer
        accepting.close()


def test_expired_completion_is_failed(
    platform: Platform, user: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    hurried = {"COMPLETION_TIMEOUT_S": "0.001"}
    with extra_gateways(platform, tmp_path_factory.mktemp("expiry"), 1, hurried) as (gateway,):
        client = httpx.Client(base_url=gateway_url(gateway), headers=dict(user.headers))
        submitted = client.post("/chat?mode=async", json={"message": "Too late", "max_tokens": 3})
        assert submitted.status_code == 202
        completion_id = submitted.json()["completion_id"]
        final = _final(user, completion_id)
        assert final["state"] == "failed"
        assert final["answer"] is None
        assert final["error"]["type"] == "expired"
        events = _follow(client, completion_id)
        assert [(e[0], e[1]) for e in events] == [("done", "error")]
        assert events[0][2]["error"]["type"] == "expired"
        client.close()
