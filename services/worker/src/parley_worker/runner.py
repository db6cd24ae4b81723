"""The worker's Kafka loop: many requests at once, results before commits, cancels honoured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.kafka import (
    SCHEMA_VERSION,
    EnvelopeError,
    Topics,
    decode,
    publish_dead_letter,
)
from parley_common.timeutil import now_ms
from parley_worker.config import Settings
from parley_worker.engines.base import (
    ChatMessage,
    Engine,
    GenerationDone,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from parley_worker.offsets import OffsetTracker

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_ROLES = {
    types_pb2.ROLE_SYSTEM: "system",
    types_pb2.ROLE_USER: "user",
    types_pb2.ROLE_ASSISTANT: "assistant",
}
_FINISH = {
    "stop": types_pb2.FINISH_REASON_STOP,
    "length": types_pb2.FINISH_REASON_LENGTH,
    "cancelled": types_pb2.FINISH_REASON_CANCELLED,
}


@dataclass
class _Job:
    request: envelopes_pb2.CompletionRequest
    record: ConsumerRecord[bytes, bytes]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.commit()
        self._worker.offsets.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        pass


class Worker:
    """Runs one engine for a consumer group on the requests topic.

    Backpressure: when all `engine.max_concurrency` slots are busy, the assigned partitions are
    paused (the consumer keeps heartbeating, so no rebalance) and resumed as slots free.
    """

    def __init__(self, settings: Settings, engine: Engine, topics: Topics = Topics()) -> None:
        self._settings = settings
        self._engine = engine
        self._topics = topics
        self.offsets = OffsetTracker()
        self._slots = asyncio.Semaphore(engine.max_concurrency)
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_addr,
            client_id=f"parley-worker-{settings.worker_id}",
            acks="all",
            linger_ms=2,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_addr,
            group_id=settings.worker_group,
            client_id=f"parley-worker-{settings.worker_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Generation takes long; fetching is paused meanwhile, so polls stay frequent.
            max_poll_interval_ms=600_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )
        # Cancels go to every worker; only the one running the request acts on them.
        self._control = AIOKafkaConsumer(
            topics.control,
            bootstrap_servers=settings.kafka_addr,
            group_id=None,
            auto_offset_reset="latest",
        )

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        await self._producer.start()
        await self._control.start()
        self._consumer.subscribe([self._topics.requests], listener=_Rebalance(self))
        await self._consumer.start()

    async def run(self) -> None:
        control = asyncio.create_task(self._read_control(), name="control")
        try:
            await self._fetch_loop()
        finally:
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await control

    def stop_fetching(self) -> None:
        self._stopping.set()

    async def close(self, grace_s: float) -> None:
        """Finish in-flight work within grace_s; what is left is handed back uncommitted."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.commit()
        await self._consumer.stop()
        await self._control.stop()
        await self._producer.stop()

    async def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._settings.max_concurrency - len(self._tasks)
            assigned = self._consumer.assignment()
            if free <= 0:
                self._consumer.pause(*assigned)
            else:
                self._consumer.resume(*assigned)
            batches = await self._consumer.getmany(timeout_ms=50, max_records=max(free, 1))
            for records in batches.values():
                for record in records:
                    self._start(record)
            await self.commit()
            if free <= 0 and self._tasks:
                await asyncio.wait(self._tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)

    def _start(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        self.offsets.started(tp, record.offset)
        task = asyncio.create_task(self._handle(record), name=f"request@{record.offset}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def commit(self) -> None:
        offsets = self.offsets.committable()
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self.offsets.committed(offsets)
        except KafkaError as exc:
            log.warning(
                "offset commit failed; the requests will be redone", extra={"error": repr(exc)}
            )

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        tp = TopicPartition(record.topic, record.partition)
        try:
            try:
                request = decode(envelopes_pb2.CompletionRequest, record.value)
            except EnvelopeError as exc:
                await publish_dead_letter(self._producer, self._topics, record, str(exc))
                return
            await self._serve(_Job(request, record))
        except asyncio.CancelledError:
            # Shutdown past the grace period: leave the offset uncommitted for another worker.
            raise
        except Exception as exc:
            log.exception("request failed", extra={"offset": record.offset})
            await publish_dead_letter(
                self._producer, self._topics, record, f"worker error: {exc!r}"
            )
        self.offsets.finished(tp, record.offset)

    async def _serve(self, job: _Job) -> None:
        request = job.request
        picked_ms = now_ms()
        if request.deadline_unix_ms and picked_ms > request.deadline_unix_ms:
            log.info("expired request dropped", extra={"request_id": request.request_id})
            await self._finish(job, "", types_pb2.FINISH_REASON_EXPIRED, 0, 0, picked_ms, None)
            return
        self._jobs[request.request_id] = job
        try:
            async with self._slots:
                await self._generate(job, picked_ms)
        finally:
            self._jobs.pop(request.request_id, None)

    async def _generate(self, job: _Job, picked_ms: int) -> None:
        request = job.request
        gen_request = GenerationRequest(
            request_id=request.request_id,
            messages=tuple(
                ChatMessage(_ROLES.get(m.role, "user"), m.content) for m in request.messages
            ),
            sampling=_sampling(request.sampling),
        )
        started = time.perf_counter()
        first_token_at: float | None = None
        seq = 0
        pending: list[str] = []
        pending_chars = 0
        last_flush = started
        text_parts: list[str] = []
        done: GenerationDone | None = None
        async for event in _until(job.cancelled, self._engine.generate(gen_request)):
            if isinstance(event, TextDelta):
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                text_parts.append(event.text)
                pending.append(event.text)
                pending_chars += len(event.text)
                now = time.perf_counter()
                if (
                    pending_chars >= self._settings.chunk_max_chars
                    or (now - last_flush) * 1000 >= self._settings.chunk_interval_ms
                ):
                    await self._send_chunk(request, seq, "".join(pending))
                    seq += 1
                    pending, pending_chars, last_flush = [], 0, now
            else:
                done = event
        if pending:
            await self._send_chunk(request, seq, "".join(pending))
            seq += 1
        if done is None:  # cancelled: keep what was generated
            text = "".join(text_parts)
            finish = types_pb2.FINISH_REASON_CANCELLED
            prompt_tokens = self._engine.count_tokens(gen_request.messages)
            completion_tokens = len(text_parts)
        else:
            text = done.text
            finish = _FINISH.get(done.finish_reason, types_pb2.FINISH_REASON_STOP)
            prompt_tokens, completion_tokens = done.prompt_tokens, done.completion_tokens
        ended = time.perf_counter()
        timings = envelopes_pb2.Timings(
            queue_wait_ms=max(0, picked_ms - request.enqueued_unix_ms)
            if request.enqueued_unix_ms
            else 0,
            time_to_first_token_ms=int(((first_token_at or ended) - started) * 1000),
            time_per_output_token_ms=(
                (ended - first_token_at) * 1000 / max(completion_tokens - 1, 1)
                if first_token_at
                else 0.0
            ),
            generation_ms=int((ended - started) * 1000),
        )
        await self._finish(
            job, text, finish, prompt_tokens, completion_tokens, picked_ms, timings, seq
        )

    async def _send_chunk(
        self, request: envelopes_pb2.CompletionRequest, seq: int, text: str
    ) -> None:
        if not request.reply_topic:
            return
        chunk = envelopes_pb2.CompletionChunk(
            schema_version=SCHEMA_VERSION, request_id=request.request_id, seq=seq, text=text
        )
        # Not awaited one by one: the producer batches chunks; the final result is awaited.
        await self._producer.send(
            request.reply_topic, chunk.SerializeToString(), key=request.request_id.encode()
        )

    async def _finish(
        self,
        job: _Job,
        text: str,
        finish: types_pb2.FinishReason.ValueType,
        prompt_tokens: int,
        completion_tokens: int,
        picked_ms: int,
        timings: envelopes_pb2.Timings | None,
        seq: int = 0,
    ) -> None:
        request = job.request
        usage = types_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        result = envelopes_pb2.CompletionResult(
            schema_version=SCHEMA_VERSION,
            request_id=request.request_id,
            chat_id=request.chat_id,
            user_id=request.user_id,
            model=request.model,
            kind=request.kind,
            text=text,
            finish_reason=finish,
            usage=usage,
            worker_id=self._settings.worker_id,
            bot_id=request.bot_id,
            user_message_ordinal=request.user_message_ordinal,
            summary_through_ordinal=request.summary_through_ordinal,
            completed_unix_ms=now_ms(),
        )
        if timings is not None:
            result.timings.CopyFrom(timings)
        if request.HasField("cache_key") and finish in (
            types_pb2.FINISH_REASON_STOP,
            types_pb2.FINISH_REASON_LENGTH,
        ):
            result.cache_key.CopyFrom(request.cache_key)
        sends = [
            await self._producer.send(
                self._topics.results, result.SerializeToString(), key=request.chat_id.encode()
            )
        ]
        if request.reply_topic:
            final = envelopes_pb2.CompletionChunk(
                schema_version=SCHEMA_VERSION,
                request_id=request.request_id,
                seq=seq,
                done=True,
                finish_reason=finish,
                usage=usage,
            )
            sends.append(
                await self._producer.send(
                    request.reply_topic, final.SerializeToString(), key=request.request_id.encode()
                )
            )
        # The offset is committed only once the result is durably on the results topic.
        await asyncio.gather(*sends)

    async def _read_control(self) -> None:
        async for record in self._control:
            try:
                cancel = decode(envelopes_pb2.CancelRequest, record.value)
            except EnvelopeError:
                continue
            job = self._jobs.get(cancel.request_id)
            if job is not None:
                log.info(
                    "cancelling", extra={"request_id": cancel.request_id, "reason": cancel.reason}
                )
                job.cancelled.set()


def _sampling(pb: types_pb2.SamplingParams) -> SamplingParams:
    defaults = SamplingParams()
    return SamplingParams(
        max_tokens=pb.max_tokens or defaults.max_tokens,
        temperature=pb.temperature if pb.HasField("temperature") else defaults.temperature,
        top_p=pb.top_p if pb.HasField("top_p") else defaults.top_p,
        stop=tuple(pb.stop),
        seed=pb.seed if pb.HasField("seed") else None,
    )


async def _until(
    cancelled: asyncio.Event, events: AsyncIterator[GenerationEvent]
) -> AsyncIterator[GenerationEvent]:
    """The engine's events until `cancelled` is set; closing the engine's stream stops it."""
    iterator = aiter(events)
    waiter = asyncio.create_task(cancelled.wait())
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        waiter.cancel()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
