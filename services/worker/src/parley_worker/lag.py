"""Measures the worker's consumer lag: how many requests wait on its partitions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from prometheus_client import Gauge

__all__ = ["LagReporter"]

log = logging.getLogger(__name__)


class LagReporter:
    """Every `interval_s`, sets `gauge` to the sum over the consumer's assigned partitions of
    end offset minus position: requests published that this worker has not fetched yet (those
    being generated are counted by the in-flight gauge instead)::

        lag = LagReporter(consumer, metrics.consumer_lag)
        lag.start()
        ...
        await lag.stop()
    """

    def __init__(self, consumer: Any, gauge: Gauge, *, interval_s: float = 5.0) -> None:
        self._consumer = consumer
        self._gauge = gauge
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="consumer-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def measure(self) -> int:
        assigned = sorted(self._consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not assigned:
            return 0
        ends = await self._consumer.end_offsets(assigned)
        lag = 0
        for tp in assigned:
            # The position of a partition just assigned is unknown until its first fetch.
            position = await asyncio.wait_for(self._consumer.position(tp), timeout=1.0)
            lag += max(0, ends[tp] - position)
        return lag

    async def _run(self) -> None:
        while True:
            try:
                self._gauge.set(await self.measure())
            except Exception as exc:
                # A rebalance in between, a broker away: measured again next time.
                log.debug("consumer lag not measured", extra={"error": repr(exc)})
            await asyncio.sleep(self._interval_s)
