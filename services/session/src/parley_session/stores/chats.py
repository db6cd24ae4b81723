"""Chats and their messages, one aggregate (`chats`, `messages`): a turn's writes move both.

- `chats`: a user's chats by recency (`user_id, updated_at, _id`), a retried "start a chat" finds
  its chat (`user_id, created_by_request` unique); the running summary lives in the chat
  (`SummaryStore`);
- `messages`: a chat's messages in order (`chat_id, ordinal` unique), one user and one assistant
  message per request id (`chat_id, request_id, role` unique).

The messages form a tree (`parent_id`; `chat_id, parent_id` indexed): an edited question and a
regenerated answer are siblings of the message they replace. The chat follows one path, from its
first question to its `active_leaf`; one atomic update of the chat moves that leaf (a next
question, an edit, a regeneration, a choice of branch), so concurrent turns chain one after the
other and no write of several documents has to stay consistent. Ordinals grow along every path
(each new message gets a fresh slot), so a path read in ordinal order is the conversation.

A question asked before the previous answer is stored follows that question and `awaits_slot`:
the answer, once stored, takes its place as the question's parent (`append_answer`, and the
question's own check in `place_question`, whichever runs second). A reserved question that is
never stored while a later one already follows it leaves a `gap` message in its place, so that
every parent exists.

A chat's `message_count` is a counter moved by the write that adds (or gives back) a message, not
a recount: PyMongo's retryable writes apply such a write once even when its reply is lost. A write
redone by the policy after a lost reply, or a turn cut off by an outage between reserving its
ordinal and storing its question, can leave the count off by one: it is shown to people, nothing
depends on it.

A turn costs few round trips: a new chat is inserted with its first question already counted
(two inserts, sent at once); a next question reserves its ordinal, counts itself and reads the
chat (summary included) in one findAndModify, then one insert; its answer is one insert and one
update.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

from pymongo import ASCENDING, DESCENDING, TEXT, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_common.ids import new_id
from parley_session.domain import ChatNotFoundError, StoredMessage, ToolCall, ToolResult
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, key_pattern, ms, now, retried
from parley_session.stores.attachments import AttachmentStore

__all__ = [
    "GAP",
    "ChatDoc",
    "ChatStore",
    "LoadedHistory",
    "MessageDoc",
    "OpenedChat",
    "SummaryDoc",
    "TurnSlot",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SummaryDoc:
    text: str
    through_ordinal: int
    token_count: int


@dataclass(frozen=True, slots=True)
class ChatDoc:
    chat_id: str
    user_id: str
    title: str
    bot_id: str
    created_ms: int
    updated_ms: int
    message_count: int
    summary: SummaryDoc | None = None
    active_leaf: str = ""  # the last message of the chat's active path

    @classmethod
    def from_doc(cls, doc: Doc) -> ChatDoc:
        summary = doc.get("summary")
        return cls(
            chat_id=doc["_id"],
            user_id=doc["user_id"],
            title=doc.get("title", ""),
            bot_id=doc.get("bot_id", ""),
            created_ms=ms(doc["created_at"]),
            updated_ms=ms(doc["updated_at"]),
            message_count=doc.get("message_count", 0),
            active_leaf=doc.get("active_leaf") or "",
            summary=None
            if not summary
            else SummaryDoc(summary["text"], summary["through_ordinal"], summary["token_count"]),
        )


@dataclass(frozen=True, slots=True)
class MessageDoc:
    message_id: str
    chat_id: str
    ordinal: int
    role: str
    content: str
    token_count: int
    request_id: str
    created_ms: int
    finish_reason: str
    model: str = ""
    cache_entry_id: str = ""
    parent_id: str = ""  # empty: the chat's first question
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    cache_score: float = 0.0  # with cache_entry_id: the cache's decision, for audits
    cache_reason: str = ""
    attachments: tuple[Doc, ...] = ()  # AttachmentDoc.ref() of each file sent with a question
    # What the model reads of the question: `content` with its documents' text (when it has any).
    model_content: str = ""
    context_notice: str = ""  # what of the documents was cut to fit the window

    @classmethod
    def from_doc(cls, doc: Doc) -> MessageDoc:
        return cls(
            message_id=doc["_id"],
            chat_id=doc["chat_id"],
            ordinal=doc["ordinal"],
            role=doc["role"],
            content=doc["content"],
            token_count=doc.get("token_count", 0),
            request_id=doc.get("request_id", ""),
            created_ms=ms(doc["created_at"]),
            finish_reason=doc.get("finish_reason", ""),
            model=doc.get("model", ""),
            cache_entry_id=doc.get("cache_entry_id", ""),
            parent_id=doc.get("parent_id") or "",
            tool_calls=tool_calls_of(doc),
            tool_results=tool_results_of(doc),
            cache_score=doc.get("cache_score", 0.0),
            cache_reason=doc.get("cache_reason", ""),
            attachments=tuple(doc.get("attachments") or ()),
            model_content=doc.get("model_content", ""),
            context_notice=doc.get("context_notice", ""),
        )

    def stored(self) -> StoredMessage:
        return StoredMessage(
            self.ordinal,
            self.role,
            self.model_content or self.content,
            self.token_count,
            self.tool_calls,
            self.tool_results,
        )


def tool_calls_of(doc: Doc) -> tuple[ToolCall, ...]:
    """An answer's tool calls, stored as `tool_calls: [{id, name, arguments}]`."""
    return tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in doc.get("tool_calls") or ())


def tool_results_of(doc: Doc) -> tuple[ToolResult, ...]:
    """A tool turn's results, stored as `tool_results: [{tool_call_id, content}]`."""
    return tuple(ToolResult(r["tool_call_id"], r["content"]) for r in doc.get("tool_results") or ())


@dataclass
class LoadedHistory:
    """Messages of a chat, oldest first, and how many older ones (in the range) were not read."""

    messages: list[StoredMessage] = field(default_factory=list)
    older: int = 0
    created_ms: dict[int, int] = field(default_factory=dict)  # by ordinal
    ids: dict[int, str] = field(default_factory=dict)  # by ordinal

    @property
    def complete(self) -> bool:
        return self.older == 0


@dataclass(frozen=True, slots=True)
class OpenedChat:
    """A chat started by a request, and its first question: `question` is None when the chat was
    there already (the request retried) and something else holds ordinal 0."""

    chat: ChatDoc
    question: MessageDoc | None
    created: bool  # the question was stored by this call (False: by an earlier delivery)


@dataclass(frozen=True, slots=True)
class TurnSlot:
    """The ordinal reserved for a next question, with the chat as it is with that question
    counted. `release_turn` gives it back when the question is not stored after all.

    `question_id` is the question's id, chosen before and already the chat's active leaf;
    `parent_id` the message it follows (the leaf before), `awaits_slot` the slot whose answer
    will take the parent's place (the previous answer is not stored yet)."""

    chat: ChatDoc
    ordinal: int
    reserved_at: datetime
    previous_updated_at: datetime
    question_id: str = ""
    parent_id: str | None = None
    awaits_slot: int | None = None
    previous_leaf_slot: int | None = None


GAP = "gap"  # the role of a reserved question never stored, kept where later ones follow it


def _question_doc(message_id: str, chat_id: str, ordinal: int, at: datetime, fields: Doc) -> Doc:
    return {
        "_id": message_id,
        "chat_id": chat_id,
        "ordinal": ordinal,
        "role": "user",
        **fields,
        "created_at": at,
        "finish_reason": "",
    }


def _leaf_moved(question_id: str, *, fork_ordinal: int | None = None) -> Doc:
    """The pipeline stage that makes `question_id` the chat's active leaf, its answer awaited at
    the chat's next slot. With `fork_ordinal` (a new branch from the message at that ordinal), a
    summary of messages past the fork stood for another branch: it is dropped."""
    stage: Doc = {
        "active_leaf": question_id,
        "leaf_slot": {"$ifNull": ["$next_ordinal", 0]},
        "next_ordinal": {"$add": [{"$ifNull": ["$next_ordinal", 0]}, 2]},
    }
    if fork_ordinal is not None:
        stage["summary"] = {
            "$cond": [
                {"$gt": [{"$ifNull": ["$summary.through_ordinal", -1]}, fork_ordinal]},
                "$$REMOVE",
                "$summary",
            ]
        }
    return stage


class ChatStore:
    """A user's chats and their messages; every chat read filters by owner."""

    def __init__(
        self, db: AsyncDatabase[Doc], attachments: AttachmentStore, *, retry: RetryPolicy
    ) -> None:
        self.retry = retry
        self._attachments = attachments
        self._chats = db["chats"]
        self._messages = db["messages"]
        self._feedback = db["feedback"]
        self._regenerations = db["regenerations"]

    async def ensure_indexes(self) -> None:
        await self._chats.create_index(
            [("user_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self._chats.create_index(
            [("user_id", ASCENDING), ("created_by_request", ASCENDING)],
            unique=True,
            partialFilterExpression={"created_by_request": {"$type": "string"}},
        )
        await self._messages.create_index(
            [("chat_id", ASCENDING), ("ordinal", ASCENDING)], unique=True
        )
        await self._messages.create_index(
            [("chat_id", ASCENDING), ("request_id", ASCENDING), ("role", ASCENDING)],
            unique=True,
            partialFilterExpression={"request_id": {"$type": "string"}},
        )
        await self._messages.create_index([("chat_id", ASCENDING), ("parent_id", ASCENDING)])
        # Search: a user's messages and chat titles by text (MongoDB allows one text index a
        # collection); the user id first, so a search never reads another user's entries.
        await self._messages.create_index(
            [("user_id", ASCENDING), ("content", TEXT)], name="search", default_language="english"
        )
        await self._chats.create_index(
            [("user_id", ASCENDING), ("title", TEXT)], name="search", default_language="english"
        )

    # chats

    @retried
    async def find_chat_by_request(self, user_id: str, request_id: str) -> ChatDoc | None:
        doc = await self._chats.find_one({"user_id": user_id, "created_by_request": request_id})
        return None if doc is None else ChatDoc.from_doc(doc)

    @retried
    async def get_chat(self, user_id: str, chat_id: str) -> ChatDoc:
        doc = await self._chats.find_one({"_id": chat_id, "user_id": user_id})
        if doc is None:
            raise ChatNotFoundError(chat_id)
        return ChatDoc.from_doc(doc)

    @retried
    async def list_chats(
        self, user_id: str, *, limit: int, before: tuple[datetime, str] | None
    ) -> list[ChatDoc]:
        query: Doc = {"user_id": user_id}
        if before is not None:
            updated, chat_id = before
            query["$or"] = [
                {"updated_at": {"$lt": updated}},
                {"updated_at": updated, "_id": {"$lt": chat_id}},
            ]
        cursor = self._chats.find(query).sort([("updated_at", DESCENDING), ("_id", DESCENDING)])
        return [ChatDoc.from_doc(d) async for d in cursor.limit(limit)]

    @retried
    async def update_chat(
        self, user_id: str, chat_id: str, *, title: str | None, bot_id: str | None
    ) -> ChatDoc:
        changes: Doc = {"updated_at": now()}
        if title is not None:
            changes["title"] = title
        if bot_id is not None:
            changes["bot_id"] = bot_id
        doc = await self._chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id},
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise ChatNotFoundError(chat_id)
        return ChatDoc.from_doc(doc)

    @retried
    async def delete_chat(self, user_id: str, chat_id: str) -> None:
        """The chat with its messages, the feedback on them and its attachments."""
        if await self._chats.count_documents({"_id": chat_id, "user_id": user_id}, limit=1) == 0:
            raise ChatNotFoundError(chat_id)
        # The chat goes last, so that an interrupted delete, run again, finds it and finishes.
        await self._attachments.delete_for_chat(user_id, chat_id)
        await self._messages.delete_many({"chat_id": chat_id})
        await self._regenerations.delete_many({"chat_id": chat_id})
        await self._feedback.delete_many({"chat_id": chat_id})
        await self._chats.delete_one({"_id": chat_id, "user_id": user_id})

    async def export_chats(self, user_id: str) -> AsyncIterator[tuple[ChatDoc, list[MessageDoc]]]:
        """Each of the user's chats, oldest first, with all its messages (every branch)."""
        chats = self._chats.find({"user_id": user_id}, {"summary_job": 0}).sort("created_at", 1)
        async for doc in chats:
            messages = self._messages.find({"chat_id": doc["_id"], "role": {"$ne": GAP}})
            yield (
                ChatDoc.from_doc(doc),
                [MessageDoc.from_doc(m) async for m in messages.sort("ordinal", ASCENDING)],
            )

    @retried
    async def delete_user_chats(self, user_id: str) -> int:
        """Every chat of the user with its messages, regenerations, feedback and attachments;
        the chats go last, so that an interrupted delete, run again, finds them and finishes."""
        ids = [d["_id"] async for d in self._chats.find({"user_id": user_id}, {"_id": 1})]
        for start in range(0, len(ids), 1000):
            batch = {"chat_id": {"$in": ids[start : start + 1000]}}
            await self._messages.delete_many(batch)
            await self._regenerations.delete_many(batch)
            await self._feedback.delete_many(batch)
        await self._messages.delete_many({"user_id": user_id})
        await self._feedback.delete_many({"user_id": user_id})
        await self._attachments.delete_for_user(user_id)
        deleted = await self._chats.delete_many({"user_id": user_id})
        return int(deleted.deleted_count)

    # a turn's writes

    async def open_chat(
        self,
        user_id: str,
        *,
        bot_id: str,
        title: str,
        request_id: str,
        content: str,
        token_count: int,
    ) -> OpenedChat:
        """Start a chat with its first question, once per request id (`created_by_request`): the
        chat is inserted with that question already counted at ordinal 0, and the question with
        it."""
        at = now()
        question_id = new_id()
        chat_doc: Doc = {
            "_id": new_id(),
            "user_id": user_id,
            "title": title,
            "bot_id": bot_id,
            "created_at": at,
            "updated_at": at,
            "message_count": 1,
            "next_ordinal": 2,
            "active_leaf": question_id,
            "leaf_slot": 0,
            "messages_owned": True,
            "created_by_request": request_id,
        }
        fields = {
            "user_id": user_id,
            "content": content,
            "token_count": token_count,
            "request_id": request_id,
            "parent_id": None,
        }
        return await self._open(chat_doc, _question_doc(question_id, "", 0, at, fields))

    @retried
    async def _open(self, chat_doc: Doc, question_doc: Doc) -> OpenedChat:
        # The chat and its question are written at once, one round trip instead of two: the
        # question names the new chat's id before that chat is there. Readers never see it alone
        # for long (search skips a message whose chat it cannot find), and an account's deletion
        # removes its messages by user.
        chat_written, question_written = await asyncio.gather(
            self._chats.insert_one(chat_doc),
            self._place({**question_doc, "chat_id": chat_doc["_id"]}),
            return_exceptions=True,
        )
        # A duplicate _id is an earlier attempt of this very insert that landed: created too.
        if not isinstance(chat_written, BaseException) or (
            isinstance(chat_written, DuplicateKeyError) and key_pattern(chat_written) == {"_id": 1}
        ):
            if isinstance(question_written, BaseException):
                raise question_written  # the retry policy decides (both writes are safe to repeat)
            question, placed = question_written
            return OpenedChat(ChatDoc.from_doc(chat_doc), question, placed)
        if not isinstance(chat_written, DuplicateKeyError):
            raise chat_written
        # This request started its chat before (a retry, or a concurrent delivery).
        chat = await self._chats.find_one(
            {"user_id": chat_doc["user_id"], "created_by_request": chat_doc["created_by_request"]}
        )
        if chat is None:
            raise chat_written
        # The question written for the chat that was not created goes; it is placed below.
        await self._messages.delete_one({"_id": question_doc["_id"]})
        # Ordinal 0 is the slot the chat was counted with: whichever delivery of the request
        # places its question there first is the one stored.
        question, placed = await self._place({**question_doc, "chat_id": chat["_id"]})
        if placed and question is not None and chat.get("active_leaf") != question.message_id:
            # An earlier delivery created the chat and stopped before its question was stored.
            await self._chats.update_one(
                {"_id": chat["_id"], "active_leaf": chat.get("active_leaf")},
                {"$set": {"active_leaf": question.message_id}},
            )
            chat = {**chat, "active_leaf": question.message_id}
        return OpenedChat(ChatDoc.from_doc(chat), question, placed)

    async def reserve_turn(self, user_id: str, chat_id: str) -> TurnSlot:
        """Reserve the next question's ordinal in the user's chat and count the question. Turn k's
        question has ordinal 2k and its answer 2k + 1, so an answer stored late still sits right
        after its question; turns submitted at once each reserve their own ordinal atomically,
        and each follows the one reserved before it (the chat's active leaf)."""
        return await self._reserve(user_id, chat_id, new_id(), now(), None)

    async def reserve_branch(
        self, user_id: str, chat_id: str, *, parent: MessageDoc | None, awaits_slot: int | None
    ) -> TurnSlot:
        """Reserve a question that follows `parent` (None: a new first question) instead of the
        active leaf: an edit, a new branch that becomes the active one."""
        return await self._reserve(user_id, chat_id, new_id(), now(), (parent, awaits_slot))

    @retried
    async def _reserve(
        self,
        user_id: str,
        chat_id: str,
        question_id: str,
        at: datetime,
        branch: tuple[MessageDoc | None, int | None] | None,
    ) -> TurnSlot:
        fork = None if branch is None else (-1 if branch[0] is None else branch[0].ordinal)
        before = await self._chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id},
            [
                {
                    "$set": {
                        **_leaf_moved(question_id, fork_ordinal=fork),
                        "message_count": {"$add": [{"$ifNull": ["$message_count", 0]}, 1]},
                        "updated_at": at,
                    }
                }
            ],
            projection={"summary_job": 0},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            raise ChatNotFoundError(chat_id)
        after = {
            **before,
            "updated_at": at,
            "message_count": before.get("message_count", 0) + 1,
            "active_leaf": question_id,
        }
        if fork is not None and (before.get("summary") or {}).get("through_ordinal", -1) > fork:
            after.pop("summary", None)
        if branch is None:
            parent_id = before.get("active_leaf")
            awaits = before.get("leaf_slot")
        else:
            parent_id = None if branch[0] is None else branch[0].message_id
            awaits = branch[1]
        return TurnSlot(
            chat=ChatDoc.from_doc(after),
            ordinal=before.get("next_ordinal", 0),
            reserved_at=at,
            previous_updated_at=before["updated_at"],
            question_id=question_id,
            parent_id=parent_id,
            awaits_slot=awaits,
            previous_leaf_slot=before.get("leaf_slot"),
        )

    @retried
    async def release_turn(self, slot: TurnSlot) -> None:
        """Give a reserved question back: uncount it, and leave the ordinal, the chat's time and
        its active leaf as they were unless another turn moved them meanwhile (a gap in the
        ordinals is harmless). When a later question already follows it, a `gap` message takes
        its place in the tree."""
        mine = {"$eq": ["$active_leaf", slot.question_id]}
        before = await self._chats.find_one_and_update(
            {"_id": slot.chat.chat_id},
            [
                {
                    "$set": {
                        "active_leaf": {"$cond": [mine, slot.parent_id, "$active_leaf"]},
                        "leaf_slot": {"$cond": [mine, slot.awaits_slot, "$leaf_slot"]},
                        "message_count": {"$subtract": ["$message_count", 1]},
                        "next_ordinal": {
                            "$cond": [
                                {"$eq": ["$next_ordinal", slot.ordinal + 2]},
                                slot.ordinal,
                                "$next_ordinal",
                            ]
                        },
                        "updated_at": {
                            "$cond": [
                                {"$eq": ["$updated_at", slot.reserved_at]},
                                slot.previous_updated_at,
                                "$updated_at",
                            ]
                        },
                    }
                }
            ],
            projection={"active_leaf": 1},
        )
        if before is None or before.get("active_leaf") == slot.question_id:
            return
        gap = {
            "_id": slot.question_id,
            "chat_id": slot.chat.chat_id,
            "ordinal": slot.ordinal,
            "role": GAP,
            "content": "",
            "parent_id": slot.parent_id,
            "created_at": slot.reserved_at,
        }
        if slot.awaits_slot is not None:
            gap["awaits_slot"] = slot.awaits_slot
        # A duplicate: an earlier attempt of this release, or the question after all.
        with contextlib.suppress(DuplicateKeyError):
            await self._messages.insert_one(gap)

    async def place_question(
        self,
        slot: TurnSlot,
        *,
        content: str,
        token_count: int,
        request_id: str,
        tool_results: tuple[ToolResult, ...] = (),
        attached: Doc | None = None,
    ) -> tuple[MessageDoc, bool]:
        """Store the question in its reserved slot: (it, True), or (the question an earlier or
        concurrent delivery of the request stored, False): then the slot is to be released.
        `tool_results`: a turn that answers the previous answer's tool calls. `attached`: the
        `attachments`, `model_content` and `context_notice` of a question sent with files
        (`token_count` is then model_content's)."""
        fields: Doc = {
            "user_id": slot.chat.user_id,
            "content": content,
            "token_count": token_count,
            "request_id": request_id,
            "parent_id": slot.parent_id,
            **(attached or {}),
        }
        if tool_results:
            fields["tool_results"] = [
                {"tool_call_id": r.tool_call_id, "content": r.content} for r in tool_results
            ]
        if slot.awaits_slot is not None:
            fields["awaits_slot"] = slot.awaits_slot
        doc = _question_doc(
            slot.question_id, slot.chat.chat_id, slot.ordinal, slot.reserved_at, fields
        )
        return await self._place_in_slot(doc)

    @retried
    async def _place_in_slot(self, doc: Doc) -> tuple[MessageDoc, bool]:
        question, placed = await self._place(doc)
        if question is None:
            # Only a slot given back while in use could be held by someone else.
            raise RuntimeError(f"ordinal {doc['ordinal']} of chat {doc['chat_id']} is taken")
        if placed and "awaits_slot" in doc:
            # The awaited answer may have been stored between the reservation and this insert.
            answer = await self._messages.find_one(
                {
                    "chat_id": doc["chat_id"],
                    "parent_id": doc["parent_id"],
                    "ordinal": doc["awaits_slot"] + 1,
                    "role": "assistant",
                },
                {"_id": 1},
            )
            if answer is not None:
                await self._follow_answer(
                    doc["chat_id"], doc["parent_id"], doc["awaits_slot"], answer["_id"]
                )
                question = MessageDoc.from_doc({**doc, "parent_id": answer["_id"]})
        return question, placed

    async def _follow_answer(
        self, chat_id: str, question_id: str, slot: int, answer_id: str
    ) -> None:
        """The messages that awaited the answer at `slot` + 1 follow it now."""
        await self._messages.update_many(
            {"chat_id": chat_id, "parent_id": question_id, "awaits_slot": slot},
            {"$set": {"parent_id": answer_id}, "$unset": {"awaits_slot": ""}},
        )

    async def _place(self, doc: Doc) -> tuple[MessageDoc | None, bool]:
        """Insert a question at its ordinal: (it, True); (the one stored for its request id by an
        earlier or concurrent delivery, False); (None, False) when another request holds the
        ordinal."""
        try:
            await self._messages.insert_one(doc)
        except DuplicateKeyError as exc:
            if key_pattern(exc) == {"_id": 1}:  # an earlier attempt of this very insert
                return MessageDoc.from_doc(doc), True
            winner = await self._messages.find_one(
                {"chat_id": doc["chat_id"], "request_id": doc["request_id"], "role": "user"}
            )
            return (None if winner is None else MessageDoc.from_doc(winner)), False
        return MessageDoc.from_doc(doc), True

    async def append_answer(
        self,
        *,
        chat_id: str,
        question_ordinal: int,
        question_id: str = "",
        user_id: str = "",
        content: str,
        token_count: int,
        request_id: str,
        finish_reason: str,
        model: str = "",
        cache_entry_id: str = "",
        cache_score: float = 0.0,
        cache_reason: str = "",
        worker_id: str = "",
        tool_calls: tuple[ToolCall, ...] = (),
    ) -> bool:
        """Store the answer to the question at `question_ordinal` (or to the question a
        regeneration reserved that slot for), `question_id` when the result names it; False if it
        was already there (a redelivered result: the unique indexes refuse it) or the chat is
        gone. `tool_calls`: the answer is (or ends with) calls for the client to run."""
        doc = {
            "_id": new_id(),
            "chat_id": chat_id,
            "ordinal": question_ordinal + 1,
            "role": "assistant",
            "content": content,
            "token_count": token_count,
            "request_id": request_id,
            "created_at": now(),
            "finish_reason": finish_reason,
            "model": model,
            "cache_entry_id": cache_entry_id,
            "worker_id": worker_id,
        }
        if tool_calls:
            doc["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in tool_calls
            ]
        if cache_entry_id:
            doc |= {"cache_score": cache_score, "cache_reason": cache_reason}
        if user_id:
            doc["user_id"] = user_id
        return await self._append(doc, question_ordinal, question_id)

    async def _question_of_slot(self, chat_id: str, slot: int) -> str | None:
        """The question an answer stored after `slot` answers, for a result that does not name
        it: the one at that ordinal, or the one a regeneration reserved the slot for."""
        question = await self._messages.find_one(
            {"chat_id": chat_id, "ordinal": slot, "role": "user"}, {"_id": 1}
        )
        if question is not None:
            return str(question["_id"])
        regenerated = await self._regenerations.find_one(
            {"chat_id": chat_id, "slot": slot}, {"parent_id": 1}
        )
        return None if regenerated is None else str(regenerated["parent_id"])

    @retried
    async def _append(self, doc: Doc, slot: int, question_id: str) -> bool:
        chat_id = doc["chat_id"]
        parent_id = question_id or await self._question_of_slot(chat_id, slot)
        if parent_id is None:
            log.warning("no question for this answer", extra={"chat_id": chat_id})
            return False
        try:
            await self._messages.insert_one({**doc, "parent_id": parent_id})
        except DuplicateKeyError as exc:
            if key_pattern(exc) != {"_id": 1}:
                return False
        waiting = {"$and": [{"$eq": ["$active_leaf", parent_id]}, {"$eq": ["$leaf_slot", slot]}]}
        before = await self._chats.find_one_and_update(
            {"_id": chat_id},
            [
                {
                    "$set": {
                        "message_count": {"$add": [{"$ifNull": ["$message_count", 0]}, 1]},
                        "updated_at": {"$max": ["$updated_at", doc["created_at"]]},
                        "active_leaf": {"$cond": [waiting, doc["_id"], "$active_leaf"]},
                        "leaf_slot": {"$cond": [waiting, "$$REMOVE", "$leaf_slot"]},
                    }
                }
            ],
            projection={"active_leaf": 1, "leaf_slot": 1, "user_id": 1},
        )
        if before is None:
            # The chat is gone (deleted before or meanwhile): leave nothing behind.
            await self._messages.delete_many({"chat_id": chat_id})
            return False
        if "user_id" not in doc:  # a result that does not name its user: the chat's owner
            await self._messages.update_one(
                {"_id": doc["_id"]}, {"$set": {"user_id": before["user_id"]}}
            )
        if not (before.get("active_leaf") == parent_id and before.get("leaf_slot") == slot):
            # Questions may have been asked after this one meanwhile: they follow this answer.
            await self._follow_answer(chat_id, parent_id, slot, doc["_id"])
        return True
