"""Feedback on answers (`feedback`: one per message and user, `message_id, user_id` unique; by
time, `updated_at, _id`, and per bot profile, `bot_id, updated_at, _id`)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_common.ids import new_id
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, from_ms, ms, now, retried
from parley_session.stores.chats import ChatDoc, MessageDoc

__all__ = ["FeedbackDoc", "FeedbackQuery", "FeedbackStore"]


@dataclass(frozen=True, slots=True)
class FeedbackDoc:
    feedback_id: str
    chat_id: str
    message_id: str
    user_id: str
    bot_id: str
    rating: str  # "up" | "down"
    comment: str
    tags: list[str]
    request_id: str
    cache_entry_id: str
    model: str
    created_ms: int
    updated_ms: int
    question: str = ""
    answer: str = ""

    @classmethod
    def from_doc(cls, doc: Doc) -> FeedbackDoc:
        return cls(
            feedback_id=doc["_id"],
            chat_id=doc["chat_id"],
            message_id=doc["message_id"],
            user_id=doc["user_id"],
            bot_id=doc.get("bot_id", ""),
            rating=doc["rating"],
            comment=doc.get("comment", ""),
            tags=list(doc.get("tags", [])),
            request_id=doc.get("request_id", ""),
            cache_entry_id=doc.get("cache_entry_id", ""),
            model=doc.get("model", ""),
            created_ms=ms(doc["created_at"]),
            updated_ms=ms(doc["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class FeedbackQuery:
    bot_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, str] | None = None  # the cursor: strictly older than this


class FeedbackStore:
    """Ratings of answers, listed and exported with the question and answer they rate."""

    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._feedback = db["feedback"]
        self._messages = db["messages"]

    async def ensure_indexes(self) -> None:
        await self._feedback.create_index(
            [("message_id", ASCENDING), ("user_id", ASCENDING)], unique=True
        )
        await self._feedback.create_index([("updated_at", DESCENDING), ("_id", DESCENDING)])
        await self._feedback.create_index(
            [("bot_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self._feedback.create_index("chat_id")

    @retried
    async def put_feedback(
        self,
        *,
        user_id: str,
        chat: ChatDoc,
        message: MessageDoc,
        rating: str,
        comment: str,
        tags: Sequence[str],
    ) -> FeedbackDoc:
        """One feedback per message and user; giving it again replaces it."""
        at = now()
        update = {
            "$set": {
                "rating": rating,
                "comment": comment,
                "tags": list(tags),
                "updated_at": at,
                "bot_id": chat.bot_id,
            },
            "$setOnInsert": {
                "_id": new_id(),
                "chat_id": chat.chat_id,
                "request_id": message.request_id,
                "cache_entry_id": message.cache_entry_id,
                "model": message.model,
                "created_at": at,
            },
        }
        key = {"message_id": message.message_id, "user_id": user_id}
        try:
            doc = await self._feedback.find_one_and_update(
                key, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            # Two upserts of the same feedback at once: the second one updates the first.
            doc = await self._feedback.find_one_and_update(
                key, update, return_document=ReturnDocument.AFTER
            )
        assert doc is not None
        return FeedbackDoc.from_doc(doc)

    async def list_feedback(self, query: FeedbackQuery, *, limit: int) -> list[FeedbackDoc]:
        page = await self._page(query, limit)
        return await self._with_texts(page)

    async def export_feedback(
        self, query: FeedbackQuery, *, batch: int = 200
    ) -> AsyncIterator[FeedbackDoc]:
        """Every matching feedback, most recent first, with its question and answer."""
        while True:
            page = await self._page(query, batch)
            if not page:
                return
            for item in await self._with_texts(page):
                yield item
            last = page[-1]
            query = FeedbackQuery(
                query.bot_id, query.since, query.until, (from_ms(last.updated_ms), last.feedback_id)
            )
            if len(page) < batch:
                return

    @retried
    async def _page(self, query: FeedbackQuery, limit: int) -> list[FeedbackDoc]:
        filters: Doc = {}
        if query.bot_id:
            filters["bot_id"] = query.bot_id
        span: Doc = {}
        if query.since is not None:
            span["$gte"] = query.since
        if query.until is not None:
            span["$lt"] = query.until
        if span:
            filters["updated_at"] = span
        if query.before is not None:
            at, feedback_id = query.before
            filters["$or"] = [
                {"updated_at": {"$lt": at}},
                {"updated_at": at, "_id": {"$lt": feedback_id}},
            ]
        cursor = (
            self._feedback.find(filters)
            .sort([("updated_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        # Milliseconds are what the cursor carries; MongoDB keeps them, so none is skipped.
        return [FeedbackDoc.from_doc(d) async for d in cursor]

    @retried
    async def _with_texts(self, page: list[FeedbackDoc]) -> list[FeedbackDoc]:
        """Attach each answer and the question it replied to (for review and retraining)."""
        if not page:
            return page
        answers = {
            d["_id"]: d
            async for d in self._messages.find(
                {"_id": {"$in": [f.message_id for f in page]}},
                {"chat_id": 1, "ordinal": 1, "content": 1},
            )
        }
        wanted = [{"chat_id": a["chat_id"], "ordinal": a["ordinal"] - 1} for a in answers.values()]
        questions: dict[tuple[str, int], str] = {}
        if wanted:
            async for d in self._messages.find(
                {"$or": wanted}, {"chat_id": 1, "ordinal": 1, "content": 1}
            ):
                questions[(d["chat_id"], d["ordinal"])] = d["content"]
        out = []
        for f in page:
            answer = answers.get(f.message_id)
            if answer is None:
                out.append(f)
                continue
            question = questions.get((answer["chat_id"], answer["ordinal"] - 1), "")
            out.append(dataclasses.replace(f, question=question, answer=answer["content"]))
        return out
