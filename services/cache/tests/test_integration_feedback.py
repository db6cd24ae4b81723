"""Online adjustment on the real Qdrant: hits and rejections counted per scope where every replica
sees them and a restart finds them, the rejections (thumbs-down, regenerate, a sampled answer that
disagrees) counted in the served entry's scope, and the operator's rate choosing the threshold."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from parley.v1 import cache_pb2
from parley_cache.feedback_counts import FeedbackCounts, ScopeCounts
from parley_cache.tuning import FeedbackTuner
from parley_cache.verifier import default_verifier

if TYPE_CHECKING:
    from conftest import CacheService, Clock

pytestmark = pytest.mark.integration

CALIBRATION = default_verifier().weights.calibration
QUESTION = "What is the capital of France?"
ANSWER = "The capital of France is Paris."


def replica(cache: CacheService, clock: Clock, name: str | None = None) -> FeedbackTuner:
    """Another replica (or the same one restarted) on the service's feedback collection."""
    counts = FeedbackCounts(
        cache.client, collection=cache.feedback.collection, replica_id=name, clock=clock
    )
    return FeedbackTuner(CALIBRATION, counts, refresh_s=0)


async def test_counts_are_shared_by_replicas_and_outlive_a_restart(
    cache: CacheService, clock: Clock
) -> None:
    scope, rate = "tenant:acme", 0.15
    calibrated = CALIBRATION.threshold_for(rate)
    a, b = replica(cache, clock, "a"), replica(cache, clock, "b")
    for _ in range(10):
        a.served(scope)
    for _ in range(6):
        b.rejected(scope)
    # Each replica knows its own at once, the other's once written.
    assert await a.counts(scope) == ScopeCounts(hits=10)
    assert await a.threshold(scope, rate) == calibrated
    await a.flush()
    await b.flush()
    assert await a.counts(scope) == ScopeCounts(hits=10, rejected=6)  # its own not twice
    assert await b.counts(scope) == ScopeCounts(hits=10, rejected=6)
    assert await a.threshold(scope, rate) > calibrated
    assert await b.threshold("tenant:other", rate) == calibrated
    # Written again after more hits: the point is overwritten, not added to.
    a.served(scope)
    await a.flush()
    restarted = replica(cache, clock)
    assert await restarted.counts(scope) == ScopeCounts(hits=11, rejected=6)
    assert await restarted.threshold(scope, rate) > calibrated

    # Counts older than the window (7 days) no longer weigh, and are purged.
    clock.advance(8 * 86_400)
    later_counts = FeedbackCounts(cache.client, collection=cache.feedback.collection, clock=clock)
    assert await later_counts.totals(scope) == ScopeCounts()
    await later_counts.purge()
    points, _ = await cache.client.scroll(cache.feedback.collection, limit=10)
    assert points == []


async def test_rejections_count_in_the_served_entrys_scope(
    cache: CacheService, clock: Clock
) -> None:
    await cache.ask("alice", QUESTION, answer=ANSWER)
    hit = await cache.lookup("alice", QUESTION)
    assert hit.hit
    scope = "user:alice"
    assert await cache.tuner.counts(scope) == ScopeCounts(hits=1)

    # A sampled hit generated again: an answer that says the same agrees, another does not.
    compare = cache.stub.CompareSampledAnswer
    same = await compare(
        cache_pb2.CompareSampledAnswerRequest(
            entry_id=hit.entry_id, generated_answer="Paris is the capital city of France."
        )
    )
    assert (same.found, same.agreed) == (True, True)
    assert same.similarity > 0.75
    other = await compare(
        cache_pb2.CompareSampledAnswerRequest(
            entry_id=hit.entry_id, generated_answer="Bananas are rich in potassium."
        )
    )
    assert (other.found, other.agreed) == (True, False)
    assert other.similarity < 0.75
    assert await cache.tuner.counts(scope) == ScopeCounts(hits=1, rejected=1)

    # A thumbs-down (or a regenerate) on the served entry counts once: the second finds it gone.
    for _ in range(2):
        await cache.stub.Evict(cache_pb2.EvictRequest(user_id="alice", entry_id=hit.entry_id))
    assert await cache.tuner.counts(scope) == ScopeCounts(hits=1, rejected=2)
    gone = await compare(
        cache_pb2.CompareSampledAnswerRequest(entry_id=hit.entry_id, generated_answer="Lyon.")
    )
    assert not gone.found
    await cache.tuner.flush()
    assert await replica(cache, clock).counts(scope) == ScopeCounts(hits=1, rejected=2)

    for request, field in (
        (cache_pb2.CompareSampledAnswerRequest(entry_id="x", generated_answer="a"), "entry_id"),
        (cache_pb2.CompareSampledAnswerRequest(entry_id=hit.entry_id), "generated_answer"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await compare(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(f"{field}: ")


async def test_the_operators_rate_chooses_the_threshold(cache: CacheService) -> None:
    await cache.ask("bob", QUESTION, answer=ANSWER)
    lenient = await cache.lookup("bob", QUESTION, max_error_rate=0.4)
    assert lenient.hit
    assert f">= {CALIBRATION.threshold_for(0.4):.3f}" in lenient.reason
    strict = await cache.lookup("bob", "What's the capital city of France?", max_error_rate=0.001)
    assert not strict.hit
    assert "below 1.000" in strict.reason
    for bad in (-0.1, 1.0, 3.0):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cache.lookup("bob", QUESTION, max_error_rate=bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("max_error_rate: ")
