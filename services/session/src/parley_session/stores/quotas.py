"""The rate limits' counts (`rate_windows`): one document per user and minute with the requests
admitted and the tokens spent (prompt + completion, added when a result is recorded), expiring a
few minutes after its minute. An atomic `$inc` per request keeps every gateway replica counting
against the same numbers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from parley_session.quotas import WINDOW_S, QuotaDecision, quota_decision
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, retried

__all__ = ["QuotaStore"]

_WINDOW_KEEP = timedelta(minutes=3)


def _counts(doc: Doc | None) -> tuple[int, int]:
    if doc is None:
        return 0, 0
    return int(doc.get("requests", 0)), int(doc.get("tokens", 0))


class QuotaStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._windows = db["rate_windows"]

    @retried
    async def ensure_indexes(self) -> None:
        await self._windows.create_index("expires_at", expireAfterSeconds=0)

    @staticmethod
    def _key(user_id: str, minute: int) -> str:
        return f"{user_id}:{minute}"

    def _bump(self, user_id: str, minute: int, inc: Doc) -> Awaitable[Doc | None]:
        expires = datetime.fromtimestamp((minute + 1) * WINDOW_S, UTC) + _WINDOW_KEEP
        return self._windows.find_one_and_update(
            {"_id": self._key(user_id, minute)},
            {"$inc": inc, "$setOnInsert": {"user_id": user_id, "expires_at": expires}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    async def consume(
        self, user_id: str, *, requests_per_minute: int, tokens_per_minute: int
    ) -> QuotaDecision:
        """Count one request of the user and decide on it. Not retried: a lost reply of an
        $inc that landed would count the request twice."""
        now = time.time()
        minute = int(now // WINDOW_S)
        elapsed = (now % WINDOW_S) / WINDOW_S
        current, previous = await asyncio.gather(
            self._bump(user_id, minute, {"requests": 1, "tokens": 0}),
            self._windows.find_one({"_id": self._key(user_id, minute - 1)}),
        )
        decision = quota_decision(
            previous=_counts(previous),
            current=_counts(current),
            elapsed=elapsed,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
        if not decision.allowed:
            # A refused request is not one of the minute's requests: undo its count, so that a
            # client retrying too early does not push its own window further out.
            await self._windows.update_one(
                {"_id": self._key(user_id, minute)}, {"$inc": {"requests": -1}}
            )
        return decision

    async def add_tokens(self, user_id: str, tokens: int, at_ms: int) -> None:
        at = at_ms / 1000 if at_ms else time.time()
        if not user_id or tokens <= 0 or time.time() - at > 2 * WINDOW_S:
            return  # a result replayed long after: its minute no longer counts
        await self._add(user_id, int(at // WINDOW_S), tokens)

    @retried
    async def _add(self, user_id: str, minute: int, tokens: int) -> None:
        await self._bump(user_id, minute, {"requests": 0, "tokens": tokens})
