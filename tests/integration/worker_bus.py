"""Kafka as a test sees a worker: requests and cancels in, results, chunks and dead letters out.

Each `Bus` has topics and a consumer group of its own (a random topic prefix), so tests share one
Kafka without seeing each other. Used by the worker's own tests and the integration tests that
run workers as processes (`TOPIC_PREFIX=bus.prefix`, `WORKER_GROUP=bus.group`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.kafka import SCHEMA_VERSION, Topics, ensure_topics
from parley_common.timeutil import now_ms
from parley_worker.config import Settings

__all__ = ["Bus", "all_committed"]

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class Bus:
    """The test's side of Kafka: sends requests and cancels, collects what the worker sends."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.prefix = f"t{secrets.token_hex(4)}."
        self.group = f"{self.prefix}workers"
        self.topics: Topics = Settings(topic_prefix=self.prefix).topics()
        self.reply = self.topics.reply("test")
        self._producer = AIOKafkaProducer(bootstrap_servers=addr, acks="all")
        self._reader = AIOKafkaConsumer(bootstrap_servers=addr, group_id=None)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=addr)
        self.seen: dict[str, list[Record]] = {}

    async def start(self) -> None:
        t = self.topics
        await ensure_topics(self.addr, [t.requests, t.results, t.control, t.dead_letters])
        await ensure_topics(self.addr, [self.reply], partitions=1)
        await self._producer.start()
        await self._admin.start()
        await self._reader.start()
        watched = {t.results: 4, t.dead_letters: 4, self.reply: 1}
        parts = [TopicPartition(topic, p) for topic, n in watched.items() for p in range(n)]
        self._reader.assign(parts)
        await self._reader.seek_to_beginning(*parts)
        for topic in watched:
            self.seen[topic] = []

    async def stop(self) -> None:
        await self._reader.stop()
        await self._producer.stop()
        await self._admin.close()

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_addr": self.addr,
            "topic_prefix": self.prefix,
            "worker_group": self.group,
            "worker_id": "w-" + secrets.token_hex(3),
            "metrics_port": 0,
            "chunk_interval_ms": 20,
        }
        values.update(overrides)
        return Settings(**values)

    async def request(
        self,
        request_id: str,
        *,
        prompt: str = "Hello there",
        max_tokens: int = 8,
        key: str | None = None,
        stream: bool = True,
        deadline_ms: int | None = None,
        kind: envelopes_pb2.CompletionKind.ValueType = envelopes_pb2.COMPLETION_KIND_CHAT,
        summary_through: int = 0,
    ) -> tuple[int, int]:
        request = envelopes_pb2.CompletionRequest(
            schema_version=SCHEMA_VERSION,
            request_id=request_id,
            chat_id=key or request_id,
            user_id="u1",
            model="fake",
            kind=kind,
            messages=[types_pb2.ChatMessage(role=types_pb2.ROLE_USER, content=prompt)],
            sampling=types_pb2.SamplingParams(max_tokens=max_tokens),
            deadline_unix_ms=deadline_ms if deadline_ms is not None else now_ms() + 120_000,
            enqueued_unix_ms=now_ms(),
            reply_topic=self.reply if stream else "",
            user_message_ordinal=2,
            summary_through_ordinal=summary_through,
        )
        return await self.raw(request.SerializeToString(), key=key or request_id)

    async def raw(self, value: bytes, *, key: str) -> tuple[int, int]:
        """Send to the requests topic; returns (partition, offset)."""
        meta = await self._producer.send_and_wait(self.topics.requests, value, key=key.encode())
        return int(meta.partition), int(meta.offset)

    async def cancel(self, request_id: str) -> None:
        cancel = envelopes_pb2.CancelRequest(
            schema_version=SCHEMA_VERSION, request_id=request_id, reason="test"
        )
        await self._producer.send_and_wait(self.topics.control, cancel.SerializeToString())

    async def _drain(self, seconds: float) -> None:
        batches = await self._reader.getmany(timeout_ms=int(seconds * 1000))
        for tp, records in batches.items():
            self.seen[tp.topic].extend(records)

    async def wait(self, check: Callable[[], bool], *, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}")
            await self._drain(0.1)

    def results(self) -> list[envelopes_pb2.CompletionResult]:
        out = []
        for record in self.seen[self.topics.results]:
            result = envelopes_pb2.CompletionResult()
            result.ParseFromString(record.value)
            out.append(result)
        return out

    def result_of(self, request_id: str) -> envelopes_pb2.CompletionResult:
        found = [r for r in self.results() if r.request_id == request_id]
        assert len(found) == 1, f"{len(found)} results for {request_id}"
        return found[0]

    def answered(self, *request_ids: str) -> Callable[[], bool]:
        return lambda: {r.request_id for r in self.results()} >= set(request_ids)

    def chunks(self, request_id: str) -> list[envelopes_pb2.CompletionChunk]:
        out = []
        for record in self.seen[self.reply]:
            chunk = envelopes_pb2.CompletionChunk()
            chunk.ParseFromString(record.value)
            if chunk.request_id == request_id:
                out.append(chunk)
        return out

    def dead_letters(self) -> list[envelopes_pb2.DeadLetter]:
        out = []
        for record in self.seen[self.topics.dead_letters]:
            letter = envelopes_pb2.DeadLetter()
            letter.ParseFromString(record.value)
            out.append(letter)
        return out

    async def committed(self) -> dict[TopicPartition, tuple[int, str]]:
        offsets = await self._admin.list_consumer_group_offsets(self.group)
        return {
            tp: (om.offset, om.metadata)
            for tp, om in offsets.items()
            if tp.topic == self.topics.requests
        }

    async def group_state(self) -> tuple[str, int]:
        """The consumer group's state ("Stable", "Empty", ...) and its number of members."""
        (response,) = await self._admin.describe_consumer_groups([self.group])
        _error, _group, state, _ptype, _protocol, members, *_ = response.groups[0]
        return str(state), len(members)

    async def end_offsets(self) -> dict[TopicPartition, int]:
        parts = [TopicPartition(self.topics.requests, p) for p in range(4)]
        ends = await self._reader.end_offsets(parts)
        return {tp: end for tp, end in ends.items() if end > 0}

    async def commit(self, tp: TopicPartition, offset: int, metadata: str) -> None:
        """Commit for the group as a worker that then died would have."""
        consumer = AIOKafkaConsumer(
            self.topics.requests,
            bootstrap_servers=self.addr,
            group_id=self.group,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + 20
            while tp not in consumer.assignment() and time.monotonic() < deadline:
                await consumer.getmany(timeout_ms=100)
            await consumer.commit({tp: (offset, metadata)})
        finally:
            await consumer.stop()


async def all_committed(bus: Bus) -> None:
    ends = await bus.end_offsets()
    deadline = time.monotonic() + 10
    while True:
        committed = await bus.committed()
        if all(committed.get(tp, (-1, ""))[0] == end for tp, end in ends.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"committed {committed}, expected the end offsets {ends}")
        await asyncio.sleep(0.1)
