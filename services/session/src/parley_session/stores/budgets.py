"""Budgets' counts (`budgets`): one document per user or tenant and period with the requests
reserved and the tokens used. A request is reserved by one conditional `$inc` (the budget's
limit is in the filter), so that concurrent requests, on any gateway replica, cannot together
pass it: 50 first requests of a new user against a budget of 10 reserve 10."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, retried

__all__ = ["BudgetLimit", "BudgetStore", "Period"]

_KEEP = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Period:
    index: int
    length_s: int

    @classmethod
    def now(cls, length_s: int) -> Period:
        return cls(int(time.time() // length_s), length_s)

    @property
    def starts_at(self) -> datetime:
        return datetime.fromtimestamp(self.index * self.length_s, UTC)

    @property
    def ends_at(self) -> datetime:
        return datetime.fromtimestamp((self.index + 1) * self.length_s, UTC)


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    scope: str  # "user" | "tenant"
    owner: str  # the user's or tenant's id
    requests: int  # 0: none
    tokens: int  # 0: none


class BudgetStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._budgets = db["budgets"]

    @retried
    async def ensure_indexes(self) -> None:
        await self._budgets.create_index("expires_at", expireAfterSeconds=0)
        await self._budgets.create_index([("members", 1), ("ends_at", 1)])

    @staticmethod
    def _key(limit: BudgetLimit, period: Period) -> str:
        return f"{limit.scope}:{limit.owner}:{period.length_s}:{period.index}"

    async def reserve(self, limit: BudgetLimit, period: Period, user_id: str) -> str:
        """Reserve one request of `user_id`: "" when it fits, else what it exceeds
        ("requests" or "tokens"). The budget lists the users it has served (`members`), so
        that a result's tokens reach every budget of its user in one update. Not retried: a
        lost reply of an $inc that landed would count twice."""
        conditions: Doc = {}
        if limit.requests:
            conditions["requests"] = {"$lt": limit.requests}
        if limit.tokens:
            conditions["tokens"] = {"$lt": limit.tokens}
        key = self._key(limit, period)
        update: Doc = {
            "$inc": {"requests": 1},
            "$addToSet": {"members": user_id},
            "$setOnInsert": {
                "scope": limit.scope,
                "owner": limit.owner,
                "tokens": 0,
                "starts_at": period.starts_at,
                "ends_at": period.ends_at,
                "expires_at": period.ends_at + _KEEP,
            },
        }
        try:
            # Upsert: the period's first request creates the document.
            result = await self._budgets.update_one({"_id": key, **conditions}, update, upsert=True)
            if result.matched_count or result.upserted_id is not None:
                return ""
        except DuplicateKeyError:
            # The document exists (a concurrent first request made it, or this one is over the
            # budget): the condition alone decides, without creating anything.
            del update["$setOnInsert"]
            result = await self._budgets.update_one({"_id": key, **conditions}, update)
            if result.matched_count:
                return ""
        doc = await self._budgets.find_one({"_id": key}) or {}
        if limit.requests and int(doc.get("requests", 0)) >= limit.requests:
            return "requests"
        return "tokens"

    async def release(self, limit: BudgetLimit, period: Period) -> None:
        """Give back a reservation whose request was refused by another limit."""
        await self._budgets.update_one(
            {"_id": self._key(limit, period), "requests": {"$gt": 0}}, {"$inc": {"requests": -1}}
        )

    @retried
    async def settle(self, user_id: str, tokens: int, at: datetime) -> None:
        """Add a result's tokens to the budgets (its user's, its tenant's) open at `at`."""
        if tokens <= 0 or not user_id:
            return
        await self._budgets.update_many(
            {"members": user_id, "starts_at": {"$lte": at}, "ends_at": {"$gt": at}},
            {"$inc": {"tokens": tokens}},
        )
