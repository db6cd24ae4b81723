"""The worker's Kafka loop: many requests at once, results before commits, cancels honoured.

A request's life: fetched from `parley.completions.requests` → started (its attempt counted in
the offset metadata, see `offsets.py`) → generated, its text streamed in chunks to the reply
topic it names → its `CompletionResult` published on the results topic and its final chunk sent
→ only then may its offset be committed. A worker that dies on the way leaves the offset
uncommitted: the partition's next owner redoes the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.kafka import (
    EnvelopeError,
    Topics,
    consume_span,
    decode,
    make_producer,
    publish_dead_letter,
)
from parley_common.telemetry import add_event, annotate, record_span, traced
from parley_common.timeutil import now_ms
from parley_worker.config import Settings
from parley_worker.engines.base import (
    Engine,
    GenerationDone,
    GenerationEvent,
    GenerationRequest,
    PromptTooLongError,
    TextDelta,
)
from parley_worker.envelopes import (
    Outcome,
    done_chunk,
    finish_reason,
    generation_request,
    result_envelope,
    text_chunk,
)
from parley_worker.lag import LagReporter
from parley_worker.metrics import WorkerMetrics
from parley_worker.offsets import OffsetTracker
from parley_worker.streaming import ChunkBatcher

__all__ = ["Worker"]

log = logging.getLogger(__name__)

# A request that was in flight when this many workers died runs alone, so that a request that
# kills its worker is told apart from the innocent ones that happened to run beside it.
_RUN_ALONE_AFTER: Final = 2
_CANCELLED_IDS_KEPT: Final = 10_000
_POLL_S: Final = 0.1
_ENGINE_RETRY_DELAY_S: Final = 0.5
_HANDED_BACK: Final = object()

_OUTCOME_NAMES = {
    types_pb2.FINISH_REASON_STOP: "stop",
    types_pb2.FINISH_REASON_LENGTH: "length",
    types_pb2.FINISH_REASON_CANCELLED: "cancelled",
    types_pb2.FINISH_REASON_ERROR: "error",
    types_pb2.FINISH_REASON_EXPIRED: "expired",
}


@dataclass(eq=False)
class _Job:
    record: ConsumerRecord[bytes, bytes]
    tp: TopicPartition
    fetched_at: float
    attempt: int = 0
    request: envelopes_pb2.CompletionRequest | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    next_seq: int = 0
    chunk_sends: list[asyncio.Future[object]] = field(default_factory=list)
    reply_lost: bool = False
    generation_s: float = 0.0

    @property
    def key(self) -> tuple[TopicPartition, int]:
        return self.tp, self.record.offset


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(set(assigned))


class Worker:
    """Runs one engine for a consumer group on the requests topic::

        worker = Worker(settings, engine)   # engine started
        await worker.start()
        await worker.run()                  # until stop_fetching() (SIGTERM)
        await worker.close(settings.shutdown_grace_s)

    At most `engine.max_concurrency` requests run at once. When all slots are busy the assigned
    partitions are paused (the consumer keeps heartbeating, so there is no rebalance) and they
    are resumed as slots free. After a rebalance, requests of partitions this worker lost are
    abandoned uncommitted (their new owner redoes them); those of partitions it kept go on.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        topics: Topics | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._topics = topics or settings.topics()
        self._metrics = metrics or WorkerMetrics(CollectorRegistry())
        self._metrics.slots.set(engine.max_concurrency)
        self.offsets = OffsetTracker()
        self._jobs: dict[tuple[TopicPartition, int], _Job] = {}
        self._suspects: deque[_Job] = deque()
        self._alone: _Job | None = None
        self._loading: set[TopicPartition] = set()
        self._cancelled_ids: OrderedDict[str, None] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consecutive_failures = 0
        self._started = False
        self._control_task: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_due = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self.broken: str | None = None
        client_id = f"parley-worker-{settings.worker_id}"
        self._producer = make_producer(
            settings.kafka_addr, client_id=client_id, kafka_metrics=self._metrics.kafka
        )
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_addr, client_id=client_id, request_timeout_ms=10_000
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_addr,
            group_id=settings.worker_group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Fetching goes on (paused or not) while generations run, so polls stay frequent.
            max_poll_interval_ms=600_000,
            # A heartbeat is how a member learns of a rebalance: frequent ones make a new
            # worker share the load (and a lost one's requests be redone) sooner.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        # Cancels go to every worker; only the one running the request acts on them.
        self._control = AIOKafkaConsumer(
            self._topics.control,
            bootstrap_servers=settings.kafka_addr,
            client_id=client_id,
            group_id=None,
            auto_offset_reset="latest",
        )
        self._lag = LagReporter(self._consumer, self._metrics.consumer_lag)

    @property
    def slots(self) -> int:
        return self._engine.max_concurrency

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    @property
    def ready(self) -> bool:
        """Taking work: the model is loaded and the consumer runs."""
        return self._started and self._engine.ready and not self._stopping.is_set()

    async def start(self) -> None:
        await self._producer.start()
        await self._admin.start()
        await self._control.start()
        self._control_task = asyncio.create_task(self._read_control(), name="control")
        self._commit_task = asyncio.create_task(self._commit_when_due(), name="commits")
        self._consumer.subscribe([self._topics.requests], listener=_Rebalance(self))
        await self._consumer.start()
        self._lag.start()
        self._started = True

    async def run(self) -> None:
        """Fetch and start requests until `stop_fetching()` (or the engine is found broken)."""
        while not self._stopping.is_set():
            self._start_suspect()
            free = self._free_slots()
            self._apply_backpressure(free)
            records = await self._poll(free)
            for tp, batch in records.items():
                for index, record in enumerate(batch):
                    if self._free_slots() <= 0 or self._isolating():
                        # A rebalance resumed a partition between pause and poll: give the
                        # rest back to the fetcher rather than run more than the slots.
                        self._consumer.seek(tp, batch[index].offset)
                        break
                    self._admit(tp, record)

    def stop_fetching(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    async def close(self, grace_s: float) -> None:
        """Finish in-flight work within grace_s; what is left is handed back uncommitted."""
        self.stop_fetching()
        with contextlib.suppress(KafkaError):
            self._consumer.pause(*self._consumer.assignment())
        deadline = time.monotonic() + grace_s
        while self._jobs and (remaining := deadline - time.monotonic()) > 0:
            await self._sleep_until_woken(min(remaining, 0.2))
            await self.commit()
        handed_back = [job.task for job in self._jobs.values() if job.task is not None]
        for task in handed_back:
            task.cancel()
        await asyncio.gather(*handed_back, return_exceptions=True)
        if handed_back:
            log.info("handed back unfinished requests", extra={"count": len(handed_back)})
        self._suspects.clear()
        for helper in (self._commit_task, self._control_task):
            if helper is not None:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
        await self.commit(hand_back=True)
        await self._lag.stop()
        await self._consumer.stop()
        await self._control.stop()
        await self._admin.close()
        await self._producer.stop()

    async def commit(self, *, hand_back: bool = False) -> bool:
        """Commit what may be committed on the partitions this worker owns now; False: failed."""
        # One at a time, so that the tracker's idea of what is committed never goes back.
        async with self._commit_lock:
            owned = self._consumer.assignment() - self._loading
            commits = self.offsets.commits(owned, hand_back=hand_back)
            if not commits:
                return True
            try:
                await self._consumer.commit(commits)
            except KafkaError as exc:
                # Lost to a rebalance, most likely: the new owner redoes what was not committed.
                self._metrics.commit_failures.inc()
                self._metrics.kafka.error("commit")
                log.warning("offset commit failed", extra={"error": repr(exc)})
                return False
            self.offsets.committed(commits)
            return True

    async def _commit_when_due(self) -> None:
        """Commits off the fetch loop: a commit's round trip must not delay the next fetch."""
        while True:
            await self._commit_due.wait()
            self._commit_due.clear()
            if not await self.commit():
                await asyncio.sleep(0.5)
                self._commit_due.set()

    # --- fetching -------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.slots - len(self._jobs)

    def _isolating(self) -> bool:
        return bool(self._suspects) or self._alone is not None

    def _apply_backpressure(self, free: int) -> None:
        assigned = self._consumer.assignment()
        hold = free <= 0 or self._isolating()
        to_pause = assigned if hold else self._loading & assigned
        paused = self._consumer.paused()
        if to_pause - paused:
            self._consumer.pause(*(to_pause - paused))
        if (paused & assigned) - to_pause:
            self._consumer.resume(*((paused & assigned) - to_pause))

    async def _poll(self, free: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        records: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
        if free > 0 and not self._isolating():
            records = await self._consumer.getmany(timeout_ms=int(_POLL_S * 1000), max_records=free)
            return records
        # Full: wait for a slot, still polling now and then so that the group sees us alive.
        await self._sleep_until_woken(_POLL_S)
        records = await self._consumer.getmany(timeout_ms=0)
        return records

    async def _sleep_until_woken(self, seconds: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    def _admit(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        if self.offsets.handled(tp, record.offset):
            return  # a rebalance gave the partition back: this request already runs here
        self.offsets.fetched(tp, record.offset)
        job = _Job(record, tp, fetched_at=time.perf_counter())
        prior = self.offsets.prior_attempts(tp, record.offset)
        if _RUN_ALONE_AFTER <= prior < self._settings.max_attempts:
            log.warning(
                "request was in flight when workers stopped; running it alone",
                extra={"partition": tp.partition, "offset": record.offset, "attempts": prior},
            )
            self._suspects.append(job)
            return
        self._launch(job)

    def _start_suspect(self) -> None:
        if self._suspects and not self._jobs:
            self._alone = self._suspects.popleft()
            self._launch(self._alone)

    def _launch(self, job: _Job) -> None:
        job.attempt = self.offsets.started(job.tp, job.record.offset)
        self._commit_due.set()  # the attempt is on record before a crash can hide it
        log.debug(
            "request started",
            extra={
                "partition": job.tp.partition,
                "offset": job.record.offset,
                "attempt": job.attempt,
            },
        )
        job.task = asyncio.create_task(
            self._traced_process(job), name=f"request@{job.record.offset}"
        )
        self._jobs[job.key] = job
        self._metrics.in_flight.set(len(self._jobs))
        job.task.add_done_callback(lambda _: self._forget_job(job))

    def _forget_job(self, job: _Job) -> None:
        if self._jobs.get(job.key) is job:
            del self._jobs[job.key]
        if self._alone is job:
            self._alone = None
        self._metrics.in_flight.set(len(self._jobs))
        self._wakeup.set()

    # --- rebalances -----------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Whether this worker gets the partitions back is known only on assignment, so for now
        # the commit treats the running requests as handed back.
        await self.commit(hand_back=True)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        lost = self.offsets.tracked() - assigned
        abandoned = [job for job in self._jobs.values() if job.tp in lost]
        for job in abandoned:
            if job.task is not None:
                job.task.cancel()
        self._suspects = deque(job for job in self._suspects if job.tp not in lost)
        self.offsets.forget(lost)
        if abandoned:
            log.info(
                "partitions lost to a rebalance; their requests are left to the new owner",
                extra={"abandoned": len(abandoned)},
            )
        for tp in assigned & self.offsets.tracked():
            # Kept: its position went back to the last commit; what follows it runs here already.
            if (position := self.offsets.resume_at(tp)) is not None:
                self._consumer.seek(tp, position)
        new = assigned - self.offsets.tracked()
        if new:
            self._loading |= new
            # Paused until their attempt counts are known: a record fetched before would look
            # like a first attempt.
            self._consumer.pause(*new)
            try:
                committed = await self._admin.list_consumer_group_offsets(
                    self._settings.worker_group, partitions=list(new)
                )
            except KafkaError as exc:
                log.warning("could not read attempt counts", extra={"error": repr(exc)})
                committed = {}
            for tp in new:
                entry = committed.get(tp)
                self.offsets.load(
                    tp, entry.offset if entry else -1, entry.metadata if entry else ""
                )
            self._loading -= new
        self._commit_due.set()  # restores the attempt counts the revocation commit left out
        self._wakeup.set()

    # --- one request ----------------------------------------------------------------------

    async def _traced_process(self, job: _Job) -> None:
        # A child of the gateway's span that enqueued the request (its Kafka headers).
        with consume_span(job.record, group=self._settings.worker_group):
            await self._process(job)

    async def _process(self, job: _Job) -> None:
        try:
            handed_back = await self._serve(job) is _HANDED_BACK
        except asyncio.CancelledError:
            raise  # shutdown past its grace or a lost partition: left uncommitted
        except Exception as exc:
            # A bug here must not leave the partition blocked behind this request.
            log.exception("request failed in the worker", extra={"offset": job.record.offset})
            reason = f"the worker failed on this request: {exc!r}"
            await self._dead_letter(job, reason)
            if job.request is not None:
                try:
                    await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=reason))
                except Exception:
                    log.exception("could not answer a failed request")
            handed_back = False
        if not handed_back:
            self.offsets.finished(job.tp, job.record.offset)
            self._commit_due.set()

    async def _serve(self, job: _Job) -> object:
        try:
            request = decode(envelopes_pb2.CompletionRequest, job.record.value)
        except EnvelopeError as exc:
            await self._dead_letter(job, str(exc))
            return None
        job.request = request
        picked_ms = now_ms()
        annotate(
            {
                "parley.request_id": request.request_id,
                "parley.chat_id": request.chat_id,
                "gen_ai.request.model": request.model,
                "parley.attempt": job.attempt,
            }
        )
        if request.enqueued_unix_ms:
            self._metrics.queue_wait.observe(max(0, picked_ms - request.enqueued_unix_ms) / 1000)
            record_span(
                "queue wait",
                start_ns=request.enqueued_unix_ms * 1_000_000,
                end_ns=picked_ms * 1_000_000,
            )
        if job.attempt > self._settings.max_attempts:
            reason = (
                f"tried {job.attempt - 1} times without an answer: each time the worker "
                "running it stopped or its engine failed"
            )
            await self._dead_letter(job, reason)
            await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=reason))
            return None
        if request.request_id in self._cancelled_ids:
            await self._answer(job, Outcome(types_pb2.FINISH_REASON_CANCELLED))
            return None
        if request.deadline_unix_ms and picked_ms > request.deadline_unix_ms:
            log.info("expired request dropped", extra={"request_id": request.request_id})
            await self._answer(job, Outcome(types_pb2.FINISH_REASON_EXPIRED))
            return None
        try:
            gen_request = generation_request(request)
        except ValueError as exc:
            await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=str(exc)))
            return None
        while True:
            try:
                outcome = await self._generate(job, gen_request, picked_ms)
            except (PromptTooLongError, ValueError) as exc:
                # The request's fault, with a message the user can act on.
                await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=str(exc)))
                return None
            except Exception as exc:
                retry = await self._engine_failed(job, exc)
                if retry is _HANDED_BACK:
                    return _HANDED_BACK
                if retry:
                    continue
                return None
            self._consecutive_failures = 0
            await self._answer(job, outcome)
            return None

    async def _engine_failed(self, job: _Job, exc: Exception) -> object:
        """Retry (True), answer with an error (False) or hand everything back (_HANDED_BACK)."""
        self._metrics.engine_failures.inc()
        self._consecutive_failures += 1
        log.warning(
            "the engine failed a generation",
            extra={"request_id": job.request.request_id if job.request else "", "error": repr(exc)},
            exc_info=exc,
        )
        if self._consecutive_failures >= self._settings.engine_failure_limit:
            self._break(f"the engine failed {self._consecutive_failures} generations in a row")
            return _HANDED_BACK
        if job.attempt >= self._settings.max_attempts:
            reason = f"the engine failed on it {job.attempt} times; last error: {exc!r}"
            await self._dead_letter(job, reason)
            await self._answer(job, Outcome(types_pb2.FINISH_REASON_ERROR, error=reason))
            return False
        if job.next_seq:
            # Text already reached the reader; a second try would not continue it.
            await self._answer(
                job, Outcome(types_pb2.FINISH_REASON_ERROR, error=f"generation failed: {exc}")
            )
            return False
        await asyncio.sleep(_ENGINE_RETRY_DELAY_S * job.attempt)
        job.attempt = self.offsets.started(job.tp, job.record.offset)
        self._commit_due.set()
        return True

    def _break(self, reason: str) -> None:
        """The engine looks broken: stop taking work and hand everything back (to be restarted)."""
        if self.broken is not None:
            return
        self.broken = reason
        log.error("stopping: %s", reason)
        current = asyncio.current_task()
        for job in self._jobs.values():
            if job.task is not None and job.task is not current:
                job.task.cancel()
        self.stop_fetching()

    @traced("generate")
    async def _generate(self, job: _Job, gen_request: GenerationRequest, picked_ms: int) -> Outcome:
        assert job.request is not None
        request = job.request
        batcher = ChunkBatcher(
            interval_s=self._settings.chunk_interval_ms / 1000,
            max_chars=self._settings.chunk_max_chars,
        )
        parts: list[str] = []
        first_token_at: float | None = None
        done: GenerationDone | None = None
        deltas = 0

        async def stream() -> None:
            nonlocal first_token_at, done, deltas
            events: AsyncGenerator[GenerationEvent, None] = self._engine.generate(gen_request)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                            add_event("first token")
                        deltas += 1
                        parts.append(event.text)
                        if chunk := batcher.add(event.text):
                            await self._send_chunk(job, *chunk)
                    else:
                        done = event

        started = time.perf_counter()
        generating = asyncio.create_task(stream(), name=f"generate:{request.request_id}")
        cancel = asyncio.create_task(job.cancelled.wait())
        try:
            await asyncio.wait({generating, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
            if not generating.done():
                # Closing the engine's stream stops the generation within about a token.
                generating.cancel()
            # Also when this task is cancelled itself: the engine's error is retrieved, not lost.
            await asyncio.gather(generating, return_exceptions=True)
        if not generating.cancelled():
            generating.result()  # the engine's exception, if it raised one
        if tail := batcher.flush():
            await self._send_chunk(job, *tail)
        ended = time.perf_counter()
        job.generation_s = ended - started

        if done is None:  # cancelled: what was generated is kept
            text = "".join(parts)
            finish = types_pb2.FINISH_REASON_CANCELLED
            prompt_tokens = self._engine.count_tokens(gen_request.messages)
            completion_tokens = deltas
        else:
            text, finish = done.text, finish_reason(done.finish_reason)
            prompt_tokens, completion_tokens = done.prompt_tokens, done.completion_tokens
        ttft_s = (first_token_at or ended) - started
        tpot_s = (ended - first_token_at) / max(completion_tokens - 1, 1) if first_token_at else 0.0
        if first_token_at is not None:
            self._metrics.time_to_first_token.observe(ttft_s)
            if completion_tokens > 1:
                self._metrics.time_per_output_token.observe(tpot_s)
        self._metrics.output_tokens.inc(completion_tokens)
        self._metrics.prompt_tokens.inc(prompt_tokens)
        annotate(
            {
                "gen_ai.usage.input_tokens": prompt_tokens,
                "gen_ai.usage.output_tokens": completion_tokens,
                "gen_ai.response.finish_reasons": [_OUTCOME_NAMES.get(finish, "error")],
                "parley.time_to_first_token_ms": round(ttft_s * 1000, 1),
            }
        )
        timings = envelopes_pb2.Timings(
            queue_wait_ms=max(0, picked_ms - request.enqueued_unix_ms)
            if request.enqueued_unix_ms
            else 0,
            time_to_first_token_ms=round(ttft_s * 1000),
            time_per_output_token_ms=tpot_s * 1000,
            generation_ms=round(job.generation_s * 1000),
        )
        return Outcome(finish, text, prompt_tokens, completion_tokens, timings=timings)

    async def _send_chunk(self, job: _Job, seq: int, text: str) -> None:
        assert job.request is not None
        job.next_seq = seq + 1
        if not job.request.reply_topic or job.reply_lost:
            return
        chunk = text_chunk(job.request.request_id, seq, text)
        try:
            # Not awaited one by one: the producer batches chunks; they are checked at the end.
            sent = await self._producer.send(
                job.request.reply_topic,
                chunk.SerializeToString(),
                key=job.request.request_id.encode(),
                span=False,  # one span per chunk would drown the turn's trace
            )
        except KafkaError as exc:
            # The gateway that asked is gone with its topic: the result still goes out.
            job.reply_lost = True
            log.warning(
                "reply topic unavailable; not streaming",
                extra={"reply_topic": job.request.reply_topic, "error": repr(exc)},
            )
            return
        job.chunk_sends.append(sent)
        self._metrics.chunks.inc()

    async def _answer(self, job: _Job, outcome: Outcome) -> None:
        """Send the final chunk and publish the result; returns once the result is durable."""
        assert job.request is not None
        request = job.request
        result = result_envelope(
            request, outcome, worker_id=self._settings.worker_id, now_ms=now_ms()
        )
        if request.reply_topic and not job.reply_lost:
            # Sent after the text chunks on the same partition, so read after them; not waited
            # for before the result, which would cost a round trip to Kafka per request.
            final = done_chunk(request.request_id, job.next_seq, outcome)
            job.chunk_sends.append(
                await self._send(request.reply_topic, final.SerializeToString(), request.request_id)
            )
        await self._deliver(self._topics.results, result.SerializeToString(), request.chat_id)
        published = time.perf_counter()
        # Best effort: a reader that misses chunks still finds the answer stored with the chat.
        sent = await asyncio.gather(*job.chunk_sends, return_exceptions=True)
        if lost := sum(isinstance(s, BaseException) for s in sent):
            log.warning(
                "streamed chunks were lost", extra={"request_id": request.request_id, "lost": lost}
            )
        self._metrics.requests.labels(_OUTCOME_NAMES.get(outcome.finish, "error")).inc()
        overhead_s = max(0.0, published - job.fetched_at - job.generation_s)
        self._metrics.overhead.observe(overhead_s)
        log.info(
            "request done",
            extra={
                "request_id": request.request_id,
                "kind": envelopes_pb2.CompletionKind.Name(request.kind),
                "finish": _OUTCOME_NAMES.get(outcome.finish, "error"),
                "completion_tokens": outcome.completion_tokens,
                "attempt": job.attempt,
                "generation_ms": round(job.generation_s * 1000, 1),
                "overhead_ms": round(overhead_s * 1000, 2),
                "error": outcome.error,
            },
        )

    async def _deliver(self, topic: str, value: bytes, key: str) -> None:
        """Send and wait; a Kafka outage delays the answer (and the commit), never drops it."""
        delay = 0.2
        while True:
            try:
                await (await self._send(topic, value, key))
                return
            except KafkaError as exc:
                log.warning("publishing failed, retrying", extra={"error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _send(self, topic: str, value: bytes, key: str) -> asyncio.Future[object]:
        try:
            sent: asyncio.Future[object] = await self._producer.send(topic, value, key=key.encode())
        except KafkaError as exc:
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return sent

    async def _dead_letter(self, job: _Job, reason: str) -> None:
        delay = 0.2
        while True:
            try:
                await publish_dead_letter(self._producer, self._topics, job.record, reason)
            except KafkaError as exc:
                log.warning("dead-lettering failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._metrics.requests.labels("dead_letter").inc()
            return

    # --- cancels --------------------------------------------------------------------------

    async def _read_control(self) -> None:
        async for record in self._control:
            try:
                cancel = decode(envelopes_pb2.CancelRequest, record.value)
            except EnvelopeError:
                continue
            self._remember_cancel(cancel.request_id)
            for job in self._jobs_of(cancel.request_id):
                log.info(
                    "cancelling", extra={"request_id": cancel.request_id, "reason": cancel.reason}
                )
                job.cancelled.set()

    def _remember_cancel(self, request_id: str) -> None:
        # A cancel may come before the request is fetched (the worker was full).
        self._cancelled_ids[request_id] = None
        self._cancelled_ids.move_to_end(request_id)
        while len(self._cancelled_ids) > _CANCELLED_IDS_KEPT:
            self._cancelled_ids.popitem(last=False)

    def _jobs_of(self, request_id: str) -> list[_Job]:
        return [
            job
            for job in self._jobs.values()
            if job.request is not None and job.request.request_id == request_id
        ]
