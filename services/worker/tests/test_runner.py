"""The worker's Kafka loop in this process, on the real Kafka of the local stack.

Each test has topics and a consumer group of its own (`Bus`), and an engine that wraps the fake
one: it counts what it was asked to generate and fails on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.timeutil import now_ms
from parley_devstack.stack import LocalStack
from parley_worker.engines.base import (
    ChatMessage,
    EngineSettings,
    GenerationEvent,
    GenerationRequest,
    PromptTooLongError,
)
from parley_worker.engines.fake import FakeEngine
from parley_worker.offsets import decode_attempts
from parley_worker.runner import Worker
from tests.integration.worker_bus import Bus, all_committed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class ScriptedEngine:
    """The fake engine (" tok" per token), plus failures on cue and a record of what ran.

    A prompt containing "TOO LONG" raises PromptTooLongError; one starting with "FAIL<n>" raises
    a RuntimeError its first n times (plain "FAIL": every time); with `broken` set, everything
    fails.
    """

    name = "scripted"
    model_name = "fake"

    def __init__(self, *, slots: int, tokens_per_s: float = 0.0, ttft_s: float = 0.0) -> None:
        self.max_concurrency = slots
        self._inner = FakeEngine(
            EngineSettings(
                "fake",
                "fake",
                max_concurrency=slots,
                fake_ttft_s=ttft_s,
                fake_tokens_per_s=tokens_per_s,
            )
        )
        self.calls: list[str] = []
        self.active = 0
        self.peak = 0
        self.broken = False
        self._failures: dict[str, int] = {}

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    @property
    def ready(self) -> bool:
        return self._inner.ready

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self._inner.count_tokens(messages)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self.calls.append(request.request_id)
        prompt = request.messages[-1].content
        if "TOO LONG" in prompt:
            raise PromptTooLongError(5000, 2048)
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if prompt.startswith("FAIL"):
            left = self._failures.setdefault(
                request.request_id, int(prompt.split()[0][4:] or 1_000_000)
            )
            if left > 0:
                self._failures[request.request_id] = left - 1
                raise RuntimeError("engine hiccup")
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            async for event in self._inner.generate(request):
                yield event
        finally:
            self.active -= 1


@pytest.fixture
async def bus(local_stack: LocalStack) -> AsyncIterator[Bus]:
    bus = Bus(local_stack.addresses.kafka_addr)
    await bus.start()
    yield bus
    await bus.stop()


class Running:
    def __init__(self, worker: Worker, engine: ScriptedEngine, task: asyncio.Task[None]) -> None:
        self.worker = worker
        self.engine = engine
        self.task = task


@contextlib.asynccontextmanager
async def running(
    bus: Bus, engine: ScriptedEngine, *, grace_s: float = 10.0, **overrides: Any
) -> AsyncIterator[Running]:
    await engine.start()
    worker = Worker(bus.settings(**overrides), engine)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        yield Running(worker, engine, task)
    finally:
        worker.stop_fetching()
        await task
        await worker.close(grace_s)
        await engine.stop()


# --- answers, streaming, commits -----------------------------------------------------------


async def test_streams_chunks_publishes_results_and_commits(bus: Bus) -> None:
    engine = ScriptedEngine(slots=4, tokens_per_s=200)
    async with running(bus, engine):
        await bus.request("chat-1", max_tokens=30)
        await bus.request(
            "summary-1",
            stream=False,
            max_tokens=5,
            kind=envelopes_pb2.COMPLETION_KIND_SUMMARY,
            summary_through=7,
        )
        await bus.wait(bus.answered("chat-1", "summary-1"), within=30, what="two results")
        await bus.wait(
            lambda: any(c.done for c in bus.chunks("chat-1")), within=10, what="final chunk"
        )
        await all_committed(bus)

    chat = bus.result_of("chat-1")
    assert chat.text == " tok" * 30
    assert chat.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert (chat.usage.completion_tokens, chat.kind) == (30, envelopes_pb2.COMPLETION_KIND_CHAT)
    assert chat.usage.prompt_tokens == engine.count_tokens([ChatMessage("user", "Hello there")])
    # 30 tokens at 200/s take about 150 ms.
    assert 100 <= chat.timings.generation_ms < 2000
    assert 3 <= chat.timings.time_per_output_token_ms < 50
    chunks = bus.chunks("chat-1")
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.text for c in chunks) == chat.text == chunks[-1].full_text
    # Batched by time: fewer messages than tokens, more than one.
    assert 3 <= len(chunks) <= 20
    assert chunks[-1].finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 30

    summary = bus.result_of("summary-1")
    assert summary.kind == envelopes_pb2.COMPLETION_KIND_SUMMARY
    assert summary.summary_through_ordinal == 7
    assert summary.text == " tok" * 5
    assert bus.chunks("summary-1") == []


async def test_backpressure_bounds_concurrency_without_rebalancing(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2, tokens_per_s=40)
    ids = [f"bp-{i}" for i in range(8)]
    async with running(bus, engine) as run:
        assignments = 0
        original = run.worker._on_assigned

        async def counting(assigned: set[TopicPartition]) -> None:
            nonlocal assignments
            assignments += 1
            await original(assigned)

        run.worker._on_assigned = counting  # type: ignore[method-assign]
        for request_id in ids:
            await bus.request(request_id, max_tokens=8)
        # Full: both slots busy and every assigned partition paused.
        await bus.wait(
            lambda: (
                run.worker.in_flight == 2
                and run.worker._consumer.paused() == run.worker._consumer.assignment()
            ),
            within=20,
            what="the worker to fill its slots and pause",
        )
        await bus.wait(bus.answered(*ids), within=60, what="all eight results")
        await all_committed(bus)

    assert engine.peak == 2
    assert sorted(engine.calls) == sorted(ids)
    assert assignments == 0, "pausing caused a rebalance"


async def test_expired_request_is_answered_without_generating(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2)
    async with running(bus, engine):
        await bus.request("late", deadline_ms=now_ms() - 1000)
        await bus.request("on-time")
        await bus.wait(bus.answered("late", "on-time"), within=30, what="results")
        await bus.wait(lambda: len(bus.chunks("late")) == 1, within=10, what="final chunk")
        await all_committed(bus)

    late = bus.result_of("late")
    assert late.finish_reason == types_pb2.FINISH_REASON_EXPIRED
    assert late.text == ""
    assert engine.calls == ["on-time"]
    only = bus.chunks("late")[0]
    assert only.done
    assert only.finish_reason == types_pb2.FINISH_REASON_EXPIRED


async def test_cancel_stops_generation_and_keeps_the_partial_text(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2, tokens_per_s=20)
    async with running(bus, engine):
        await bus.request("long", max_tokens=2000)  # 100 s if not stopped
        await bus.wait(lambda: len(bus.chunks("long")) >= 2, within=20, what="streaming")
        cancelled_at = time.monotonic()
        await bus.cancel("long")
        await bus.wait(bus.answered("long"), within=10, what="the cancelled result")
        took = time.monotonic() - cancelled_at
        assert engine.active == 0
        await all_committed(bus)

    result = bus.result_of("long")
    assert result.finish_reason == types_pb2.FINISH_REASON_CANCELLED
    assert took < 2.0
    assert 0 < result.usage.completion_tokens < 200
    assert result.text == " tok" * result.usage.completion_tokens
    assert "".join(c.text for c in bus.chunks("long")) == result.text


async def test_cancel_that_comes_before_the_request_is_fetched(bus: Bus) -> None:
    engine = ScriptedEngine(slots=1, tokens_per_s=20)
    async with running(bus, engine) as run:
        await bus.request("first", max_tokens=2000, key="same-chat")
        await bus.wait(lambda: run.worker.in_flight == 1, within=20, what="first to start")
        await bus.request("second", max_tokens=2000, key="same-chat")
        await bus.cancel("second")
        await asyncio.sleep(0.5)  # the cancel is read while the worker is full
        await bus.cancel("first")
        await bus.wait(bus.answered("first", "second"), within=20, what="both answers")
        await all_committed(bus)

    assert engine.calls == ["first"]
    second = bus.result_of("second")
    assert second.finish_reason == types_pb2.FINISH_REASON_CANCELLED
    assert second.usage.completion_tokens == 0


# --- failures ------------------------------------------------------------------------------


async def test_undecodable_messages_go_to_the_dead_letter_topic(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2)
    future = envelopes_pb2.CompletionRequest(schema_version=99, request_id="v99")
    async with running(bus, engine):
        _, garbage_at = await bus.raw(b"\xff\x00 not protobuf", key="chat-p")
        _, future_at = await bus.raw(future.SerializeToString(), key="chat-p")
        await bus.request("after-poison", key="chat-p")
        await bus.wait(bus.answered("after-poison"), within=30, what="the next request")
        await bus.wait(lambda: len(bus.dead_letters()) == 2, within=10, what="dead letters")
        await all_committed(bus)

    garbage, version = sorted(bus.dead_letters(), key=lambda letter: letter.offset)
    assert (garbage.offset, version.offset) == (garbage_at, future_at)
    assert garbage.source_topic == bus.topics.requests
    assert garbage.value == b"\xff\x00 not protobuf"
    assert garbage.key == b"chat-p"
    assert "not a CompletionRequest" in garbage.reason
    assert "schema_version 99" in version.reason
    assert engine.calls == ["after-poison"]


async def test_prompt_too_long_is_answered_with_an_error(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2)
    async with running(bus, engine):
        await bus.request("huge", prompt="TOO LONG " * 10)
        await bus.wait(bus.answered("huge"), within=30, what="the error result")
        await bus.wait(lambda: len(bus.chunks("huge")) == 1, within=10, what="final chunk")
        await all_committed(bus)

    result = bus.result_of("huge")
    assert result.finish_reason == types_pb2.FINISH_REASON_ERROR
    assert "5000 tokens" in result.error
    assert "context window holds 2048" in result.error
    assert result.text == ""
    chunk = bus.chunks("huge")[0]
    assert (chunk.done, chunk.error) == (True, result.error)
    assert bus.dead_letters() == []


async def test_transient_engine_failure_is_retried(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2)
    async with running(bus, engine):
        await bus.request("flaky", prompt="FAIL1 then fine", max_tokens=4)
        await bus.wait(bus.answered("flaky"), within=30, what="the result")
        await all_committed(bus)

    result = bus.result_of("flaky")
    assert result.error == ""
    assert result.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert result.text == " tok" * 4
    assert engine.calls == ["flaky", "flaky"]
    assert bus.dead_letters() == []


async def test_request_that_keeps_failing_is_dead_lettered_and_answered(bus: Bus) -> None:
    engine = ScriptedEngine(slots=2)
    async with running(bus, engine, max_attempts=3):
        _, offset = await bus.request("cursed", prompt="FAIL always")
        await bus.request("fine")
        await bus.wait(bus.answered("cursed", "fine"), within=30, what="results")
        await bus.wait(lambda: len(bus.dead_letters()) == 1, within=10, what="dead letter")
        await bus.wait(lambda: bool(bus.chunks("cursed")), within=10, what="the final chunk")
        await all_committed(bus)

    assert engine.calls.count("cursed") == 3
    letter = bus.dead_letters()[0]
    assert letter.offset == offset
    assert "failed on it 3 times" in letter.reason
    assert "engine hiccup" in letter.reason
    cursed = bus.result_of("cursed")
    assert cursed.finish_reason == types_pb2.FINISH_REASON_ERROR
    assert cursed.error == letter.reason
    # What the gateway that waits for it reads: one final chunk, with the reason.
    (final,) = bus.chunks("cursed")
    assert (final.done, final.finish_reason, final.error) == (
        True,
        types_pb2.FINISH_REASON_ERROR,
        letter.reason,
    )
    assert bus.result_of("fine").finish_reason == types_pb2.FINISH_REASON_LENGTH


async def test_broken_engine_hands_its_work_back(bus: Bus) -> None:
    broken = ScriptedEngine(slots=4)
    broken.broken = True
    ids = [f"hb-{i}" for i in range(4)]
    async with running(bus, broken, engine_failure_limit=2) as run:
        for request_id in ids:
            await bus.request(request_id)
        await asyncio.wait_for(run.task, timeout=30)
        assert run.worker.broken is not None
        assert "2 generations in a row" in run.worker.broken
        assert not run.worker.ready
    await bus._drain(0.5)
    assert bus.results() == []
    committed = await bus.committed()
    # Nothing past the handed-back requests, and their attempts not counted against them.
    for offset, metadata in committed.values():
        assert offset <= 0  # each request was its partition's first message
        assert decode_attempts(metadata) == {}

    healthy = ScriptedEngine(slots=4)
    async with running(bus, healthy):
        await bus.wait(bus.answered(*ids), within=30, what="the healthy worker's answers")
        await all_committed(bus)
    assert all(bus.result_of(i).finish_reason == types_pb2.FINISH_REASON_LENGTH for i in ids)
    assert bus.dead_letters() == []


# --- crashes, rebalances, shutdown -------------------------------------------------------


async def test_request_that_killed_workers_is_set_aside(bus: Bus) -> None:
    partition, poison_at = await bus.request("poison", key="k")
    await bus.request("next", key="k")
    tp = TopicPartition(bus.topics.requests, partition)
    # What three workers that died running it left in the group's offsets.
    await bus.commit(tp, poison_at, f"attempts.v1 {poison_at} 0=3")

    engine = ScriptedEngine(slots=2)
    async with running(bus, engine, max_attempts=3):
        await bus.wait(bus.answered("poison", "next"), within=30, what="results")
        await bus.wait(lambda: len(bus.dead_letters()) == 1, within=10, what="dead letter")
        await all_committed(bus)

    assert engine.calls == ["next"]
    letter = bus.dead_letters()[0]
    assert letter.offset == poison_at
    assert "tried 3 times without an answer" in letter.reason
    poison = bus.result_of("poison")
    assert poison.finish_reason == types_pb2.FINISH_REASON_ERROR
    assert poison.error == letter.reason


async def test_suspect_request_runs_alone(bus: Bus) -> None:
    partition, suspect_at = await bus.request("suspect", key="k", max_tokens=10)
    tp = TopicPartition(bus.topics.requests, partition)
    await bus.commit(tp, suspect_at, f"attempts.v1 {suspect_at} 0=2")
    others = [f"other-{i}" for i in range(4)]
    for request_id in others:
        await bus.request(request_id, key="k", max_tokens=10)

    engine = ScriptedEngine(slots=4, tokens_per_s=50)
    async with running(bus, engine, max_attempts=3) as run:
        await bus.wait(lambda: run.worker.in_flight >= 1, within=20, what="start")
        peak_while_alone = 0
        while not bus.answered("suspect")():
            peak_while_alone = max(peak_while_alone, engine.active)
            await bus._drain(0.02)
        await bus.wait(bus.answered(*others), within=30, what="the others")
        await all_committed(bus)

    assert engine.calls[0] == "suspect"
    assert peak_while_alone == 1
    assert engine.peak == 4
    assert bus.result_of("suspect").finish_reason == types_pb2.FINISH_REASON_LENGTH


async def test_rebalance_to_a_second_worker_loses_nothing(bus: Bus) -> None:
    ids = [f"rb-{i}" for i in range(12)]
    a_engine = ScriptedEngine(slots=4, tokens_per_s=20)
    async with running(bus, a_engine) as a:
        for request_id in ids:
            await bus.request(request_id, max_tokens=60)  # three seconds each
        await bus.wait(lambda: a.worker.in_flight == 4, within=20, what="A to fill up")
        b_engine = ScriptedEngine(slots=4, tokens_per_s=20)
        async with running(bus, b_engine) as b:
            await bus.wait(bus.answered(*ids), within=90, what="all results")
            await all_committed(bus)
            a_id, b_id = a.worker._settings.worker_id, b.worker._settings.worker_id

    by_worker: dict[str, list[str]] = {}
    for result in bus.results():
        by_worker.setdefault(result.worker_id, []).append(result.request_id)
        assert result.text == " tok" * 60
    assert set(by_worker) == {a_id, b_id}, "both workers got work"
    # What A had started on partitions it lost was redone by B.
    abandoned = set(a_engine.calls) - set(by_worker[a_id])
    assert abandoned <= set(by_worker[b_id])
    assert a_engine.active == 0
    for answered in by_worker.values():
        assert len(answered) == len(set(answered)), "a worker answered a request twice"
    assert {r.request_id for r in bus.results()} == set(ids)


async def test_close_finishes_in_flight_work_within_the_grace(bus: Bus) -> None:
    ids = [f"g-{i}" for i in range(3)]
    engine = ScriptedEngine(slots=4, tokens_per_s=20)
    async with running(bus, engine, grace_s=10) as run:
        for request_id in ids:
            await bus.request(request_id, max_tokens=20)
        await bus.wait(lambda: run.worker.in_flight == 3, within=20, what="in flight")
    # Leaving the block closed the worker: its answers are out and committed.
    await bus.wait(bus.answered(*ids), within=5, what="results")
    await all_committed(bus)


async def test_close_hands_back_what_the_grace_does_not_cover(bus: Bus) -> None:
    ids = [f"h-{i}" for i in range(3)]
    engine = ScriptedEngine(slots=4, tokens_per_s=5)
    started = time.monotonic()
    async with running(bus, engine, grace_s=0.5) as run:
        for request_id in ids:
            await bus.request(request_id, max_tokens=500)  # 100 s each
        await bus.wait(lambda: run.worker.in_flight == 3, within=20, what="in flight")
        started = time.monotonic()
    assert time.monotonic() - started < 5
    await bus._drain(0.5)
    assert bus.results() == []
    for offset, metadata in (await bus.committed()).values():
        assert offset <= 0
        assert decode_attempts(metadata) == {}, "a hand-back counted as a failed attempt"

    fast = ScriptedEngine(slots=4)
    async with running(bus, fast):
        await bus.wait(bus.answered(*ids), within=30, what="the next worker's answers")
        await all_committed(bus)
    assert sorted(fast.calls) == sorted(ids)
