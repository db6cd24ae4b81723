"""Search of a user's chats (`messages` and `chats` text indexes, both led by `user_id`): every
query names the user, so no other user's entry is ever read."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.asynchronous.database import AsyncDatabase

from parley_session.retry import RetryPolicy
from parley_session.search import SearchQuery
from parley_session.stores._mongo import Doc, from_ms, ms, retried

__all__ = ["SearchStore", "TextHit"]


@dataclass(frozen=True, slots=True)
class TextHit:
    chat_id: str
    chat_title: str
    bot_id: str
    message_id: str  # empty: the title matched
    role: str
    text: str
    score: float
    created_ms: int


class SearchStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._chats = db["chats"]
        self._messages = db["messages"]

    @retried
    async def search(self, query: SearchQuery) -> list[TextHit]:
        """Up to `offset + limit` + 1 hits, best first (MongoDB's text score), titles and
        messages together; the caller pages through them."""
        wanted = query.offset + query.limit + 1
        score = {"score": {"$meta": "textScore"}}
        times: Doc = {}
        if query.since_ms:
            times["$gte"] = from_ms(query.since_ms)
        if query.until_ms:
            times["$lte"] = from_ms(query.until_ms)
        chat_filter: Doc = {"user_id": query.user_id}
        if query.bot_id:
            chat_filter["bot_id"] = query.bot_id
        titles: Doc = {**chat_filter, "$text": {"$search": query.text}}
        if times:
            titles["updated_at"] = times
        cursor = self._chats.find(titles, {"title": 1, "bot_id": 1, "updated_at": 1, **score})
        chats: dict[str, Doc] = {}
        hits: list[TextHit] = []
        async for c in cursor.sort([("score", {"$meta": "textScore"})]).limit(wanted):
            chats[c["_id"]] = c
            hits.append(
                TextHit(
                    c["_id"],
                    c["title"],
                    c.get("bot_id", ""),
                    "",
                    "",
                    c["title"],
                    c["score"],
                    ms(c["updated_at"]),
                )
            )
        messages: Doc = {
            "user_id": query.user_id,
            "$text": {"$search": query.text},
            "role": {"$in": ["user", "assistant"]},
        }
        if times:
            messages["created_at"] = times
        if query.bot_id:
            ids = [c["_id"] async for c in self._chats.find(chat_filter, {"_id": 1})]
            messages["chat_id"] = {"$in": ids}
        cursor = self._messages.find(
            messages, {"chat_id": 1, "role": 1, "content": 1, "created_at": 1, **score}
        )
        found = [m async for m in cursor.sort([("score", {"$meta": "textScore"})]).limit(wanted)]
        missing = list({m["chat_id"] for m in found} - chats.keys())
        if missing:
            async for c in self._chats.find(
                {"_id": {"$in": missing}, "user_id": query.user_id}, {"title": 1, "bot_id": 1}
            ):
                chats[c["_id"]] = c
        for m in found:
            chat = chats.get(m["chat_id"])
            if chat is None:
                continue  # its chat is being deleted
            hits.append(
                TextHit(
                    m["chat_id"],
                    chat["title"],
                    chat.get("bot_id", ""),
                    m["_id"],
                    m["role"],
                    m["content"],
                    m["score"],
                    ms(m["created_at"]),
                )
            )
        hits.sort(key=lambda h: (-h.score, -h.created_ms, h.message_id))
        return hits[:wanted]
