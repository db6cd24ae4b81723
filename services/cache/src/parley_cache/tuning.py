"""Keeping the measured error under the operator's rate online: feedback raises a scope's bar.

The threshold a lookup uses comes from the verifier's calibration table for the error rate the
operator set. Offline measurements do not know one scope's traffic, so the service also counts,
per scope, the hits it served and the ones rejected: a thumbs-down on a served answer, a
regenerate of one (both arrive as ``Evict`` with the served entry's id), or a sampled hit whose
answer, generated again, disagrees with the one served (``CompareSampledAnswer``). When a scope's
observed error rate, smoothed towards the rate the table promised, exceeds the operator's rate,
the scope is looked up as if the operator had asked for a proportionally smaller rate: a higher
threshold from the same table.

The counts hold across replicas and restarts (``feedback_counts``, in Qdrant): each replica
counts in memory, writes its own counts every ``CACHE_FEEDBACK_FLUSH_S``, and reads the other
replicas' at most every ``refresh_s`` per scope. Without Qdrant (it is down) a replica goes on
with the counts it has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from parley_cache.feedback_counts import FeedbackCounts, ScopeCounts
from parley_cache.store import STORE_ERRORS
from parley_cache.verifier import Calibration

__all__ = ["FeedbackTuner"]

log = logging.getLogger(__name__)

# How many served hits the prior is worth, and the rejections a scope needs before its bar moves:
# one user's thumbs-down evicts the entry (Evict), and must not also shut the scope off.
_PRIOR_HITS: Final = 20.0
_MIN_REJECTIONS: Final = 3


class FeedbackTuner:
    def __init__(
        self,
        calibration: Calibration,
        counts: FeedbackCounts | None = None,
        *,
        refresh_s: float = 5.0,
        max_scopes: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._calibration = calibration
        self._counts = counts
        self._refresh_s = refresh_s
        self._max_scopes = max_scopes
        self._clock = clock
        self._day = counts.today() if counts is not None else 0
        self._own: dict[str, ScopeCounts] = {}  # this replica's, of self._day
        self._dirty: set[str] = set()  # scopes of _own not written yet
        # The other replicas' counts (and this one's of earlier days), as last read: when, what.
        self._others: OrderedDict[str, tuple[float, ScopeCounts]] = OrderedDict()

    async def threshold(self, scope: str, max_error: float) -> float:
        """The verifier threshold for a lookup in ``scope`` at the operator's ``max_error``."""
        counts = await self.counts(scope)
        if counts.rejected < _MIN_REJECTIONS:
            return self._calibration.threshold_for(max_error)
        observed = (counts.rejected + _PRIOR_HITS * max_error) / (counts.hits + _PRIOR_HITS)
        if observed <= max_error:
            return self._calibration.threshold_for(max_error)
        return self._calibration.threshold_for(max_error * max_error / observed)

    async def counts(self, scope: str) -> ScopeCounts:
        """The scope's hits and rejections in the window, every replica's."""
        own = self._own.get(scope, ScopeCounts())
        if self._counts is None:
            return own
        now = self._clock()
        known = self._others.get(scope)
        if known is not None and now - known[0] < self._refresh_s:
            self._others.move_to_end(scope)
            return own + known[1]
        try:
            others = await self._counts.totals(scope, except_own_day=self._day)
        except STORE_ERRORS as exc:
            log.warning("feedback counts unavailable", extra={"error": repr(exc)})
            others = known[1] if known is not None else ScopeCounts()
        self._others[scope] = (now, others)
        self._others.move_to_end(scope)
        while len(self._others) > self._max_scopes:
            self._others.popitem(last=False)
        return own + others

    def served(self, scope: str) -> None:
        self._add(scope, ScopeCounts(hits=1))

    def rejected(self, scope: str) -> None:
        """A user (or a sampled check) rejected an answer served from ``scope``."""
        if scope:
            self._add(scope, ScopeCounts(rejected=1))

    def _add(self, scope: str, counts: ScopeCounts) -> None:
        self._own[scope] = self._own.get(scope, ScopeCounts()) + counts
        self._dirty.add(scope)

    async def flush(self) -> None:
        """Write this replica's changed counts; at a new day (UTC), start counting it afresh."""
        if self._counts is None:
            return
        changed = {scope: self._own[scope] for scope in self._dirty}
        self._dirty.clear()
        try:
            await self._counts.write(self._day, changed)
        except STORE_ERRORS:
            self._dirty |= changed.keys()  # the next flush writes them
            raise
        today = self._counts.today()
        if today != self._day:
            # Written: the other replicas' reads, and this one's from now on, include them.
            self._day, self._own = today, {}
            self._others.clear()

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` seconds (and purge what left the window) until cancelled;
        the last flush is made on the way out."""
        if self._counts is None:
            return
        rounds = 0
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.flush()
                    if rounds % 1000 == 0:
                        await self._counts.purge()
                except STORE_ERRORS as exc:
                    log.warning("feedback counts not written", extra={"error": repr(exc)})
                rounds += 1
        finally:
            try:
                await self.flush()
            except STORE_ERRORS as exc:
                log.warning("feedback counts lost at shutdown", extra={"error": repr(exc)})
