"""Reads of a chat's messages (`messages`): by request id, by ordinal, and the history a context
is built from. The writes are a turn's, in `ChatStore`."""

from __future__ import annotations

from collections.abc import Callable

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from parley_session.domain import StoredMessage
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, ms, retried
from parley_session.stores.chats import LoadedHistory, MessageDoc

__all__ = ["MessageStore"]


def _stored(doc: Doc) -> StoredMessage:
    return StoredMessage(doc["ordinal"], doc["role"], doc["content"], doc.get("token_count", 0))


class MessageStore:
    """A chat's messages as the context, the history and the feedback read them."""

    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._messages = db["messages"]

    @retried
    async def find_message(self, chat_id: str, request_id: str, role: str) -> MessageDoc | None:
        doc = await self._messages.find_one(
            {"chat_id": chat_id, "request_id": request_id, "role": role}
        )
        return None if doc is None else MessageDoc.from_doc(doc)

    @retried
    async def get_message(self, chat_id: str, message_id: str) -> MessageDoc | None:
        doc = await self._messages.find_one({"_id": message_id, "chat_id": chat_id})
        return None if doc is None else MessageDoc.from_doc(doc)

    @retried
    async def message_at(self, chat_id: str, ordinal: int) -> MessageDoc | None:
        doc = await self._messages.find_one({"chat_id": chat_id, "ordinal": ordinal})
        return None if doc is None else MessageDoc.from_doc(doc)

    @retried
    async def chat_messages(self, chat_id: str) -> list[MessageDoc]:
        cursor = self._messages.find({"chat_id": chat_id}).sort("ordinal", ASCENDING)
        return [MessageDoc.from_doc(d) async for d in cursor]

    @retried
    async def history(
        self,
        chat_id: str,
        *,
        after: int,
        through: int,
        budget: int | None = None,
        cost: Callable[[str, int], int] | None = None,
    ) -> LoadedHistory:
        """The messages with `after` < ordinal <= `through`, oldest first.

        With a `budget`, read newest first and stop one turn past the point where their `cost`
        exceeds it: a long chat costs what its context needs, not its length.
        """
        query = {"chat_id": chat_id, "ordinal": {"$gt": after, "$lte": through}}
        projection = {
            "_id": 0,
            "ordinal": 1,
            "role": 1,
            "content": 1,
            "token_count": 1,
            "created_at": 1,
        }
        created: dict[int, int] = {}

        def stored(doc: Doc) -> StoredMessage:
            created[doc["ordinal"]] = ms(doc["created_at"])
            return _stored(doc)

        if budget is None or cost is None:
            cursor = self._messages.find(query, projection).sort("ordinal", ASCENDING)
            return LoadedHistory([stored(d) async for d in cursor], 0, created)
        newest_first: list[StoredMessage] = []
        spent = 0
        over = False
        cut = False
        # A message costs at least a few tokens of template: one batch holds what can fit.
        batch = min(max(budget // 8, 32), 2000)
        cursor = self._messages.find(query, projection).sort("ordinal", DESCENDING)
        try:
            async for d in cursor.batch_size(batch):
                m = stored(d)
                newest_first.append(m)
                spent += cost(m.role, m.token_count)
                if over and m.role == "user":
                    cut = True  # one whole turn past the budget is enough to decide
                    break
                over = spent > budget
        finally:
            await cursor.close()
        older = 0
        if cut:
            older = await self._messages.count_documents(
                {"chat_id": chat_id, "ordinal": {"$gt": after, "$lt": newest_first[-1].ordinal}}
            )
        return LoadedHistory(newest_first[::-1], older, created)
