"""Keeps the cache's storage bounded: expired entries purged, the oldest trimmed past a maximum.

Lookups never serve an expired entry (their filter checks ``expires_at``); this task only frees
the space. Several replicas may run it at once: each step is an idempotent delete.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from parley_cache.store import STORE_ERRORS, CacheStore

__all__ = ["Maintenance", "MaintenanceReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    expired: int  # entries deleted because their TTL had passed
    trimmed: int  # oldest entries deleted to stay within the maximum


class Maintenance:
    """``await Maintenance(store, max_entries=...).run_once()``, or ``run(interval_s)`` forever."""

    def __init__(self, store: CacheStore, *, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._store = store
        self._max_entries = max_entries

    async def run_once(self) -> MaintenanceReport:
        # Expired entries go first, so that trimming does not delete live ones in their place.
        expired = await self._store.purge_expired()
        trimmed = await self._store.trim(self._max_entries)
        if expired or trimmed:
            log.info("cache maintenance", extra={"expired": expired, "trimmed": trimmed})
        return MaintenanceReport(expired=expired, trimmed=trimmed)

    async def run(self, interval_s: float) -> None:
        """Run every ``interval_s`` seconds until cancelled; a failed round is retried next time."""
        while True:
            try:
                await self.run_once()
            except STORE_ERRORS as exc:
                log.warning(
                    "cache maintenance skipped: qdrant unavailable", extra={"error": repr(exc)}
                )
            except Exception:
                # A bug here must not stop the cache from being bounded for good: retry next round.
                log.exception("cache maintenance failed")
            await asyncio.sleep(interval_s)
