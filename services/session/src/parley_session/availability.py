"""Whether MongoDB answers, from a cheap periodic ping: what the health and readiness probes
report, and what lets calls be refused at once while it does not (instead of each one waiting
out its retries).

Usage::

    availability = MongoAvailability(client, on_change=report_health(server.health, SERVICE))
    retry = RetryPolicy(availability=availability)   # refuses at once while unreachable
    await availability.start()
    ...
    await availability.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pymongo
from grpc_health.v1 import health, health_pb2
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

__all__ = ["MongoAvailability", "report_health"]

log = logging.getLogger(__name__)

OnChange = Callable[[bool], Awaitable[None]]


def report_health(servicer: health.aio.HealthServicer, service: str) -> OnChange:
    """Report MongoDB's reachability as the grpc.health.v1 status of `service` (the readiness of
    the session's API). The server's overall status ("") is left alone: it says the process
    lives, and restarting it would not bring MongoDB back."""

    async def report(reachable: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await servicer.set(service, status.SERVING if reachable else status.NOT_SERVING)

    return report


class MongoAvailability:
    """Pings MongoDB (the primary: what writes need) every `interval_s`, at once when an
    operation `suspect()`s it, and every `down_interval_s` while it is away.

    Unreachable at the first ping that finds no server to send to (refused, or no primary: a
    failover counts) and after `slow_failures` pings in a row that time out otherwise (a slow ping
    on a busy machine is not an outage, a connection pool wedged for seconds is); reachable again
    at the first that succeeds. An outage is noticed within about `interval_s + timeout_s` (plus
    PyMongo's 0.5 s server-selection tick).
    """

    def __init__(
        self,
        client: AsyncMongoClient[dict[str, Any]],
        *,
        interval_s: float = 0.5,
        down_interval_s: float = 0.25,
        timeout_s: float = 1.0,
        slow_failures: int = 3,
        on_change: OnChange | None = None,
    ) -> None:
        self._client = client
        self._interval_s = interval_s
        self._down_interval_s = down_interval_s
        self._timeout_s = timeout_s
        self._slow_failures = slow_failures
        self._on_change = on_change
        self._reachable = True
        self._failed = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def reachable(self) -> bool:
        return self._reachable

    def suspect(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        """Check once, then keep checking in the background."""
        await self.check()
        self._task = asyncio.create_task(self._run(), name="mongodb-availability")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> bool:
        """Ping once and update the state; True when MongoDB answered."""
        try:
            with pymongo.timeout(self._timeout_s):
                await self._client.admin.command("ping")
        except PyMongoError as exc:
            self._failed += 1
            decisive = isinstance(exc, ServerSelectionTimeoutError) or not exc.timeout
            if self._reachable and (decisive or self._failed >= self._slow_failures):
                log.error("MongoDB unreachable", extra={"error": repr(exc)})
                await self._set(False)
            return False
        self._failed = 0
        if not self._reachable:
            log.info("MongoDB reachable again")
            await self._set(True)
        return True

    async def _set(self, reachable: bool) -> None:
        self._reachable = reachable
        if self._on_change is not None:
            await self._on_change(reachable)

    async def _run(self) -> None:
        while True:
            if not self._reachable:
                wait_s = self._down_interval_s
            elif self._failed:
                wait_s = 0.0  # a slow ping: confirm or clear it at once
            else:
                wait_s = self._interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._wake.clear()
            try:
                await self.check()
            except Exception:
                log.exception("MongoDB availability check failed")
