"""A cached question asked with `Cache-Control: no-cache` (or `no_cache: true`) gets a fresh
answer from a worker, through the public API of the running platform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from parley_devstack.platform import Platform
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]


def test_no_cache_header_and_field_bypass_a_cached_answer(
    platform: Platform, new_user: NewUser
) -> None:
    erin = new_user("erin")
    question = {"message": "What is the tallest mountain in Africa?", "max_tokens": 8}

    def cached() -> dict[str, Any] | None:
        asked = erin.post("/chat", json=question)
        assert asked.status_code == 200, asked.text
        answer: dict[str, Any] = asked.json()["answer"]
        return answer if answer["cached"] else None

    eventually(cached, what="a cache hit")

    for bypass in (
        {"headers": {"Cache-Control": "no-cache"}, "json": question},
        {"headers": {"Cache-Control": "max-age=0, No-Cache"}, "json": question},
        {"json": {**question, "no_cache": True}},
    ):
        fresh = erin.post("/chat", **bypass)
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["answer"]["cached"] is False, bypass
        assert fresh.json()["answer"]["cache_score"] is None
    # Without it, the cache answers again.
    assert eventually(cached, what="a cache hit after the bypasses")["cache_score"] >= 0.79


def test_the_openai_api_takes_the_no_cache_header_too(
    platform: Platform, new_user: NewUser
) -> None:
    fay = new_user("fay")
    question = {
        "model": "parley-tiny",
        "messages": [{"role": "user", "content": "What is the longest river in Asia?"}],
        "max_tokens": 8,
    }

    def cached() -> dict[str, Any] | None:
        asked = fay.post("/v1/chat/completions", json=question)
        assert asked.status_code == 200, asked.text
        parley: dict[str, Any] = asked.json()["parley"]
        return parley if parley["cached"] else None

    eventually(cached, what="a cache hit")
    for bypass in (
        {"headers": {"Cache-Control": "no-cache"}, "json": question},
        {"json": {**question, "no_cache": True}},
    ):
        fresh = fay.post("/v1/chat/completions", **bypass)
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["parley"]["cached"] is False, bypass


def test_an_answer_cut_at_max_tokens_is_served_from_the_cache_as_cut(
    platform: Platform, new_user: NewUser
) -> None:
    gail = new_user("gail")
    question = {"message": "Describe the rings of Saturn", "max_tokens": 8, "temperature": 0}
    first = gail.post("/chat", json=question)
    assert first.status_code == 200, first.text
    assert first.json()["answer"]["finish_reason"] == "length"

    def cached() -> dict[str, Any] | None:
        asked = gail.post("/chat", json=question)
        assert asked.status_code == 200, asked.text
        return asked.json() if asked.json()["answer"]["cached"] else None

    hit = eventually(cached, what="a cache hit")
    assert hit["answer"]["content"] == first.json()["answer"]["content"]
    assert hit["answer"]["finish_reason"] == "length"

    def stored() -> dict[str, Any] | None:
        messages = gail.get(f"/chat/{hit['chat_id']}").json()["messages"]
        return messages[-1] if messages[-1]["role"] == "assistant" else None

    assert eventually(stored, what="the cached answer stored")["finish_reason"] == "length"
