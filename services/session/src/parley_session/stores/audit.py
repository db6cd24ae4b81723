"""The audit log (`audit_events`): security events, appended and never changed, listed newest
first by time and id (the cursor). An event keeps the tenant of the user it is about, as it was
then, so a tenant's admin reads their tenant's events (those of a user since deleted too)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from parley_common.ids import new_id
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, insert_new, now, retried

__all__ = ["AuditEvent", "AuditQuery", "AuditStore"]


def _event_id() -> str:
    # Ordered by time even within a millisecond (the list's order and cursor use it).
    return f"{time.time_ns():020d}{new_id()[:12]}"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    type: str
    user_id: str = ""
    email: str = ""
    client_address: str = ""
    detail: str = ""
    tenant_id: str = ""  # "": its user's, looked up when it is recorded
    event_id: str = field(default_factory=_event_id)
    at: datetime = field(default_factory=now)

    @classmethod
    def from_doc(cls, doc: Doc) -> AuditEvent:
        return cls(
            type=doc["type"],
            user_id=doc.get("user_id", ""),
            email=doc.get("email", ""),
            client_address=doc.get("client_address", ""),
            detail=doc.get("detail", ""),
            tenant_id=doc.get("tenant_id", ""),
            event_id=doc["_id"],
            at=doc["at"],
        )


@dataclass(frozen=True, slots=True)
class AuditQuery:
    user_id: str = ""
    tenant_id: str | None = None
    type: str = ""
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, str] | None = None  # the cursor: strictly older than this
    limit: int = 50


class AuditStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._events = db["audit_events"]
        self._users = db["users"]

    @retried
    async def ensure_indexes(self) -> None:
        await self._events.create_index([("at", DESCENDING), ("_id", DESCENDING)])
        await self._events.create_index([("user_id", 1), ("at", DESCENDING)])
        await self._events.create_index([("type", 1), ("at", DESCENDING)])
        await self._events.create_index([("tenant_id", 1), ("at", DESCENDING)])

    @retried
    async def record(self, event: AuditEvent) -> None:
        tenant_id = event.tenant_id
        if not tenant_id and event.user_id:
            user = await self._users.find_one({"_id": event.user_id}, {"tenant_id": 1})
            tenant_id = (user or {}).get("tenant_id", "")
        doc = {
            "_id": event.event_id,
            "at": event.at,
            "type": event.type,
            "user_id": event.user_id,
            "email": event.email,
            "client_address": event.client_address,
            "detail": event.detail,
            "tenant_id": tenant_id,
        }
        await insert_new(self._events, doc)

    @retried
    async def forget_personal_data(self, user_id: str) -> None:
        """The user's events keep what happened and when, not their e-mail and addresses."""
        await self._events.update_many(
            {"user_id": user_id}, {"$set": {"email": "", "client_address": ""}}
        )

    @retried
    async def list(self, query: AuditQuery) -> list[AuditEvent]:
        match: Doc = {}
        if query.user_id:
            match["user_id"] = query.user_id
        if query.tenant_id is not None:
            match["tenant_id"] = query.tenant_id
        if query.type:
            match["type"] = query.type
        at: Doc = {}
        if query.since is not None:
            at["$gte"] = query.since
        if query.until is not None:
            at["$lt"] = query.until
        if at:
            match["at"] = at
        if query.before is not None:
            before_at, before_id = query.before
            match = {
                "$and": [
                    match,
                    {
                        "$or": [
                            {"at": {"$lt": before_at}},
                            {"at": before_at, "_id": {"$lt": before_id}},
                        ]
                    },
                ]
            }
        cursor = (
            self._events.find(match)
            .sort([("at", DESCENDING), ("_id", DESCENDING)])
            .limit(query.limit)
        )
        return [AuditEvent.from_doc(d) async for d in cursor]
