"""One chat, two turns, through the public API of the running platform (real MongoDB, Kafka,
Qdrant and four service processes), then what MongoDB and Qdrant hold afterwards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from transformers import AutoTokenizer

from parley_devstack.platform import Platform
from tests.conftest import eventually, parse_sse

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]


def _messages(client: httpx.Client, chat_id: str, count: int) -> list[dict[str, object]]:
    def stored() -> list[dict[str, object]] | None:
        got = client.get(f"/chat/{chat_id}")
        assert got.status_code == 200, got.text
        messages: list[dict[str, object]] = got.json()["messages"]
        return messages if len(messages) >= count else None

    return eventually(stored, what=f"{count} stored messages")


def test_two_turns_json_then_stream(
    platform: Platform, new_user: NewUser, tiny_model: Path
) -> None:
    alice = new_user("alice")

    first = alice.post("/chat", json={"message": "Tell me about the sea.", "max_tokens": 12})
    assert first.status_code == 200, first.text
    turn1 = first.json()
    chat_id = turn1["chat_id"]
    assert turn1["answer"]["finish_reason"] in ("stop", "length")
    assert turn1["answer"]["cached"] is False
    p1 = turn1["answer"]["usage"]["prompt_tokens"]
    assert turn1["answer"]["usage"]["completion_tokens"] > 0

    second = alice.post(
        f"/chat/{chat_id}/completion",
        json={"message": "And the mountains?", "max_tokens": 12, "stream": True},
    )
    assert second.status_code == 200, second.text
    assert second.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(second.text)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "chat"
    assert kinds[-1] == "done"
    assert "chunk" in kinds
    assert events[0][1]["chat_id"] == chat_id
    done = events[-1][1]
    streamed = "".join(data["text"] for kind, data in events if kind == "chunk")
    assert streamed == done["content"]
    # The second prompt holds the first turn: system + question 1 + answer 1 + question 2,
    # counted exactly as the worker's tokenizer and chat template count them.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))

    def prompt_tokens(messages: list[dict[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    system = {"role": "system", "content": "You are a helpful AI assistant named Parley."}
    q1 = {"role": "user", "content": "Tell me about the sea."}
    a1 = {"role": "assistant", "content": turn1["answer"]["content"]}
    q2 = {"role": "user", "content": "And the mountains?"}
    assert p1 == prompt_tokens([system, q1])
    p2 = done["usage"]["prompt_tokens"]
    assert p2 == prompt_tokens([system, q1, a1, q2])

    messages = _messages(alice, chat_id, 4)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "Tell me about the sea."
    assert messages[1]["content"] == turn1["answer"]["content"]
    assert messages[3]["content"] == done["content"]

    listed = alice.get("/chats")
    assert listed.status_code == 200
    assert [c["chat_id"] for c in listed.json()["chats"]] == [chat_id]

    # What MongoDB holds: four messages, one per (request id, role).
    mongo: MongoClient[dict[str, Any]]
    with MongoClient(platform.session.env["MONGODB_URI"]) as mongo:
        docs = list(mongo["parley"]["messages"].find({"chat_id": chat_id}).sort("ordinal", 1))
        assert [d["role"] for d in docs] == ["user", "assistant", "user", "assistant"]
        assert len({(d["request_id"], d["role"]) for d in docs}) == 4
        chat = mongo["parley"]["chats"].find_one({"_id": chat_id})
        assert chat is not None
        assert chat["user_id"] == alice.user_id

    # What Qdrant holds: both answers, scoped to alice.
    qdrant = f"http://{platform.cache.env['QDRANT_ADDR']}"

    # Only answers with text are worth caching; the tiny model's gibberish is sometimes blank.
    expected = {a for a in (turn1["answer"]["content"], done["content"]) if a.strip()}

    def entries() -> list[dict[str, Any]] | None:
        scroll = httpx.post(
            f"{qdrant}/collections/parley_cache_all_minilm_l6_v2/points/scroll",
            json={
                "filter": {
                    "must": [{"key": "scope_key", "match": {"value": f"user:{alice.user_id}"}}]  # type: ignore[attr-defined]
                },
                "limit": 10,
                "with_payload": True,
            },
        )
        assert scroll.status_code == 200, scroll.text
        points: list[dict[str, Any]] = scroll.json()["result"]["points"]
        return points if len(points) >= len(expected) else None

    points = eventually(entries, what="the cache entries") if expected else []
    assert {p["payload"]["answer"] for p in points} == expected

    deleted = alice.delete(f"/chat/{chat_id}")
    assert deleted.status_code == 204
    assert alice.get(f"/chat/{chat_id}").status_code == 404


def test_repeated_question_is_answered_from_the_cache_for_its_owner_only(
    platform: Platform, new_user: NewUser
) -> None:
    bob, carol = new_user("bob"), new_user("carol")
    question = {"message": "How do I boil an egg perfectly?", "max_tokens": 8}
    given: set[str] = set()

    def cached() -> dict[str, Any] | None:
        asked = bob.post("/chat", json=question)
        assert asked.status_code == 200, asked.text
        answer: dict[str, Any] = asked.json()["answer"]
        if answer["cached"]:
            return answer
        given.add(answer["content"])
        return None

    # Every miss stores its answer; a later ask is answered with one of them.
    hit = eventually(cached, what="a cache hit")
    assert hit["content"] in given
    assert isinstance(hit["cache_score"], float)
    assert hit["cache_score"] >= 0.79

    other = carol.post(
        "/chat", json={"message": "How do I boil an egg perfectly?", "max_tokens": 8}
    )
    assert other.status_code == 200
    assert other.json()["answer"]["cached"] is False


def test_request_id_makes_a_retry_idempotent(platform: Platform, new_user: NewUser) -> None:
    dave = new_user("dave")
    body = {"message": "Count to three.", "max_tokens": 6, "request_id": "retry-1"}
    first = dave.post("/chat", json=body)
    assert first.status_code == 200, first.text
    chat_id = first.json()["chat_id"]
    _messages(dave, chat_id, 2)
    retry = dave.post("/chat", json=body)
    assert retry.status_code == 200
    assert retry.json()["chat_id"] == chat_id
    assert retry.json()["answer"]["content"] == first.json()["answer"]["content"]
    assert len(_messages(dave, chat_id, 2)) == 2
    assert len(dave.get("/chats").json()["chats"]) == 1
