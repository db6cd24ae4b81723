"""Bot profiles, chat renaming and feedback through the public API of the running platform."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from parley_devstack.platform import Platform
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
DEFAULT_SYSTEM = "You are a helpful AI assistant named Parley."


def _error(response: httpx.Response, status: int, contains: str = "") -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    assert contains in message, message
    return message


@pytest.fixture(scope="module")
def prompt_tokens(tiny_model: Path) -> Callable[[list[tuple[str, str]]], int]:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))

    def count(messages: list[tuple[str, str]]) -> int:
        ids = tokenizer.apply_chat_template(
            [{"role": r, "content": c} for r, c in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return len(ids)

    return count


def test_bot_profiles_per_user_and_shared(
    admin: httpx.Client,
    new_user: NewUser,
    prompt_tokens: Callable[[list[tuple[str, str]]], int],
) -> None:
    alice, bob = new_user("alice"), new_user("bob")
    shared = admin.post(
        "/bots",
        json={
            "name": "Support",
            "system_prompt": "You answer questions about Parley.",
            "cache_scope": "tenant",
        },
    )
    assert shared.status_code == 201, shared.text
    support = shared.json()
    assert support["shared"] is True
    assert support["cache_scope"] == "tenant"
    created = alice.post(
        "/bots",
        json={
            "name": "Pirate",
            "avatar": "🏴‍☠️",
            "system_prompt": "Talk like a pirate.",
            "sampling": {"max_tokens": 6, "temperature": 0.7},
            "history_policy": "summarize",
            "cache_scope": "disabled",
        },
    )
    assert created.status_code == 201, created.text
    pirate = created.json()
    assert pirate["shared"] is False
    assert pirate["sampling"] == {"max_tokens": 6, "temperature": 0.7, "top_p": None}
    assert pirate["history_policy"] == "summarize"
    assert pirate["model"] == "parley-tiny"

    def names(client: httpx.Client) -> list[str]:
        listed = client.get("/bots")
        assert listed.status_code == 200, listed.text
        return [b["name"] for b in listed.json()["bots"] if b["builtin"] or b["bot_id"] in mine]

    mine = {support["bot_id"], pirate["bot_id"]}
    assert names(alice) == ["Assistant", "Support", "Pirate"]
    assert names(bob) == ["Assistant", "Support"]
    _error(bob.get(f"/bots/{pirate['bot_id']}"), 404)
    _error(bob.patch(f"/bots/{pirate['bot_id']}", json={"name": "Mine"}), 404)
    _error(alice.patch(f"/bots/{support['bot_id']}", json={"name": "x"}), 403, "admin key")
    _error(alice.delete("/bots/default"), 403)
    _error(alice.post("/bots", json={"name": ""}), 422, "name")
    _error(alice.post("/bots", json={"name": "x", "cache_scope": "global"}), 422, "cache_scope")
    _error(alice.post("/bots", json={"name": "x", "model": "gpt-4"}), 422, "model")
    _error(alice.post("/bots", json={"name": "x", "surprise": 1}), 422, "surprise")
    renamed = admin.patch(f"/bots/{support['bot_id']}", json={"description": "Parley help"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["description"] == "Parley help"
    assert renamed.json()["system_prompt"] == "You answer questions about Parley."

    # A chat started with the profile keeps it: its system prompt and reply budget.
    first = alice.post("/chat", json={"message": "Ahoy?", "bot_id": pirate["bot_id"]})
    assert first.status_code == 200, first.text
    turn = first.json()
    assert turn["answer"]["usage"]["prompt_tokens"] == prompt_tokens(
        [("system", "Talk like a pirate."), ("user", "Ahoy?")]
    )
    assert turn["answer"]["usage"]["completion_tokens"] <= 6
    chat_id = turn["chat_id"]
    assert alice.get(f"/chat/{chat_id}").json()["bot_id"] == pirate["bot_id"]
    patched = alice.patch(
        f"/bots/{pirate['bot_id']}", json={"system_prompt": "Talk like an old pirate."}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["sampling"]["temperature"] == 0.7  # untouched

    def stored(count: int) -> list[dict[str, Any]] | None:
        messages: list[dict[str, Any]] = alice.get(f"/chat/{chat_id}").json()["messages"]
        return messages if len(messages) >= count else None

    history = eventually(lambda: stored(2), what="the first answer stored")
    second = alice.post(f"/chat/{chat_id}/completion", json={"message": "Treasure?"})
    assert second.status_code == 200, second.text
    assert second.json()["answer"]["usage"]["prompt_tokens"] == prompt_tokens(
        [
            ("system", "Talk like an old pirate."),
            ("user", "Ahoy?"),
            ("assistant", history[1]["content"]),
            ("user", "Treasure?"),
        ]
    )
    # Deleted: no new chat with it; its chats go on.
    assert alice.delete(f"/bots/{pirate['bot_id']}").status_code == 204
    _error(alice.post("/chat", json={"message": "hi", "bot_id": pirate["bot_id"]}), 422, "bot_id")
    _error(alice.post("/chat", json={"message": "hi", "bot_id": "0" * 32}), 422, "bot_id")
    eventually(lambda: stored(4), what="the second answer stored")
    third = alice.post(f"/chat/{chat_id}/completion", json={"message": "Still there?"})
    assert third.status_code == 200, third.text
    assert names(alice) == ["Assistant", "Support"]
    # Bob may chat with the shared profile.
    with_support = bob.post(
        "/chat", json={"message": "What is Parley?", "bot_id": support["bot_id"], "max_tokens": 4}
    )
    assert with_support.status_code == 200, with_support.text


def test_rename_a_chat_or_move_it_to_another_profile(
    admin: httpx.Client, new_user: NewUser
) -> None:
    carol, dave = new_user("carol"), new_user("dave")
    started = carol.post("/chat", json={"message": "Plan a trip to the sea", "max_tokens": 4})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    renamed = carol.patch(f"/chat/{chat_id}", json={"title": "Sea trip"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["title"] == "Sea trip"
    assert [c["title"] for c in carol.get("/chats").json()["chats"]] == ["Sea trip"]
    _error(dave.patch(f"/chat/{chat_id}", json={"title": "mine"}), 404)
    _error(carol.patch("/chat/not-an-id", json={"title": "x"}), 404)
    _error(carol.patch(f"/chat/{chat_id}", json={"title": ""}), 422, "title")
    _error(carol.patch(f"/chat/{chat_id}", json={}), 422, "title or a bot_id")
    _error(carol.patch(f"/chat/{chat_id}", json={"bot_id": "0" * 32}), 422, "bot_id")
    guide = admin.post("/bots", json={"name": "Guide", "system_prompt": "You plan trips."})
    assert guide.status_code == 201, guide.text
    moved = carol.patch(f"/chat/{chat_id}", json={"bot_id": guide.json()["bot_id"]})
    assert moved.status_code == 200, moved.text
    assert moved.json()["bot_id"] == guide.json()["bot_id"]
    assert moved.json()["title"] == "Sea trip"
    assert carol.get(f"/chat/{chat_id}").json()["bot_id"] == guide.json()["bot_id"]


def _answers(client: httpx.Client, chat_id: str) -> list[dict[str, Any]]:
    def stored() -> list[dict[str, Any]] | None:
        messages: list[dict[str, Any]] = client.get(f"/chat/{chat_id}").json()["messages"]
        answers = [m for m in messages if m["role"] == "assistant"]
        return answers or None

    return eventually(stored, what="an answer stored")


def test_feedback_is_stored_queryable_exportable_and_evicts_the_cached_answer(
    admin: httpx.Client, new_user: NewUser, platform: Platform
) -> None:
    since = datetime.now(UTC).isoformat()
    erin, frank = new_user("erin"), new_user("frank")
    question = {"message": "How do I knead bread dough well?", "max_tokens": 8}
    asked = erin.post("/chat", json=question)
    assert asked.status_code == 200, asked.text
    original_chat = asked.json()["chat_id"]
    original = _answers(erin, original_chat)[0]
    # One cache entry, the first answer's, before asking again (more misses would add more).
    qdrant = f"http://{platform.cache.env['QDRANT_ADDR']}"

    def entries() -> list[dict[str, Any]] | None:
        scroll = httpx.post(
            f"{qdrant}/collections/parley_cache_all_minilm_l6_v2/points/scroll",
            json={
                "filter": {
                    "must": [{"key": "scope_key", "match": {"value": f"user:{erin.user_id}"}}]
                },  # type: ignore[attr-defined]
                "limit": 10,
                "with_payload": True,
            },
        )
        assert scroll.status_code == 200, scroll.text
        points: list[dict[str, Any]] = scroll.json()["result"]["points"]
        return points or None

    assert [p["payload"]["answer"] for p in eventually(entries, what="the answer cached")] == [
        original["content"]
    ]
    again = erin.post("/chat", json=question)
    assert again.status_code == 200, again.text
    hit = again.json()
    assert hit["answer"]["cached"] is True
    served = _answers(erin, hit["chat_id"])[0]
    assert served["content"] == original["content"]

    # Thumbs-down on the answer the cache served: that cache entry goes.
    down = erin.post(
        f"/chat/{hit['chat_id']}/messages/{served['message_id']}/feedback",
        json={"rating": "down", "comment": "wrong train", "tags": ["wrong", "trains"]},
    )
    assert down.status_code == 200, down.text
    feedback = down.json()
    assert feedback["rating"] == "down"
    assert feedback["tags"] == ["wrong", "trains"]
    assert feedback["cache_evicted"] == 1
    assert entries() is None
    fresh = erin.post("/chat", json=question)
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["answer"]["cached"] is False

    up = erin.post(
        f"/chat/{original_chat}/messages/{original['message_id']}/feedback", json={"rating": "up"}
    )
    assert up.status_code == 200, up.text
    assert up.json()["cache_evicted"] is None
    changed = erin.post(
        f"/chat/{original_chat}/messages/{original['message_id']}/feedback",
        json={"rating": "down"},
    )
    assert changed.json()["feedback_id"] == up.json()["feedback_id"]  # replaced, not added

    question_id = erin.get(f"/chat/{original_chat}").json()["messages"][0]["message_id"]
    _error(
        frank.post(
            f"/chat/{original_chat}/messages/{original['message_id']}/feedback",
            json={"rating": "up"},
        ),
        404,
    )
    _error(
        erin.post(f"/chat/{original_chat}/messages/{question_id}/feedback", json={"rating": "up"}),
        422,
        "message_id",
    )
    _error(
        erin.post(
            f"/chat/{original_chat}/messages/{original['message_id']}/feedback",
            json={"rating": "meh"},
        ),
        422,
        "rating",
    )
    _error(erin.post(f"/chat/{original_chat}/messages/x/feedback", json={"rating": "up"}), 404)
    _error(erin.get("/feedback"), 403)

    listed = admin.get("/feedback", params={"since": since})
    assert listed.status_code == 200, listed.text
    records = [r for r in listed.json()["feedback"] if r["user_id"] == erin.user_id]  # type: ignore[attr-defined]
    assert [(r["message_id"], r["rating"]) for r in records] == [
        (original["message_id"], "down"),
        (served["message_id"], "down"),
    ]
    assert records[1]["comment"] == "wrong train"
    assert records[1]["question"] == question["message"]
    assert records[1]["answer"] == served["content"]
    later = admin.get("/feedback", params={"since": datetime.now(UTC).isoformat()})
    assert later.json()["feedback"] == []
    _error(admin.get("/feedback", params={"since": "yesterday"}), 422, "since")

    exported = admin.get("/feedback/export", params={"since": since})
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    mine = [r for r in lines if r["user_id"] == erin.user_id]  # type: ignore[attr-defined]
    assert mine == records

    # The cache being down never fails the feedback.
    platform.cache.stop()
    try:
        started = time.monotonic()
        again = erin.post(
            f"/chat/{hit['chat_id']}/messages/{served['message_id']}/feedback",
            json={"rating": "down", "comment": "still wrong"},
        )
        assert again.status_code == 200, again.text
        assert again.json()["cache_evicted"] is None
        assert again.json()["comment"] == "still wrong"
        assert time.monotonic() - started < 5
    finally:
        platform.cache.start()
        platform.wait_ready([platform.cache])


def test_a_message_longer_than_the_models_window_is_refused_with_its_size(
    new_user: NewUser, prompt_tokens: Callable[[list[tuple[str, str]]], int]
) -> None:
    grace = new_user("grace")
    # Within the gateway's character limit, beyond the tiny model's 2048-token window.
    long = "The library lends books, music and films to its members. " * 150
    refused = grace.post("/chat", json={"message": long, "max_tokens": 100})
    window_left = 2048 - 100 - prompt_tokens([("system", DEFAULT_SYSTEM), ("user", "")])
    message = _error(refused, 422)
    assert message.startswith("content: message is ")
    assert f"this model's window allows {window_left} " in message
    assert grace.get("/chats").json()["chats"] == []  # nothing stored


def test_changing_a_profiles_prompt_drops_its_cached_answers(new_user: NewUser) -> None:
    ivy = new_user("ivy")
    bot = ivy.post("/bots", json={"name": "Chef", "system_prompt": "You are a chef."})
    assert bot.status_code == 201, bot.text
    bot_id = bot.json()["bot_id"]
    question = {
        "message": "How long do I roast a chicken?",
        "bot_id": bot_id,
        "max_tokens": 8,
        "temperature": 0,  # every miss stores the same answer
    }

    def ask() -> dict[str, Any]:
        asked = ivy.post("/chat", json=question)
        assert asked.status_code == 200, asked.text
        answer: dict[str, Any] = asked.json()["answer"]
        return answer

    first = ask()
    assert not first["cached"]

    # The answer is stored in the cache off the hot path, from the results topic.
    def cached() -> dict[str, Any] | None:
        answer = ask()
        return answer if answer["cached"] else None

    hit = eventually(cached, timeout=60, what="a cache hit")
    assert hit["content"] == first["content"]

    renamed = ivy.patch(f"/bots/{bot_id}", json={"name": "Head chef"})
    assert renamed.status_code == 200, renamed.text
    assert ask()["cached"], "a new name changes no answer"

    changed = ivy.patch(f"/bots/{bot_id}", json={"system_prompt": "You are a pastry chef."})
    assert changed.status_code == 200, changed.text
    assert not ask()["cached"], "an answer to the old prompt was reused"


def test_thumbs_down_on_a_shared_answer_hides_it_from_that_user_only(
    admin: httpx.Client, new_user: NewUser, platform: Platform
) -> None:
    created = admin.post(
        "/bots",
        json={
            "name": "Station FAQ",
            "system_prompt": "You answer travel FAQs.",
            "cache_scope": "tenant",
        },
    )
    assert created.status_code == 201, created.text
    bot_id = created.json()["bot_id"]
    uma, vic = new_user("uma", tenant_id="rail-co"), new_user("vic", tenant_id="rail-co")
    question = {
        "message": "Where does the night train to Vienna leave from?",
        "bot_id": bot_id,
        "max_tokens": 8,
        "temperature": 0,
    }
    first = uma.post("/chat", json=question)
    assert first.status_code == 200, first.text
    assert first.json()["answer"]["cached"] is False
    scroll = (
        f"http://{platform.cache.env['QDRANT_ADDR']}"
        "/collections/parley_cache_all_minilm_l6_v2/points/scroll"
    )
    of_bot = {"filter": {"must": [{"key": "bot_id", "match": {"value": bot_id}}]}, "limit": 10}

    def stored() -> list[dict[str, Any]] | None:
        found = httpx.post(scroll, json=of_bot)
        assert found.status_code == 200, found.text
        points: list[dict[str, Any]] = found.json()["result"]["points"]
        return points or None

    # Uma's answer, shared in the tenant, before anyone asks again (a miss would add another).
    assert len(eventually(stored, what="the shared cache entry")) == 1

    hit = vic.post("/chat", json=question)
    assert hit.status_code == 200, hit.text
    assert hit.json()["answer"]["cached"] is True
    served = _answers(vic, hit.json()["chat_id"])[0]
    down = vic.post(
        f"/chat/{hit.json()['chat_id']}/messages/{served['message_id']}/feedback",
        json={"rating": "down"},
    )
    assert down.status_code == 200, down.text
    assert down.json()["cache_evicted"] == 1

    # Vic no longer gets the answer he rejected; Uma, who did not reject it, still does.
    assert vic.post("/chat", json=question).json()["answer"]["cached"] is False
    assert uma.post("/chat", json=question).json()["answer"]["cached"] is True
