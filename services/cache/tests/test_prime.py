"""A question embedded ahead of its lookup (Prime): the lookup reuses the vector, made once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from parley.v1 import cache_pb2

if TYPE_CHECKING:
    from conftest import CacheFactory, CacheService
    from parley_cache.embedder import Embedder

pytestmark = pytest.mark.integration


async def test_a_primed_question_is_embedded_once(
    make_cache: CacheFactory, forgetful_embedder: Embedder
) -> None:
    # Without the memo of recent texts: only the vector being made can be shared.
    cache = await make_cache(embedder=forgetful_embedder)
    question = "  How do   I enable dark mode in the settings? "
    before = forgetful_embedder.stats
    primed, looked_up = await asyncio.gather(
        cache.stub.Prime(cache_pb2.PrimeRequest(question=question), timeout=30),
        cache.lookup("prime-user", question),
    )
    after = forgetful_embedder.stats
    assert primed == cache_pb2.PrimeResponse()
    assert not looked_up.hit
    assert after.texts - before.texts == 1  # the lookup waited for the primed vector
    assert after.reused - before.reused == 1


async def test_an_empty_question_primes_nothing(cache: CacheService, embedder: Embedder) -> None:
    before = embedder.stats
    await cache.stub.Prime(cache_pb2.PrimeRequest(question=" \n "), timeout=30)
    assert embedder.stats == before


async def test_a_caller_sharing_a_vector_survives_the_first_callers_cancellation(
    forgetful_embedder: Embedder,
) -> None:
    text = "a text whose first caller gives up"
    first = asyncio.ensure_future(forgetful_embedder.embed(text))
    await asyncio.sleep(0)  # queued
    second = asyncio.ensure_future(forgetful_embedder.embed(text))
    await asyncio.sleep(0)  # waiting on the first one's vector
    first.cancel()
    vector = await second
    assert len(vector) == forgetful_embedder.dimension
    assert vector == (await forgetful_embedder.embed_many([text]))[0]
