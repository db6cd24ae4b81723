"""Per-scope counts of served hits and rejected ones, in Qdrant, where every replica sees them.

Why Qdrant: it is the cache's own store, which every replica reaches already; MongoDB is the
session service's (it receives feedback, but knows neither the scope an answer was served in,
which the cache decides, nor the hits that got no feedback).

Qdrant cannot increment a number, so no two replicas ever write the same point: each replica
process has an id of its own and writes one point per (scope, day, replica) holding its absolute
counts for that day, overwritten at each flush. A scope's counts are the sum of its points of the
last ``window_days`` days (UTC), whoever wrote them: a restarted replica writes new points, and
the old ones count on until they leave the window (``purge`` deletes them then).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from parley_cache.points import match

__all__ = ["COLLECTION", "FeedbackCounts", "ScopeCounts"]

COLLECTION: Final = "parley_cache_feedback"
_DAY_S: Final = 86_400
# Points one scope can have in the window: a replica's per day. Beyond, the sum is a floor.
_MAX_POINTS: Final = 1_000


@dataclass(frozen=True, slots=True)
class ScopeCounts:
    hits: int = 0  # answers served from the cache
    rejected: int = 0  # of those, rejected: thumbs-down, regenerated, a sampled check disagreed

    def __add__(self, other: ScopeCounts) -> ScopeCounts:
        return ScopeCounts(self.hits + other.hits, self.rejected + other.rejected)


class FeedbackCounts:
    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        collection: str = COLLECTION,
        window_days: int = 7,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_days < 1:
            raise ValueError(f"window_days must be >= 1, got {window_days}")
        self._client = client
        self.collection = collection
        self.replica_id = replica_id or uuid.uuid4().hex
        self._window_days = window_days
        self._clock = clock

    def today(self) -> int:
        return int(self._clock()) // _DAY_S

    def point_id(self, scope: str, day: int) -> str:
        return str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"parley-feedback:{scope}:{day}:{self.replica_id}")
        )

    async def ensure_collection(self) -> None:
        if not await self._client.collection_exists(self.collection):
            try:
                # Counts only: the one-float vector is a placeholder Qdrant requires.
                await self._client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
                )
            except UnexpectedResponse as exc:
                if exc.status_code != 409:  # another replica created it first
                    raise
        for field, schema in (
            ("scope_key", models.PayloadSchemaType.KEYWORD),
            ("day", models.PayloadSchemaType.INTEGER),
        ):
            await self._client.create_payload_index(self.collection, field, field_schema=schema)

    async def write(self, day: int, counts: Mapping[str, ScopeCounts]) -> None:
        """This replica's absolute counts of ``day``, per scope (replacing what it wrote)."""
        if not counts:
            return
        await self._client.upsert(
            self.collection,
            points=[
                models.PointStruct(
                    id=self.point_id(scope, day),
                    vector=[0.0],
                    payload={
                        "scope_key": scope,
                        "day": day,
                        "replica": self.replica_id,
                        "hits": c.hits,
                        "rejected": c.rejected,
                    },
                )
                for scope, c in counts.items()
            ],
            wait=True,
        )

    async def totals(self, scope: str, *, except_own_day: int | None = None) -> ScopeCounts:
        """The scope's counts in the window, every replica's; without this replica's point of
        ``except_own_day`` (the one it holds in memory, fresher than what it wrote)."""
        excluded: list[models.Condition] = (
            []
            if except_own_day is None
            else [models.HasIdCondition(has_id=[self.point_id(scope, except_own_day)])]
        )
        since = self.today() - self._window_days + 1
        found, _ = await self._client.scroll(
            self.collection,
            scroll_filter=models.Filter(
                must=[
                    match("scope_key", scope),
                    models.FieldCondition(key="day", range=models.Range(gte=since)),
                ],
                must_not=excluded,
            ),
            limit=_MAX_POINTS,
            with_payload=["hits", "rejected"],
            with_vectors=False,
        )
        total = ScopeCounts()
        for point in found:
            payload = point.payload or {}
            total += ScopeCounts(int(payload.get("hits", 0)), int(payload.get("rejected", 0)))
        return total

    async def purge(self) -> None:
        """Delete the points that left the window."""
        since = self.today() - self._window_days + 1
        await self._client.delete(
            self.collection,
            points_selector=models.FilterSelector(
                filter=models.Filter(
                    must=[models.FieldCondition(key="day", range=models.Range(lt=since))]
                )
            ),
            wait=True,
        )
