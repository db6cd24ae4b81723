"""A fetched request as the worker tracks it, and the cancels it has heard of."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from aiokafka import ConsumerRecord, TopicPartition

from parley.v1 import envelopes_pb2

__all__ = ["Cancels", "Job"]

_CANCELLED_IDS_KEPT: Final = 10_000


@dataclass(eq=False)
class Job:
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


class Cancels:
    """The request ids cancelled lately: a cancel may come before its request is fetched (the
    worker was full), so it is remembered (the latest `kept` of them)."""

    def __init__(self, kept: int = _CANCELLED_IDS_KEPT) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._kept = kept

    def remember(self, request_id: str) -> None:
        self._ids[request_id] = None
        self._ids.move_to_end(request_id)
        while len(self._ids) > self._kept:
            self._ids.popitem(last=False)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids
