"""Requests for variety are not served from the cache; answers about "now" expire soon; every
lookup says why it decided as it did."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import CacheService, Clock

pytestmark = pytest.mark.integration


async def test_a_hot_request_is_never_served_but_its_answer_is_stored(cache: CacheService) -> None:
    await cache.ask("alice", "Tell me a joke", answer="A joke.", temperature=1.0)
    hot = await cache.lookup("alice", "Tell me a joke", temperature=1.0)
    assert not hot.hit
    assert hot.reason.startswith("temperature 1.00 above 0.70")
    assert hot.HasField("key")  # the fresh answer is still stored
    assert not hot.key.question_vector  # embedded when it is: nothing was searched
    calm = await cache.lookup("alice", "Tell me a joke", temperature=0.2)
    assert calm.hit
    assert calm.answer == "A joke."
    assert calm.score == 1.0
    assert calm.reason.startswith("verifier 1.000 >=")


async def test_a_time_sensitive_answer_gets_the_short_ttl(
    cache: CacheService, clock: Clock
) -> None:
    fresh = await cache.lookup("alice", "What is the weather in Oslo today?")
    assert fresh.key.ttl_seconds == cache.settings.cache_fresh_ttl_seconds
    timeless = await cache.lookup("alice", "Why is the sky blue?")
    assert timeless.key.ttl_seconds == cache.settings.cache_ttl_seconds
    await cache.answer(fresh, "Sunny.", user_id="alice")
    assert (await cache.lookup("alice", "What is the weather in Oslo today?")).hit
    clock.advance(cache.settings.cache_fresh_ttl_seconds + 1)
    assert not (await cache.lookup("alice", "What is the weather in Oslo today?")).hit


async def test_a_miss_says_why(cache: CacheService) -> None:
    missed = await cache.lookup("alice", "How do I enable dark mode?")
    assert missed.reason == "no stored question close enough"
    await cache.answer(missed, "Settings > Display.", user_id="alice")
    near = await cache.lookup("alice", "How do I make pancakes without eggs?")
    assert not near.hit
    assert near.reason
