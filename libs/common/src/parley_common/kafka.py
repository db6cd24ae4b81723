"""Kafka topics, envelope encoding and the producer/consumer plumbing every service shares."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from google.protobuf.message import DecodeError, Message

from parley.v1 import envelopes_pb2

__all__ = [
    "SCHEMA_VERSION",
    "EnvelopeError",
    "ResultsConsumer",
    "Topics",
    "decode",
    "ensure_topics",
    "make_producer",
    "publish_dead_letter",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Topics:
    requests: str = "parley.completions.requests"
    results: str = "parley.completions.results"
    control: str = "parley.completions.control"
    dead_letters: str = "parley.completions.dlq"
    reply_prefix: str = "parley.replies."

    def reply(self, instance_id: str) -> str:
        return f"{self.reply_prefix}{instance_id}"


class EnvelopeError(ValueError):
    """A Kafka message that is not a valid envelope of the expected type and version."""


class _Versioned(Protocol):
    schema_version: int


M = TypeVar("M", bound=Message)


def decode(message_type: type[M], value: bytes | None) -> M:
    if value is None:
        raise EnvelopeError("empty message value")
    msg = message_type()
    try:
        msg.ParseFromString(value)
    except DecodeError as exc:
        raise EnvelopeError(f"not a {message_type.__name__}: {exc}") from exc
    version = getattr(msg, "schema_version", None)
    if version != SCHEMA_VERSION:
        raise EnvelopeError(
            f"{message_type.__name__} schema_version {version} is not supported "
            f"(this build reads {SCHEMA_VERSION})"
        )
    return msg


def make_producer(bootstrap: str, *, client_id: str) -> AIOKafkaProducer:
    """A producer tuned for small, latency-sensitive messages that must not be lost."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        linger_ms=1,
        enable_idempotence=False,
        request_timeout_ms=10_000,
        retry_backoff_ms=100,
    )


async def ensure_topics(
    bootstrap: str, topics: Sequence[str], *, partitions: int = 4, replication: int = 1
) -> None:
    """Create the topics that do not exist yet (in a cluster a Helm hook Job does it first)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(t, num_partitions=partitions, replication_factor=replication)
                        for t in missing
                    ]
                )
    finally:
        await admin.close()


async def publish_dead_letter(
    producer: AIOKafkaProducer, topics: Topics, record: ConsumerRecord[bytes, bytes], reason: str
) -> None:
    from parley_common.timeutil import now_ms

    letter = envelopes_pb2.DeadLetter(
        schema_version=SCHEMA_VERSION,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        key=record.key or b"",
        value=record.value or b"",
        failed_unix_ms=now_ms(),
    )
    await producer.send_and_wait(topics.dead_letters, letter.SerializeToString(), key=record.key)
    log.warning(
        "dead-lettered a message",
        extra={
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason,
        },
    )


Handler = Callable[[envelopes_pb2.CompletionResult], Awaitable[None]]


class ResultsConsumer:
    """Applies completion results, in order per partition, in a consumer group of its own.

    Offsets are committed after the handler returns, so a crash redelivers: handlers must be
    idempotent. A result that cannot be decoded, or whose handler keeps failing, is dead-lettered
    so that it cannot block its partition. Exceptions of the `transient` types (a database that is
    down) are retried until they pass: an outage delays results, it never drops them.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        handler: Handler,
        producer: AIOKafkaProducer,
        topics: Topics = Topics(),
        max_attempts: int = 5,
        transient: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._topics = topics
        self._handler = handler
        self._producer = producer
        self._max_attempts = max_attempts
        self._transient = transient
        self._consumer = AIOKafkaConsumer(
            topics.results,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=200,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="results-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    await self._apply(record)
                await self._commit(tp, records[-1].offset + 1)

    async def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            result = decode(envelopes_pb2.CompletionResult, record.value)
        except EnvelopeError as exc:
            await publish_dead_letter(self._producer, self._topics, record, str(exc))
            return
        delay = 0.2
        attempt = 0
        while True:
            try:
                await self._handler(result)
                return
            except self._transient as exc:
                log.warning(
                    "result handler hit a transient error, retrying", extra={"error": repr(exc)}
                )
            except Exception as exc:
                attempt += 1
                if attempt >= self._max_attempts:
                    await publish_dead_letter(
                        self._producer,
                        self._topics,
                        record,
                        f"handler failed {attempt} times: {exc!r}",
                    )
                    return
                log.warning(
                    "result handler failed, retrying",
                    extra={"attempt": attempt, "error": repr(exc)},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self._consumer.commit({tp: offset})
        except KafkaError as exc:
            # A rebalance took the partition away: its new owner re-applies (idempotently).
            log.warning("offset commit failed", extra={"error": repr(exc)})
