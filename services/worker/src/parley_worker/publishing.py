"""What a request sends out: its text chunks to the reply topic it names, its final chunk and its
`CompletionResult` on the results topic, or its record to the dead-letter topic."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from parley.v1 import envelopes_pb2
from parley_common.backoff import Backoff
from parley_common.envelopes import text_chunk
from parley_common.kafka import Topics, TracedProducer, publish_dead_letter
from parley_common.timeutil import now_ms
from parley_worker.envelopes import Outcome, done_chunk, finish_name, result_envelope
from parley_worker.jobs import Job
from parley_worker.metrics import WorkerMetrics

__all__ = ["Publisher"]

log = logging.getLogger(__name__)


class Publisher:
    """Chunks are best effort (the answer is stored with the chat anyway); the result and the
    dead letter are retried until Kafka takes them, since the offset waits for them."""

    def __init__(
        self, producer: TracedProducer, topics: Topics, metrics: WorkerMetrics, *, worker_id: str
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._worker_id = worker_id

    async def send_chunk(self, job: Job, seq: int, text: str) -> None:
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
                # The first chunk's span times a hop of the time to first token; one span per
                # chunk would drown the turn's trace.
                span=seq == 0,
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

    async def answer(self, job: Job, outcome: Outcome) -> None:
        """Send the final chunk and publish the result; returns once the result is durable."""
        assert job.request is not None
        request = job.request
        result = result_envelope(request, outcome, worker_id=self._worker_id, now_ms=now_ms())
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
        self._metrics.requests.labels(finish_name(outcome.finish)).inc()
        overhead_s = max(0.0, published - job.fetched_at - job.generation_s)
        self._metrics.overhead.observe(overhead_s)
        log.info(
            "request done",
            extra={
                "request_id": request.request_id,
                "kind": envelopes_pb2.CompletionKind.Name(request.kind),
                "finish": finish_name(outcome.finish),
                "completion_tokens": outcome.completion_tokens,
                "attempt": job.attempt,
                "generation_ms": round(job.generation_s * 1000, 1),
                "overhead_ms": round(overhead_s * 1000, 2),
                "error": outcome.error,
            },
        )

    async def dead_letter(self, job: Job, reason: str) -> None:
        backoff = Backoff()
        while True:
            try:
                await publish_dead_letter(self._producer, self._topics, job.record, reason)
            except KafkaError as exc:
                log.warning("dead-lettering failed, retrying", extra={"error": repr(exc)})
                await backoff.sleep()
                continue
            self._metrics.requests.labels("dead_letter").inc()
            return

    async def _deliver(self, topic: str, value: bytes, key: str) -> None:
        """Send and wait; a Kafka outage delays the answer (and the commit), never drops it."""
        backoff = Backoff()
        while True:
            try:
                await (await self._send(topic, value, key))
                return
            except KafkaError as exc:
                log.warning("publishing failed, retrying", extra={"error": repr(exc)})
            await backoff.sleep()

    async def _send(self, topic: str, value: bytes, key: str) -> asyncio.Future[object]:
        try:
            sent: asyncio.Future[object] = await self._producer.send(topic, value, key=key.encode())
        except KafkaError as exc:
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return sent
