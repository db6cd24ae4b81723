"""Qdrant down: chats go on without the cache (every question is a miss, answered by a worker);
once Qdrant is back, cached answers are served again and new ones are cached."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from tests.conftest import eventually

pytestmark = pytest.mark.faults


def _ask(client: httpx.Client, message: str) -> dict[str, Any]:
    reply = client.post("/chat", json={"message": message, "max_tokens": 5})
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()["answer"]
    return answer


def _cached(client: httpx.Client, message: str) -> dict[str, Any] | None:
    answer = _ask(client, message)
    return answer if answer["cached"] else None


def _cache_misses(platform: Platform) -> float:
    """Lookups the cache service itself answered with a miss (its Prometheus counter)."""
    port = platform.cache.env["METRICS_PORT"]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in metrics.splitlines():
        if line.startswith('parley_cache_lookups_total{outcome="miss"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("the cache's metrics have no parley_cache_lookups_total miss series")


def test_qdrant_outage_is_a_miss_and_the_cache_recovers(
    fault_stack: LocalStack, fault_platform: Platform, client: httpx.Client
) -> None:
    known = "How far away is the Moon from the Earth?"
    assert not _ask(client, known)["cached"]
    eventually(lambda: _cached(client, known), timeout=30, what="the first answer to be cached")

    fault_stack.qdrant.stop()
    try:
        misses = _cache_misses(fault_platform)
        for question in (known, "Which planet has the most moons?"):
            started = time.monotonic()
            answer = _ask(client, question)
            assert not answer["cached"]
            assert answer["content"] == " tok" * 5
            assert time.monotonic() - started < 5.0
        # The cache answered both lookups itself, at once: not a lookup left hanging on Qdrant
        # until the gateway gave up on it.
        assert _cache_misses(fault_platform) == misses + 2
    finally:
        fault_stack.qdrant.start()

    # Entries stored before the outage are served again, and new answers are cached again.
    eventually(lambda: _cached(client, known), timeout=60, what="a cache hit after the outage")
    fresh = "What is the boiling point of water on Mount Everest?"
    assert not _ask(client, fresh)["cached"]
    hit = eventually(lambda: _cached(client, fresh), timeout=60, what="a new answer cached")
    assert hit["content"] == " tok" * 5
