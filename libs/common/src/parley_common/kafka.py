"""Kafka topics, envelope encoding and the producer/consumer plumbing every service shares."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from parley.v1 import envelopes_pb2
from parley_common.backoff import Backoff
from parley_common.envelopes import SCHEMA_VERSION, EnvelopeError, dead_letter, decode
from parley_common.logs import log_fields
from parley_common.metrics import KafkaMetrics, ResultsMetrics
from parley_common.telemetry import annotate, tracer

# SCHEMA_VERSION, EnvelopeError and decode live in parley_common.envelopes; they are named here
# too for the readers that import them with the Kafka plumbing (the cache, tests, benchmarks).
__all__ = [
    "SCHEMA_VERSION",
    "EnvelopeError",
    "ResultsConsumer",
    "Topics",
    "TracedProducer",
    "consume_span",
    "context_from_headers",
    "decode",
    "ensure_topics",
    "kafka_headers",
    "make_producer",
    "publish_dead_letter",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    requests: str = "parley.completions.requests"
    results: str = "parley.completions.results"
    control: str = "parley.completions.control"
    dead_letters: str = "parley.completions.dlq"
    reply_prefix: str = "parley.replies."

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """The same topics under another prefix (tests and benchmarks share one Kafka)."""
        return cls(
            requests=f"{prefix}completions.requests",
            results=f"{prefix}completions.results",
            control=f"{prefix}completions.control",
            dead_letters=f"{prefix}completions.dlq",
            reply_prefix=f"{prefix}replies.",
        )

    def reply(self, instance_id: str) -> str:
        return f"{self.reply_prefix}{instance_id}"


def kafka_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """The W3C trace context (`traceparent`, `tracestate`) of the current span, or of
    `context`, as Kafka record headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(name, value.encode()) for name, value in carrier.items()]


def context_from_headers(record: ConsumerRecord[Any, Any]) -> Context:
    """The trace context a record's producer sent in its headers (an empty one when none)."""
    carrier = {
        name: value.decode("latin-1")
        for name, value in (record.headers or ())
        if isinstance(value, bytes)
    }
    return propagate.extract(carrier)


# Reply topics are named per gateway replica: one span name for all of them.
_REPLICA_TOPIC = re.compile(r"(replies)\.[^.]+$")


def _topic_name(topic: str) -> str:
    return _REPLICA_TOPIC.sub(r"\1.{instance}", topic)


@contextlib.contextmanager
def consume_span(record: ConsumerRecord[Any, Any], *, group: str | None) -> Iterator[trace.Span]:
    """The span of processing one record, a child of the span that produced it (`group`: the
    consumer group, None for a consumer without one)."""
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
    }
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    with tracer().start_as_current_span(
        f"process {_topic_name(record.topic)}",
        context=context_from_headers(record),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


class TracedProducer(AIOKafkaProducer):  # type: ignore[misc]
    """An AIOKafkaProducer whose sends carry the trace context in their headers, each in a
    PRODUCER span that ends when the broker acknowledges it, and whose failures are counted.

    `send(..., span=False)` still carries the context but skips the span: for the many small
    chunks of a streamed answer.
    """

    def __init__(self, *, kafka_metrics: KafkaMetrics | None = None, **config: Any) -> None:
        super().__init__(**config)
        self._kafka_metrics = kafka_metrics

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        *,
        span: bool = True,
    ) -> asyncio.Future[Any]:
        if not span:
            return await self._send(topic, value, key, partition, timestamp_ms, headers, None)
        publish = tracer().start_span(
            f"send {_topic_name(topic)}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
            },
        )
        return await self._send(topic, value, key, partition, timestamp_ms, headers, publish)

    async def _send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        timestamp_ms: int | None,
        headers: Sequence[tuple[str, bytes]] | None,
        publish: trace.Span | None,
    ) -> asyncio.Future[Any]:
        context = trace.set_span_in_context(publish) if publish is not None else None
        traced = [*(headers or ()), *kafka_headers(context)]
        try:
            future: asyncio.Future[Any] = await super().send(
                topic, value, key, partition, timestamp_ms, traced
            )
        except BaseException as exc:
            self._delivered(publish, None, exc)
            raise
        future.add_done_callback(functools.partial(self._on_delivery, publish))
        return future

    def _on_delivery(self, publish: trace.Span | None, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._delivered(publish, None, None)
        elif (exc := future.exception()) is not None:
            self._delivered(publish, None, exc)
        else:
            self._delivered(publish, future.result(), None)

    def _delivered(
        self, publish: trace.Span | None, metadata: Any, exc: BaseException | None
    ) -> None:
        if exc is not None and isinstance(exc, Exception) and self._kafka_metrics is not None:
            self._kafka_metrics.error("produce")
        if publish is None:
            return
        if exc is not None:
            publish.record_exception(exc)
            publish.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        elif metadata is not None:
            publish.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            publish.set_attribute("messaging.kafka.offset", metadata.offset)
        publish.end()


def make_producer(
    bootstrap: str, *, client_id: str, kafka_metrics: KafkaMetrics | None = None
) -> TracedProducer:
    """A producer tuned for small, latency-sensitive messages that must not be lost."""
    return TracedProducer(
        kafka_metrics=kafka_metrics,
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

    letter = dead_letter(record, reason, failed_unix_ms=now_ms())
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
    """Applies completion results, in order per key (a chat), in a consumer group of its own.

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
        metrics: ResultsMetrics | None = None,
    ) -> None:
        self._topics = topics
        self._handler = handler
        self._producer = producer
        self._max_attempts = max_attempts
        self._transient = transient
        self._group_id = group_id
        self._metrics = metrics
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
            if not batches:
                continue
            # Results of one key (a chat) are applied in order; different keys side by side, so
            # that the handler's database round trips overlap instead of adding up.
            by_key: dict[tuple[TopicPartition, bytes | None], list[ConsumerRecord[bytes, bytes]]]
            by_key = {}
            for tp, records in batches.items():
                for record in records:
                    by_key.setdefault((tp, record.key), []).append(record)
            await asyncio.gather(*(self._apply_in_order(records) for records in by_key.values()))
            await self._commit({tp: records[-1].offset + 1 for tp, records in batches.items()})

    async def _apply_in_order(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            await self._apply(record)

    async def _apply(self, record: ConsumerRecord[bytes, bytes]) -> None:
        with consume_span(record, group=self._group_id):
            started = time.perf_counter()
            outcome = await self._apply_traced(record)
            if self._metrics is not None:
                self._metrics.results.labels(outcome).inc()
                self._metrics.apply_duration.observe(time.perf_counter() - started)
                if record.timestamp > 0:
                    self._metrics.delay.observe(max(0.0, time.time() - record.timestamp / 1000))

    async def _apply_traced(self, record: ConsumerRecord[bytes, bytes]) -> str:
        try:
            result = decode(envelopes_pb2.CompletionResult, record.value)
        except EnvelopeError as exc:
            if self._metrics is not None:
                self._metrics.kafka.error("consume")
            await publish_dead_letter(self._producer, self._topics, record, str(exc))
            return "dead_letter"
        annotate({"parley.request_id": result.request_id, "parley.chat_id": result.chat_id})
        with log_fields(request_id=result.request_id):
            return await self._handle(record, result)

    async def _handle(
        self, record: ConsumerRecord[bytes, bytes], result: envelopes_pb2.CompletionResult
    ) -> str:
        outcome = "applied"
        backoff = Backoff()
        attempt = 0
        while True:
            try:
                await self._handler(result)
                return outcome
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
                    return "dead_letter"
                log.warning(
                    "result handler failed, retrying",
                    extra={"attempt": attempt, "error": repr(exc)},
                )
            outcome = "retried"
            await backoff.sleep()

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            if self._metrics is not None:
                self._metrics.kafka.error("commit")
            # A rebalance took the partition away: its new owner re-applies (idempotently).
            log.warning("offset commit failed", extra={"error": repr(exc)})
