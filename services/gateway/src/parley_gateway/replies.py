"""Routes the chunks that workers send to this gateway to the requests waiting for them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from parley.v1 import envelopes_pb2
from parley_common.envelopes import EnvelopeError, decode
from parley_common.kafka import consume_span, ensure_topics

__all__ = ["ReplyRouter", "ReplyStream"]

log = logging.getLogger(__name__)

ReplyStream = asyncio.Queue[envelopes_pb2.CompletionChunk]


class ReplyRouter:
    """Each gateway instance reads its own reply topic, so it receives only its requests' chunks.

    The topic is created on start and deleted on a clean stop; its one partition keeps every
    request's chunks in order.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._streams: dict[str, ReplyStream] = {}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await ensure_topics(self._bootstrap, [self.topic], partitions=1)
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name="reply-router")

    async def stop(self, *, delete_topic: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        if delete_topic:
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            await admin.start()
            try:
                await admin.delete_topics([self.topic])
            except Exception as exc:
                log.warning("could not delete the reply topic", extra={"error": repr(exc)})
            finally:
                await admin.close()

    def open(self, request_id: str) -> ReplyStream:
        stream: ReplyStream = asyncio.Queue()
        self._streams[request_id] = stream
        return stream

    def close(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def _run(self) -> None:
        async for record in self._consumer:
            try:
                chunk = decode(envelopes_pb2.CompletionChunk, record.value)
            except EnvelopeError as exc:
                log.warning("undecodable reply chunk skipped", extra={"error": str(exc)})
                continue
            stream = self._streams.get(chunk.request_id)
            if stream is None:
                continue
            if chunk.seq == 0:
                # The first chunk's arrival is a hop of the time to first token: in the trace.
                with consume_span(record, group=None):
                    stream.put_nowait(chunk)
            else:
                stream.put_nowait(chunk)
