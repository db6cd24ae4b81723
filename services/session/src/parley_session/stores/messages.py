"""Reads of a chat's messages (`messages`): by request id, by ordinal, and the history a context
is built from. The writes are a turn's, in `ChatStore`."""

from __future__ import annotations

from collections.abc import Callable

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from parley_session.domain import StoredMessage
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, ms, retried
from parley_session.stores.chats import (
    GAP,
    LoadedHistory,
    MessageDoc,
    tool_calls_of,
    tool_results_of,
)

__all__ = ["MessageStore"]


def _stored(doc: Doc) -> StoredMessage:
    return StoredMessage(
        doc["ordinal"],
        doc["role"],
        doc.get("model_content") or doc["content"],
        doc.get("token_count", 0),
        tool_calls_of(doc),
        tool_results_of(doc),
    )


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
        cursor = self._messages.find({"chat_id": chat_id, "role": {"$ne": GAP}}).sort(
            "ordinal", ASCENDING
        )
        return [MessageDoc.from_doc(d) async for d in cursor]

    @retried
    async def parent_of(self, message_id: str) -> str | None:
        doc = await self._messages.find_one({"_id": message_id}, {"parent_id": 1})
        return None if doc is None else doc.get("parent_id")

    @retried
    async def history(
        self,
        chat_id: str,
        *,
        leaf_id: str,
        after: int,
        through: int,
        budget: int | None = None,
        cost: Callable[[str, int], int] | None = None,
    ) -> LoadedHistory:
        """The messages on the path to `leaf_id` with `after` < ordinal <= `through`, oldest
        first: one aggregation that walks the path up from the leaf, and stops at `after`.

        With a `budget`, keep (newest first) up to one turn past the point where their `cost`
        exceeds it, and count the older ones: the context decides on what fits.
        """
        pipeline: list[Doc] = [
            {"$match": {"_id": leaf_id, "chat_id": chat_id}},
            {
                "$graphLookup": {
                    "from": "messages",
                    "startWith": "$parent_id",
                    "connectFromField": "parent_id",
                    "connectToField": "_id",
                    "as": "up",
                    "restrictSearchWithMatch": {"chat_id": chat_id, "ordinal": {"$gt": after}},
                }
            },
        ]
        found = [d async for d in await self._messages.aggregate(pipeline)]
        docs: list[Doc] = []
        if found:
            leaf = found[0]
            docs = [*leaf.pop("up"), leaf]
        docs = sorted(
            (d for d in docs if after < d["ordinal"] <= through and d["role"] != GAP),
            key=lambda d: d["ordinal"],
        )
        created = {d["ordinal"]: ms(d["created_at"]) for d in docs}
        ids = {d["ordinal"]: d["_id"] for d in docs}
        messages = [_stored(d) for d in docs]
        if budget is None or cost is None:
            return LoadedHistory(messages, 0, created, ids)
        spent = 0
        over = False
        kept = 0
        for m in reversed(messages):
            kept += 1
            spent += cost(m.role, m.token_count)
            if over and m.role == "user":
                break  # one whole turn past the budget is enough to decide
            over = spent > budget
        return LoadedHistory(messages[len(messages) - kept :], len(messages) - kept, created, ids)
