"""A chat's running summary and the one summary job it may have outstanding, both kept in the
chat's document (`chats.summary`, `chats.summary_job`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from parley_common.ids import new_id
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, now, retried

__all__ = ["SummaryJob", "SummaryJobState", "SummaryStore"]


class SummaryJobState(StrEnum):
    PENDING = "pending"  # requested from the workers, its result not back yet
    FAILED = "failed"  # its result was a failure: a later turn retries it after `retry_at`


@dataclass(frozen=True, slots=True)
class SummaryJob:
    request_id: str
    attempts: int
    state: SummaryJobState = SummaryJobState.PENDING


class SummaryStore:
    """At most one summary request per chat outstanding; a summary covering less never replaces
    one covering more."""

    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._chats = db["chats"]

    @retried
    async def claim_summary_job(
        self, chat_id: str, *, now: datetime, stale_before: datetime
    ) -> SummaryJob | None:
        """Take the chat's summary job unless one is in flight (and not stale) or waiting out
        its backoff; at most one summary request per chat is outstanding."""
        request_id = f"summary-{new_id()}"
        doc = await self._chats.find_one_and_update(
            {
                "_id": chat_id,
                "$or": [
                    {"summary_job": None},
                    {
                        "summary_job.state": SummaryJobState.FAILED.value,
                        "summary_job.retry_at": {"$lte": now},
                    },
                    {
                        "summary_job.state": SummaryJobState.PENDING.value,
                        "summary_job.requested_at": {"$lte": stale_before},
                    },
                ],
            },
            [
                {
                    "$set": {
                        "summary_job": {
                            "request_id": request_id,
                            "state": SummaryJobState.PENDING.value,
                            "requested_at": now,
                            "attempts": {"$add": [{"$ifNull": ["$summary_job.attempts", 0]}, 1]},
                        }
                    }
                }
            ],
            return_document=ReturnDocument.AFTER,
            projection={"summary_job": 1},
        )
        if doc is None:
            return None
        return SummaryJob(request_id, doc["summary_job"]["attempts"])

    @retried
    async def fail_summary_job(self, chat_id: str, request_id: str, retry_at: datetime) -> bool:
        result = await self._chats.update_one(
            {"_id": chat_id, "summary_job.request_id": request_id},
            {
                "$set": {
                    "summary_job.state": SummaryJobState.FAILED.value,
                    "summary_job.retry_at": retry_at,
                }
            },
        )
        return result.modified_count == 1

    @retried
    async def release_summary_job(self, chat_id: str, request_id: str) -> None:
        await self._chats.update_one(
            {"_id": chat_id, "summary_job.request_id": request_id}, {"$unset": {"summary_job": ""}}
        )

    @retried
    async def store_summary(
        self, chat_id: str, *, request_id: str, text: str, through_ordinal: int, token_count: int
    ) -> bool:
        """Keep the summary unless the chat already has one that covers more (a late or repeated
        result changes nothing); True when stored."""
        result = await self._chats.update_one(
            {
                "_id": chat_id,
                "$or": [
                    {"summary": None},
                    {"summary.through_ordinal": {"$lt": through_ordinal}},
                ],
            },
            {
                "$set": {
                    "summary": {
                        "text": text,
                        "through_ordinal": through_ordinal,
                        "token_count": token_count,
                        "request_id": request_id,
                        "created_at": now(),
                    }
                }
            },
        )
        await self._chats.update_one(
            {"_id": chat_id, "summary_job.request_id": request_id}, {"$unset": {"summary_job": ""}}
        )
        return result.modified_count == 1

    @retried
    async def summary_job(self, chat_id: str) -> SummaryJob | None:
        """The chat's outstanding summary job, if any."""
        doc = await self._chats.find_one({"_id": chat_id}, {"summary_job": 1})
        job = None if doc is None else doc.get("summary_job")
        if not job:
            return None
        return SummaryJob(job["request_id"], job.get("attempts", 1), SummaryJobState(job["state"]))
