"""An entry's life against the real Qdrant: TTL and purge, eviction on feedback, bypass,
invalidation by bot profile or model, bounded size, and the collection's layout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from qdrant_client import models

from parley.v1 import cache_pb2, types_pb2
from parley_cache.maintenance import Maintenance, MaintenanceReport
from parley_cache.store import CONTEXT_VECTOR, QUESTION_VECTOR, CacheStore, Eviction

if TYPE_CHECKING:
    from conftest import CacheFactory, CacheService, Clock

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of Australia?"
REWORDED = "Which city is Australia's capital?"
ANSWER = "Canberra."


async def test_an_entry_expires_after_its_ttl_and_is_purged(
    make_cache: CacheFactory, clock: Clock
) -> None:
    cache = await make_cache(cache_ttl_seconds=3600)
    missed = await cache.lookup("alice", QUESTION)
    assert missed.key.ttl_seconds == 3600
    await cache.answer(missed, ANSWER, user_id="alice")
    await cache.ask("alice", "How tall is Mount Everest?", answer="8,849 m")

    clock.advance(3599)
    assert (await cache.lookup("alice", REWORDED)).hit
    report = await Maintenance(cache.store, max_entries=100).run_once()
    assert report == MaintenanceReport(expired=0, trimmed=0)

    clock.advance(2)  # one second past the TTL: no longer served, then purged
    assert not (await cache.lookup("alice", REWORDED)).hit
    assert await cache.store.count() == 2
    report = await Maintenance(cache.store, max_entries=100).run_once()
    assert report == MaintenanceReport(expired=2, trimmed=0)
    assert await cache.store.count() == 0


async def test_negative_feedback_evicts_the_entry_of_that_user_only(cache: CacheService) -> None:
    alice_request = await cache.ask("alice", QUESTION, answer="Sydney.")
    await cache.ask("bob", QUESTION, answer=ANSWER)
    served = await cache.lookup("alice", REWORDED)
    assert served.hit
    assert served.answer == "Sydney."

    # Bob's feedback cannot reach Alice's entry, even naming its request or its entry.
    for request in (
        cache_pb2.EvictRequest(user_id="bob", request_id=alice_request),
        cache_pb2.EvictRequest(user_id="bob", entry_id=served.entry_id),
    ):
        assert (await cache.stub.Evict(request, timeout=10)).evicted == 0
    assert (await cache.lookup("alice", REWORDED)).hit

    # Alice's thumbs-down on the answer she was served evicts it: her next ask is a miss.
    evicted = await cache.stub.Evict(
        cache_pb2.EvictRequest(user_id="alice", entry_id=served.entry_id), timeout=10
    )
    assert evicted.evicted == 1
    assert not (await cache.lookup("alice", REWORDED)).hit
    assert (await cache.lookup("bob", REWORDED)).answer == ANSWER

    # By request id too: the entry an answer was stored from.
    request_id = await cache.ask("alice", "How tall is Mount Everest?", answer="8,849 m")
    evicted = await cache.stub.Evict(
        cache_pb2.EvictRequest(user_id="alice", request_id=request_id), timeout=10
    )
    assert evicted.evicted == 1
    assert not (await cache.lookup("alice", "How tall is Mount Everest?")).hit


async def test_evict_refuses_requests_it_cannot_act_on(cache: CacheService) -> None:
    for request, field in (
        (cache_pb2.EvictRequest(request_id="r1"), "user_id"),
        (cache_pb2.EvictRequest(user_id="alice"), "request_id"),
        (cache_pb2.EvictRequest(user_id="alice", entry_id="not-a-uuid"), "entry_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cache.stub.Evict(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (caught.value.details() or "")


async def test_bypass_answers_a_miss_but_the_answer_is_still_stored(cache: CacheService) -> None:
    stale = await cache.ask("alice", QUESTION, answer="Sydney.")
    fresh = await cache.lookup("alice", QUESTION, bypass=True)
    assert not fresh.hit
    assert fresh.answer == ""
    assert fresh.key.scope_key == "user:alice"  # so the fresh answer is stored ...
    # ... its question embedded then, off the hot path: the lookup searched nothing.
    assert not fresh.key.question_vector
    await cache.answer(fresh, ANSWER, user_id="alice")
    assert await cache.store.count() == 2
    # ... and served once the stale one is evicted.
    evicted = await cache.store.evict(user_id="alice", request_id=stale, delete_shared_after=3)
    assert evicted == Eviction(deleted=1, hidden=0, deleted_shared=0)
    again = await cache.lookup("alice", QUESTION)
    assert again.hit
    assert again.answer == ANSWER


async def test_invalidation_deletes_a_bot_profiles_or_a_models_entries(
    cache: CacheService,
) -> None:
    await cache.ask("alice", QUESTION, answer=ANSWER, bot_id="geo", model="m-1")
    await cache.ask("alice", QUESTION, answer=ANSWER, bot_id="geo", model="m-2")
    await cache.ask("alice", QUESTION, answer=ANSWER, bot_id="travel", model="m-1")
    await cache.ask("alice", QUESTION, answer=ANSWER, bot_id="travel", model="m-2")

    async def invalidate(**fields: str) -> int:
        response = await cache.stub.Invalidate(cache_pb2.InvalidateRequest(**fields), timeout=10)
        return response.deleted

    assert await invalidate(bot_id="geo", model="m-2") == 1
    assert (await cache.lookup("alice", QUESTION, bot_id="geo", model="m-1")).hit
    assert not (await cache.lookup("alice", QUESTION, bot_id="geo", model="m-2")).hit
    assert await invalidate(model="m-1") == 2
    assert not (await cache.lookup("alice", QUESTION, bot_id="travel", model="m-1")).hit
    assert (await cache.lookup("alice", QUESTION, bot_id="travel", model="m-2")).hit
    assert await invalidate(bot_id="travel") == 1
    assert await cache.store.count() == 0
    assert await invalidate(bot_id="geo") == 0

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invalidate(bot_id=" ")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_size_is_bounded_by_deleting_the_oldest_entries(
    cache: CacheService, clock: Clock
) -> None:
    questions = [
        "How do I reverse a list in Python?",
        "What is the capital of France?",
        "How do I make pancakes?",
        "Why is the sky blue?",
        "How many legs does a spider have?",
    ]
    for question in questions:
        await cache.ask("alice", question, answer=f"answer: {question}")
        clock.advance(10)  # created_at orders them

    report = await Maintenance(cache.store, max_entries=3).run_once()
    assert report == MaintenanceReport(expired=0, trimmed=2)
    assert await cache.store.count() == 3
    for question in questions[:2]:
        assert not (await cache.lookup("alice", question)).hit
    for question in questions[2:]:
        assert (await cache.lookup("alice", question)).answer == f"answer: {question}"
    assert await Maintenance(cache.store, max_entries=3).run_once() == MaintenanceReport(0, 0)


async def test_an_answer_cut_at_max_tokens_serves_only_the_same_budget(
    cache: CacheService,
) -> None:
    missed = await cache.lookup("alice", "Tell me about Canberra.", max_tokens=16)
    await cache.answer(
        missed, "Canberra is the", user_id="alice", finish_reason=types_pb2.FINISH_REASON_LENGTH
    )
    assert (await cache.lookup("alice", "Tell me about Canberra.", max_tokens=16)).hit
    assert not (await cache.lookup("alice", "Tell me about Canberra.", max_tokens=512)).hit


async def test_the_collection_is_laid_out_for_filtered_lookups(cache: CacheService) -> None:
    info = await cache.client.get_collection(cache.store.collection)
    vectors = info.config.params.vectors
    assert isinstance(vectors, dict)
    assert set(vectors) == {QUESTION_VECTOR, CONTEXT_VECTOR}
    assert vectors[QUESTION_VECTOR].size == cache.embedder.dimension
    assert vectors[QUESTION_VECTOR].distance == models.Distance.COSINE
    context_hnsw = vectors[CONTEXT_VECTOR].hnsw_config
    assert context_hnsw is not None
    assert context_hnsw.m == 0  # never searched on its own: no graph to build
    hnsw = info.config.hnsw_config
    assert (hnsw.m, hnsw.ef_construct, hnsw.payload_m) == (16, 128, 16)

    schema = info.payload_schema
    assert schema["scope_key"].params is not None
    assert getattr(schema["scope_key"].params, "is_tenant", False) is True
    keywords = ("scope_fingerprint", "context_fingerprint", "context_shape", "request_id")
    for field in (*keywords, "rejected_by"):
        assert schema[field].data_type == models.PayloadSchemaType.KEYWORD
    for field in ("key_version", "created_at", "expires_at", "max_tokens"):
        assert schema[field].data_type == models.PayloadSchemaType.INTEGER


async def test_a_collection_of_an_older_layout_is_replaced(cache: CacheService) -> None:
    name = f"test_cache_old_{uuid.uuid4().hex[:8]}"
    await cache.client.create_collection(
        name, vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
    )
    try:
        store = CacheStore(cache.client, embedding_model="x", dimension=384, collection=name)
        await store.ensure_collection()
        await store.ensure_collection()  # idempotent once in the new layout
        vectors = (await cache.client.get_collection(name)).config.params.vectors
        assert isinstance(vectors, dict)
        assert QUESTION_VECTOR in vectors
    finally:
        await cache.client.delete_collection(name)


async def test_the_periodic_task_keeps_running_through_a_failed_round(
    cache: CacheService, clock: Clock
) -> None:
    await cache.ask("alice", QUESTION, answer=ANSWER)
    clock.advance(cache.settings.cache_ttl_seconds + 1)
    task = asyncio.create_task(Maintenance(cache.store, max_entries=100).run(0.05))
    try:
        await eventually(lambda: _count_is(cache, 0), what="the expired entry purged")
        # Its collection gone, every round fails; the task must survive to purge again later.
        await cache.client.delete_collection(cache.store.collection)
        await asyncio.sleep(0.3)
        assert not task.done()
        await cache.store.ensure_collection()
        await cache.ask("alice", QUESTION, answer=ANSWER)
        clock.advance(cache.settings.cache_ttl_seconds + 1)
        await eventually(lambda: _count_is(cache, 0), what="a purge after the failed rounds")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _count_is(cache: CacheService, expected: int) -> bool:
    return await cache.store.count() == expected


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = ""
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)
