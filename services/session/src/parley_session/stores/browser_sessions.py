"""Browser sessions (`browser_sessions`): one document per signed-in browser, keyed by the hash
of its token (the cookie's value is never stored), ending at `expires_at` (absolute; a TTL index
removes it) or when unused until `idle_until`. Signing out deletes it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase

from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, insert_new, now, retried
from parley_session.stores.users import hash_token

__all__ = ["SESSION_TOKEN_PREFIX", "BrowserSession", "BrowserSessionStore"]

SESSION_TOKEN_PREFIX = "ps-"

# A session's idle deadline is pushed on at most once a minute (or a quarter of the idle
# timeout, when that is shorter), not on every request.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class BrowserSession:
    token: str
    user_id: str
    expires_at: datetime


def _aware(value: datetime) -> datetime:
    """MongoDB's dates come back naive (UTC) unless the client is tz_aware."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class BrowserSessionStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._sessions = db["browser_sessions"]

    @retried
    async def ensure_indexes(self) -> None:
        await self._sessions.create_index("expires_at", expireAfterSeconds=0)
        await self._sessions.create_index("user_id")

    async def create(self, user_id: str, *, idle: timedelta, absolute: timedelta) -> BrowserSession:
        token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
        at = now()
        session = BrowserSession(token=token, user_id=user_id, expires_at=at + absolute)
        doc = {
            "_id": hash_token(token),
            "user_id": user_id,
            "created_at": at,
            "expires_at": session.expires_at,
            "idle_until": min(at + idle, session.expires_at),
        }
        await self._insert(doc)
        return session

    @retried
    async def _insert(self, doc: Doc) -> None:
        await insert_new(self._sessions, doc)

    @retried
    async def user_of(self, token: str, *, idle: timedelta) -> str | None:
        """The user of a live session, whose idle deadline moves on; None when it has ended."""
        at = now()
        doc = await self._sessions.find_one(
            {"_id": hash_token(token), "expires_at": {"$gt": at}, "idle_until": {"$gt": at}}
        )
        if doc is None:
            return None
        idle_until = min(at + idle, _aware(doc["expires_at"]))
        if idle_until - _aware(doc["idle_until"]) >= min(_TOUCH_EVERY, idle / 4):
            await self._sessions.update_one(
                {"_id": doc["_id"]}, {"$max": {"idle_until": idle_until}}
            )
        return str(doc["user_id"])

    @retried
    async def revoke(self, token: str) -> str | None:
        """End one session; returns its user."""
        doc = await self._sessions.find_one_and_delete({"_id": hash_token(token)})
        return None if doc is None else str(doc["user_id"])

    @retried
    async def revoke_all(self, user_id: str, *, keep_token: str = "") -> int:
        query: Doc = {"user_id": user_id}
        if keep_token:
            query["_id"] = {"$ne": hash_token(keep_token)}
        result = await self._sessions.delete_many(query)
        return result.deleted_count
