"""Offset commits: what the tracker allows, on the partitions this worker owns, one commit at a
time (so that the tracker's idea of what is committed never goes back), off the fetch loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from parley_worker.metrics import WorkerMetrics
from parley_worker.offsets import OffsetTracker

__all__ = ["Committer"]

log = logging.getLogger(__name__)


class Committer:
    """`due()` asks for a commit soon; `run()` makes them; `commit()` makes one now. Partitions
    whose attempt counts are still `loading()` are left out."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        offsets: OffsetTracker,
        metrics: WorkerMetrics,
        *,
        loading: Callable[[], set[TopicPartition]],
    ) -> None:
        self._consumer = consumer
        self._offsets = offsets
        self._metrics = metrics
        self._loading = loading
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()

    def due(self) -> None:
        self._due.set()

    async def commit(self, *, hand_back: bool = False) -> bool:
        """Commit what may be committed on the partitions this worker owns now; False: failed."""
        async with self._lock:
            owned = self._consumer.assignment() - self._loading()
            commits = self._offsets.commits(owned, hand_back=hand_back)
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
            self._offsets.committed(commits)
            return True

    async def run(self) -> None:
        """Commits off the fetch loop: a commit's round trip must not delay the next fetch."""
        while True:
            await self._due.wait()
            self._due.clear()
            if not await self.commit():
                await asyncio.sleep(0.5)
                self._due.set()
