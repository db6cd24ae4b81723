"""A thumbs-down on a shared (tenant or global) answer against the real Qdrant: hidden from the
user who gave it at once, deleted for everyone once enough distinct users did, and no rejection
lost to a concurrent one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import pytest
from qdrant_client import AsyncQdrantClient

from parley.v1 import cache_pb2, types_pb2
from parley_cache.store import CacheStore, Eviction

if TYPE_CHECKING:
    from conftest import CacheFactory, CacheService

pytestmark = pytest.mark.integration

QUESTION = "How do I undo the last git commit?"
REWORDED = "How can I revert my most recent commit in git?"
ANSWER = "Run `git reset --soft HEAD~1`."
GLOBAL: dict[str, Any] = {"scope": types_pb2.CACHE_SCOPE_GLOBAL, "bot_id": "faq"}
ACME: dict[str, Any] = {"scope": types_pb2.CACHE_SCOPE_TENANT, "tenant_id": "acme"}


async def reject(cache: CacheService, user_id: str, **ids: str) -> int:
    response = await cache.stub.Evict(cache_pb2.EvictRequest(user_id=user_id, **ids), timeout=30)
    return response.evicted


async def rejected_by(cache: CacheService, entry_id: str) -> list[str] | None:
    """The entry's list of users who rejected it; None when the entry is gone."""
    points = await cache.client.retrieve(
        cache.store.collection, ids=[entry_id], with_payload=["rejected_by"]
    )
    if not points:
        return None
    value = (points[0].payload or {}).get("rejected_by", [])
    assert isinstance(value, list)
    return sorted(value)


async def shared_entry(cache: CacheService, **scope: Any) -> str:
    """Alice's answer stored in a shared scope; returns the entry id others are served."""
    await cache.ask("alice", QUESTION, answer=ANSWER, **scope)
    served = await cache.lookup("zoe", REWORDED, **scope)
    assert served.hit
    assert served.answer == ANSWER
    return served.entry_id


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_a_rejection_hides_a_global_entry_from_that_user_only(
    make_cache: CacheFactory, transport: str
) -> None:
    cache = await make_cache(transport=transport)
    entry_id = await shared_entry(cache, **GLOBAL)
    served = await cache.lookup("bob", QUESTION, **GLOBAL)
    assert (served.hit, served.entry_id) == (True, entry_id)

    assert await reject(cache, "bob", entry_id=entry_id) == 1
    for text in (QUESTION, REWORDED):
        again = await cache.lookup("bob", text, **GLOBAL)
        assert not again.hit
        assert again.answer == ""
    # Everyone else, its author included, is still served it: one user cannot delete it.
    for user in ("carol", "zoe", "alice"):
        other = await cache.lookup(user, REWORDED, **GLOBAL)
        assert (other.hit, other.answer) == (True, ANSWER), user
    assert await cache.store.count() == 1
    assert await rejected_by(cache, entry_id) == ["bob"]


async def test_a_rejection_hides_a_tenant_entry_from_that_user_only(cache: CacheService) -> None:
    entry_id = await shared_entry(cache, **ACME)
    assert await reject(cache, "carol", entry_id=entry_id) == 1
    assert not (await cache.lookup("carol", QUESTION, **ACME)).hit
    assert (await cache.lookup("dave", QUESTION, **ACME)).answer == ANSWER
    assert (await cache.lookup("alice", QUESTION, **ACME)).answer == ANSWER


async def test_the_next_best_shared_entry_is_served_after_a_rejection(
    make_cache: CacheFactory,
) -> None:
    # One candidate per lookup: the rejected entry must be left out by the search itself, not
    # dropped from its results afterwards.
    cache = await make_cache(cache_candidates=1)
    await cache.ask("alice", QUESTION, answer=ANSWER, **GLOBAL)
    second = await cache.lookup("carol", REWORDED, bypass=True, **GLOBAL)
    await cache.answer(second, "Use `git revert HEAD`.", user_id="carol")

    best = await cache.lookup("bob", QUESTION, **GLOBAL)
    assert (best.hit, best.answer) == (True, ANSWER)
    assert await reject(cache, "bob", entry_id=best.entry_id) == 1
    next_best = await cache.lookup("bob", QUESTION, **GLOBAL)
    assert next_best.hit
    assert next_best.answer == "Use `git revert HEAD`."
    assert next_best.entry_id != best.entry_id
    assert next_best.score < best.score
    # Both rejected: nothing left for bob, and a fresh answer of his is stored and served.
    assert await reject(cache, "bob", entry_id=next_best.entry_id) == 1
    fresh = await cache.lookup("bob", QUESTION, **GLOBAL)
    assert not fresh.hit
    await cache.answer(fresh, "`git reset HEAD~1` keeps your changes.", user_id="bob")
    assert (await cache.lookup("bob", QUESTION, **GLOBAL)).answer == (
        "`git reset HEAD~1` keeps your changes."
    )


async def test_enough_distinct_users_delete_a_shared_entry_and_repeats_count_once(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache(cache_shared_evict_after=3)
    entry_id = await shared_entry(cache, **GLOBAL)

    assert await reject(cache, "bob", entry_id=entry_id) == 1
    # Bob again, by entry and by his own lookup's entry: nothing new is hidden or counted.
    assert await reject(cache, "bob", entry_id=entry_id) == 0
    assert await reject(cache, "bob", entry_id=entry_id, request_id="bobs-hit-turn") == 0
    assert await rejected_by(cache, entry_id) == ["bob"]
    assert await reject(cache, "carol", entry_id=entry_id) == 1
    assert await rejected_by(cache, entry_id) == ["bob", "carol"]
    assert (await cache.lookup("dave", QUESTION, **GLOBAL)).answer == ANSWER

    assert await reject(cache, "dave", entry_id=entry_id) == 1  # the third distinct user
    assert await rejected_by(cache, entry_id) is None
    assert await cache.store.count() == 0
    for user in ("erin", "alice"):
        assert not (await cache.lookup(user, QUESTION, **GLOBAL)).hit
    # A late rejection of the deleted entry finds nothing to do.
    assert await reject(cache, "frank", entry_id=entry_id) == 0


async def test_the_authors_rejection_of_a_fresh_shared_answer_counts_like_any_other(
    make_cache: CacheFactory,
) -> None:
    """Feedback on an answer the worker wrote names its request, not an entry; when the bot
    profile shares answers the entry is in the shared scope, and its author is one user."""
    cache = await make_cache(cache_shared_evict_after=2)
    request_id = await cache.ask("alice", QUESTION, answer=ANSWER, **GLOBAL)
    assert await reject(cache, "alice", request_id=request_id) == 1
    assert not (await cache.lookup("alice", REWORDED, **GLOBAL)).hit
    served = await cache.lookup("bob", REWORDED, **GLOBAL)
    assert served.answer == ANSWER
    assert await reject(cache, "bob", entry_id=served.entry_id) == 1
    assert await cache.store.count() == 0


async def test_a_user_scope_entry_is_deleted_at_once_whatever_the_threshold(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache(cache_shared_evict_after=5)
    await cache.ask("alice", QUESTION, answer="Delete the repository.")
    served = await cache.lookup("alice", REWORDED)
    assert served.hit
    # Bob, even naming the entry, neither deletes nor marks another user's own entry.
    assert await reject(cache, "bob", entry_id=served.entry_id) == 0
    assert await rejected_by(cache, served.entry_id) == []
    assert await reject(cache, "alice", entry_id=served.entry_id) == 1
    assert await rejected_by(cache, served.entry_id) is None
    assert not (await cache.lookup("alice", REWORDED)).hit
    assert await reject(cache, "alice", entry_id=served.entry_id) == 0


async def test_concurrent_rejections_are_never_lost(make_cache: CacheFactory) -> None:
    """Qdrant cannot append to a list: without the compare-and-set, rejections that read the
    same list overwrite each other's user."""
    cache = await make_cache(cache_shared_evict_after=9)
    entry_id = await shared_entry(cache, **GLOBAL)
    users = [f"user-{n}" for n in range(6)]
    # Each user twice at the same time: six distinct users, each counted once.
    results = await asyncio.gather(
        *(reject(cache, user, entry_id=entry_id) for user in users + users)
    )
    assert await rejected_by(cache, entry_id) == users
    # Each user's first landing call reports it hidden; the twin may too, or find it done.
    assert all(max(pair) == 1 for pair in zip(results[:6], results[6:], strict=True)), results
    for user in users:
        assert not (await cache.lookup(user, QUESTION, **GLOBAL)).hit
    assert (await cache.lookup("zoe", QUESTION, **GLOBAL)).hit

    # The last three at once reach the threshold of nine: the entry is deleted, whoever wins.
    late = await asyncio.gather(*(reject(cache, f"late-{n}", entry_id=entry_id) for n in range(3)))
    assert await rejected_by(cache, entry_id) is None
    assert sum(late) == 3
    assert not (await cache.lookup("zoe", QUESTION, **GLOBAL)).hit


class InterleavingClient:
    """The real client, except that once, between a rejection's read of the entry and its
    write, ``meanwhile`` runs: another replica's rejection landing in between, the interleaving
    in which a plain read-modify-write loses that one."""

    def __init__(
        self, client: AsyncQdrantClient, meanwhile: Callable[[], Awaitable[object]]
    ) -> None:
        self._client = client
        self._meanwhile: Callable[[], Awaitable[object]] | None = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def retrieve(self, *args: Any, **kwargs: Any) -> Any:
        points = await self._client.retrieve(*args, **kwargs)
        if self._meanwhile is not None:
            meanwhile, self._meanwhile = self._meanwhile, None
            await meanwhile()
        return points


@pytest.mark.parametrize(
    ("threshold", "expected", "left"),
    [
        (3, Eviction(hidden=1, entry_scope="global"), ["bob", "carol"]),
        (2, Eviction(hidden=1, deleted_shared=1, entry_scope="global"), None),
    ],
)
async def test_a_rejection_landing_between_read_and_write_is_kept(
    cache: CacheService, threshold: int, expected: Eviction, left: list[str] | None
) -> None:
    entry_id = await shared_entry(cache, **GLOBAL)

    def replica(client: AsyncQdrantClient) -> CacheStore:
        return CacheStore(
            client,
            embedding_model=cache.embedder.model_id,
            dimension=cache.embedder.dimension,
            collection=cache.store.collection,
            clock=cache.clock,
        )

    other = replica(cache.client)
    racing = replica(
        cast(
            AsyncQdrantClient,
            InterleavingClient(
                cache.client,
                lambda: other.evict(
                    user_id="bob", entry_id=entry_id, delete_shared_after=threshold
                ),
            ),
        )
    )
    outcome = await racing.evict(user_id="carol", entry_id=entry_id, delete_shared_after=threshold)
    assert outcome == expected
    # Bob's rejection is kept; with a threshold of two, Carol's makes the second and deletes it.
    assert await rejected_by(cache, entry_id) == left
