"""Budgets' counts (`budgets`): one document per user or tenant and period with the requests
reserved and the tokens used or held. A request and its tokens (its prompt and its reply's cap)
are reserved by one conditional `$inc` (the budget's limits are in the filter), so that
concurrent requests, on any gateway replica, cannot together pass it: 50 first requests of a
new user against a budget of 10 reserve 10, and N requests against a token budget hold at most
the budget.

A reservation of tokens is recorded in `budget_holds` (which budgets, how many tokens) until its
result settles it to what the answer used, once whatever is redelivered. A hold whose result
never comes (a request lost with the queue, say) is given back after it expires, when a request
finds a budget it holds spent; a result arriving after that counts what it used in full."""

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
_SWEEP_AT_MOST = 100  # expired holds given back per refused reservation


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
        self._holds = db["budget_holds"]

    @retried
    async def ensure_indexes(self) -> None:
        await self._budgets.create_index("expires_at", expireAfterSeconds=0)
        await self._budgets.create_index([("members", 1), ("ends_at", 1)])
        await self._holds.create_index("forget_at", expireAfterSeconds=0)
        await self._holds.create_index([("keys", 1), ("state", 1), ("expires_at", 1)])

    @staticmethod
    def key(limit: BudgetLimit, period: Period) -> str:
        return f"{limit.scope}:{limit.owner}:{period.length_s}:{period.index}"

    async def reserve(
        self, limit: BudgetLimit, period: Period, user_id: str, tokens: int = 0
    ) -> str:
        """Reserve one request of `user_id` and `tokens`: "" when they fit, else what they
        exceed ("requests" or "tokens"). Without `tokens`, a spent token budget still refuses.
        The budget lists the users it has served (`members`), so that a result's tokens reach
        every budget of its user in one update. Not retried: a lost reply of an $inc that
        landed would count twice."""
        if limit.tokens and tokens > limit.tokens:
            return "tokens"  # more than the whole budget: never fits
        conditions: Doc = {}
        if limit.requests:
            conditions["requests"] = {"$lt": limit.requests}
        if limit.tokens:
            conditions["tokens"] = (
                {"$lte": limit.tokens - tokens} if tokens else {"$lt": limit.tokens}
            )
        key = self.key(limit, period)
        update: Doc = {
            "$inc": {"requests": 1, "tokens": tokens},
            "$addToSet": {"members": user_id},
            "$setOnInsert": {
                "scope": limit.scope,
                "owner": limit.owner,
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

    async def release(self, limit: BudgetLimit, period: Period, tokens: int = 0) -> None:
        """Give back a reservation whose request was refused by another limit."""
        await self._budgets.update_one(
            {"_id": self.key(limit, period), "requests": {"$gt": 0}},
            {"$inc": {"requests": -1, "tokens": -tokens}},
        )

    @retried
    async def hold(
        self, hold_id: str, *, user_id: str, keys: list[str], tokens: int, expires_at: datetime
    ) -> None:
        """Record the tokens just reserved in the budgets `keys` for one request."""
        await self._holds.update_one(
            {"_id": hold_id},
            {
                "$setOnInsert": {
                    "user_id": user_id,
                    "keys": keys,
                    "tokens": tokens,
                    "state": "held",
                    "expires_at": expires_at,
                    "forget_at": expires_at + _KEEP,
                }
            },
            upsert=True,
        )

    async def settle_hold(self, hold_id: str, used: int) -> bool:
        """Settle a hold from its result: its budgets count `used` in place of the tokens held
        (what a hold given back on expiry held is counted in full). False: settled before (a
        redelivered result) or unknown."""
        doc = await self._holds.find_one_and_update(
            {"_id": hold_id, "state": {"$in": ["held", "released"]}},
            {"$set": {"state": "settled", "used": used}},
        )
        if doc is None:
            return False
        held = int(doc["tokens"]) if doc["state"] == "held" else 0
        if used != held:
            await self._budgets.update_many(
                {"_id": {"$in": doc["keys"]}}, {"$inc": {"tokens": used - held}}
            )
        return True

    async def release_expired(self, key: str, now: datetime) -> int:
        """Give back the expired holds on the budget `key` (their results never came);
        how many tokens came back."""
        freed = 0
        for _ in range(_SWEEP_AT_MOST):
            doc = await self._holds.find_one_and_update(
                {"keys": key, "state": "held", "expires_at": {"$lte": now}},
                {"$set": {"state": "released"}},
            )
            if doc is None:
                break
            await self._budgets.update_many(
                {"_id": {"$in": doc["keys"]}}, {"$inc": {"tokens": -int(doc["tokens"])}}
            )
            freed += int(doc["tokens"])
        return freed

    @retried
    async def settle(self, user_id: str, tokens: int, at: datetime) -> None:
        """Add a result's tokens to the budgets (its user's, its tenant's) open at `at`."""
        if tokens <= 0 or not user_id:
            return
        await self._budgets.update_many(
            {"members": user_id, "starts_at": {"$lte": at}, "ends_at": {"$gt": at}},
            {"$inc": {"tokens": tokens}},
        )
