"""MongoDB adapter of the session service (PyMongo's native async API).

Collections and the queries their indexes serve:

- `users`, `api_keys` (`key_hash` unique: authentication);
- `chats`: a user's chats by recency (`user_id, updated_at, _id`), a retried "start a chat" finds
  its chat (`user_id, created_by_request` unique); the running summary lives in the chat;
- `messages`: a chat's messages in order (`chat_id, ordinal` unique; the context is read newest
  first from it), one user and one assistant message per request id (`chat_id, request_id, role`
  unique);
- `bots`: the profiles a user sees (`owner_user_id, deleted_at, created_at`);
- `feedback`: one per message and user (`message_id, user_id` unique), by time
  (`updated_at, _id`) and per bot profile (`bot_id, updated_at, _id`).

Every public method runs under the service's one `RetryPolicy` and is safe to run again after a
transient failure: ids are chosen before the first attempt and unique indexes turn a repeated
write into a no-op. A chat's `message_count` is a counter moved by the write that adds (or gives
back) a message, not a recount: PyMongo's retryable writes apply such a write once even when its
reply is lost. A write redone by the policy after a lost reply, or a turn cut off by an outage
between reserving its ordinal and storing its question, can leave the count off by one: it is
shown to people, nothing depends on it.

A turn costs few round trips: a new chat is inserted with its first question already counted
(two inserts); a next question reserves its ordinal, counts itself and reads the chat (summary
included) in one findAndModify, then one insert; its answer is one insert and one update.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_common.ids import new_id
from parley_session.domain import (
    BotNotFoundError,
    BotProfile,
    ChatNotFoundError,
    HistoryParams,
    HistoryPolicy,
    InvalidArgumentError,
    StoredMessage,
)
from parley_session.retry import RetryPolicy

__all__ = [
    "ApiKey",
    "ChatDoc",
    "FeedbackDoc",
    "MessageDoc",
    "OpenedChat",
    "SessionStore",
    "SummaryDoc",
    "SummaryJob",
    "TurnSlot",
    "UserDoc",
    "hash_api_key",
]

Doc = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")

API_KEY_PREFIX = "pk-"


def hash_api_key(api_key: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(api_key.encode()).hexdigest()


def _now() -> datetime:
    """Now, to the millisecond: what MongoDB stores, so that a stored time compares equal."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _key_pattern(exc: DuplicateKeyError) -> Any:
    return (exc.details or {}).get("keyPattern")


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _retried(
    method: Callable[Concatenate[SessionStore, P], Awaitable[T]],
) -> Callable[Concatenate[SessionStore, P], Awaitable[T]]:
    """Run a store method under the store's retry policy (it must be safe to run again)."""

    async def wrapper(self: SessionStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.retry.run(lambda: method(self, *args, **kwargs), method.__name__)

    return functools.update_wrapper(wrapper, method)


@dataclass(frozen=True, slots=True)
class UserDoc:
    user_id: str
    name: str
    tenant_id: str


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    api_key: str


@dataclass(frozen=True, slots=True)
class SummaryDoc:
    text: str
    through_ordinal: int
    token_count: int


@dataclass(frozen=True, slots=True)
class SummaryJob:
    request_id: str
    attempts: int


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

    @classmethod
    def from_doc(cls, doc: Doc) -> ChatDoc:
        summary = doc.get("summary")
        return cls(
            chat_id=doc["_id"],
            user_id=doc["user_id"],
            title=doc.get("title", ""),
            bot_id=doc.get("bot_id", ""),
            created_ms=_ms(doc["created_at"]),
            updated_ms=_ms(doc["updated_at"]),
            message_count=doc.get("message_count", 0),
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
            created_ms=_ms(doc["created_at"]),
            finish_reason=doc.get("finish_reason", ""),
            model=doc.get("model", ""),
            cache_entry_id=doc.get("cache_entry_id", ""),
        )

    def stored(self) -> StoredMessage:
        return StoredMessage(self.ordinal, self.role, self.content, self.token_count)


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
            created_ms=_ms(doc["created_at"]),
            updated_ms=_ms(doc["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class FeedbackQuery:
    bot_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[datetime, str] | None = None  # the cursor: strictly older than this


def bot_from_doc(doc: Doc) -> BotProfile:
    sampling = doc.get("sampling", {})
    history = doc.get("history", {})
    return BotProfile(
        bot_id=doc["_id"],
        name=doc["name"],
        system_prompt=doc.get("system_prompt", ""),
        model=doc.get("model", ""),
        history_policy=HistoryPolicy(doc.get("history_policy", HistoryPolicy.TRUNCATE.value)),
        max_tokens=sampling.get("max_tokens", 0),
        temperature=sampling.get("temperature"),
        top_p=sampling.get("top_p"),
        cache_scope=doc.get("cache_scope", "user"),
        avatar=doc.get("avatar", ""),
        description=doc.get("description", ""),
        history=HistoryParams(**history),
        owner_user_id=doc.get("owner_user_id", ""),
        created_ms=_ms(doc["created_at"]),
        updated_ms=_ms(doc["updated_at"]),
    )


def bot_fields(bot: BotProfile) -> Doc:
    """The stored form of a profile's editable fields."""
    sampling: Doc = {"max_tokens": bot.max_tokens}
    if bot.temperature is not None:
        sampling["temperature"] = bot.temperature
    if bot.top_p is not None:
        sampling["top_p"] = bot.top_p
    return {
        "name": bot.name,
        "avatar": bot.avatar,
        "description": bot.description,
        "system_prompt": bot.system_prompt,
        "model": bot.model,
        "sampling": sampling,
        "history_policy": bot.history_policy.value,
        "history": {
            "summarize_at": bot.history.summarize_at,
            "keep_recent": bot.history.keep_recent,
            "summary_max_tokens": bot.history.summary_max_tokens,
        },
        "cache_scope": bot.cache_scope,
    }


@dataclass
class LoadedHistory:
    """Messages of a chat, oldest first, and how many older ones (in the range) were not read."""

    messages: list[StoredMessage] = field(default_factory=list)
    older: int = 0
    created_ms: dict[int, int] = field(default_factory=dict)  # by ordinal

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
    counted. `release_turn` gives it back when the question is not stored after all."""

    chat: ChatDoc
    ordinal: int
    reserved_at: datetime
    previous_updated_at: datetime


class SessionStore:
    """Users, keys, chats, messages, bot profiles and feedback. Chat reads filter by owner."""

    def __init__(
        self, client: AsyncMongoClient[Doc], database: str, *, retry: RetryPolicy | None = None
    ) -> None:
        self._client = client
        self._db: AsyncDatabase[Doc] = client[database]
        self.retry = retry or RetryPolicy()
        self.users = self._db["users"]
        self.api_keys = self._db["api_keys"]
        self.chats = self._db["chats"]
        self.messages = self._db["messages"]
        self.bots = self._db["bots"]
        self.feedback = self._db["feedback"]

    @_retried
    async def ensure_indexes(self) -> None:
        await self.api_keys.create_index("key_hash", unique=True)
        await self.api_keys.create_index("user_id")
        await self.chats.create_index(
            [("user_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.chats.create_index(
            [("user_id", ASCENDING), ("created_by_request", ASCENDING)],
            unique=True,
            partialFilterExpression={"created_by_request": {"$type": "string"}},
        )
        await self.messages.create_index(
            [("chat_id", ASCENDING), ("ordinal", ASCENDING)], unique=True
        )
        await self.messages.create_index(
            [("chat_id", ASCENDING), ("request_id", ASCENDING), ("role", ASCENDING)],
            unique=True,
            partialFilterExpression={"request_id": {"$type": "string"}},
        )
        await self.bots.create_index(
            [("owner_user_id", ASCENDING), ("deleted_at", ASCENDING), ("created_at", ASCENDING)]
        )
        await self.feedback.create_index(
            [("message_id", ASCENDING), ("user_id", ASCENDING)], unique=True
        )
        await self.feedback.create_index([("updated_at", DESCENDING), ("_id", DESCENDING)])
        await self.feedback.create_index(
            [("bot_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.feedback.create_index("chat_id")

    @_retried
    async def ping(self) -> None:
        await self._db.command("ping")

    async def _insert_new(self, collection: AsyncCollection[Doc], doc: Doc) -> None:
        """Insert a document whose _id is fresh. A duplicate _id can only be an earlier attempt
        of this same insert that landed before its reply was lost: that is success."""
        try:
            await collection.insert_one(doc)
        except DuplicateKeyError as exc:
            if _key_pattern(exc) != {"_id": 1}:
                raise

    # users and keys

    async def create_user(self, name: str, tenant_id: str = "") -> UserDoc:
        user = UserDoc(user_id=new_id(), name=name, tenant_id=tenant_id)
        doc = {"_id": user.user_id, "name": name, "tenant_id": tenant_id, "created_at": _now()}
        await self.retry.run(lambda: self._insert_new(self.users, doc), "create_user")
        return user

    @_retried
    async def get_user(self, user_id: str) -> UserDoc | None:
        doc = await self.users.find_one({"_id": user_id})
        if doc is None:
            return None
        return UserDoc(doc["_id"], doc.get("name", ""), doc.get("tenant_id", ""))

    async def create_api_key(self, user_id: str, name: str) -> ApiKey:
        if await self.get_user(user_id) is None:
            raise InvalidArgumentError("user_id", f"no user {user_id}")
        key = ApiKey(key_id=new_id(), api_key=API_KEY_PREFIX + secrets.token_urlsafe(32))
        doc = {
            "_id": key.key_id,
            "user_id": user_id,
            "name": name,
            "key_hash": hash_api_key(key.api_key),
            "created_at": _now(),
            "revoked_at": None,
        }
        await self.retry.run(lambda: self._insert_new(self.api_keys, doc), "create_api_key")
        return key

    @_retried
    async def revoke_api_key(self, key_id: str) -> bool:
        result = await self.api_keys.update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": _now()}}
        )
        return result.matched_count == 1

    @_retried
    async def authenticate(self, api_key: str) -> UserDoc | None:
        doc = await self.api_keys.find_one({"key_hash": hash_api_key(api_key), "revoked_at": None})
        if doc is None:
            return None
        user = await self.users.find_one({"_id": doc["user_id"]})
        if user is None:
            return None
        return UserDoc(user["_id"], user.get("name", ""), user.get("tenant_id", ""))

    # chats

    @_retried
    async def find_chat_by_request(self, user_id: str, request_id: str) -> ChatDoc | None:
        doc = await self.chats.find_one({"user_id": user_id, "created_by_request": request_id})
        return None if doc is None else ChatDoc.from_doc(doc)

    @_retried
    async def get_chat(self, user_id: str, chat_id: str) -> ChatDoc:
        doc = await self.chats.find_one({"_id": chat_id, "user_id": user_id})
        if doc is None:
            raise ChatNotFoundError(chat_id)
        return ChatDoc.from_doc(doc)

    @_retried
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
        cursor = self.chats.find(query).sort([("updated_at", DESCENDING), ("_id", DESCENDING)])
        return [ChatDoc.from_doc(d) async for d in cursor.limit(limit)]

    @_retried
    async def update_chat(
        self, user_id: str, chat_id: str, *, title: str | None, bot_id: str | None
    ) -> ChatDoc:
        changes: Doc = {"updated_at": _now()}
        if title is not None:
            changes["title"] = title
        if bot_id is not None:
            changes["bot_id"] = bot_id
        doc = await self.chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id},
            {"$set": changes},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise ChatNotFoundError(chat_id)
        return ChatDoc.from_doc(doc)

    @_retried
    async def delete_chat(self, user_id: str, chat_id: str) -> None:
        if await self.chats.count_documents({"_id": chat_id, "user_id": user_id}, limit=1) == 0:
            raise ChatNotFoundError(chat_id)
        # The chat goes last, so that an interrupted delete, run again, finds it and finishes.
        await self.messages.delete_many({"chat_id": chat_id})
        await self.feedback.delete_many({"chat_id": chat_id})
        await self.chats.delete_one({"_id": chat_id, "user_id": user_id})

    # messages

    @_retried
    async def find_message(self, chat_id: str, request_id: str, role: str) -> MessageDoc | None:
        doc = await self.messages.find_one(
            {"chat_id": chat_id, "request_id": request_id, "role": role}
        )
        return None if doc is None else MessageDoc.from_doc(doc)

    @_retried
    async def get_message(self, chat_id: str, message_id: str) -> MessageDoc | None:
        doc = await self.messages.find_one({"_id": message_id, "chat_id": chat_id})
        return None if doc is None else MessageDoc.from_doc(doc)

    def _question_doc(
        self, message_id: str, chat_id: str, ordinal: int, now: datetime, fields: Doc
    ) -> Doc:
        return {
            "_id": message_id,
            "chat_id": chat_id,
            "ordinal": ordinal,
            "role": "user",
            **fields,
            "created_at": now,
            "finish_reason": "",
        }

    async def _place_question(self, doc: Doc) -> tuple[MessageDoc | None, bool]:
        """Insert a question at its ordinal: (it, True); (the one stored for its request id by an
        earlier or concurrent delivery, False); (None, False) when another request holds the
        ordinal."""
        try:
            await self.messages.insert_one(doc)
        except DuplicateKeyError as exc:
            if _key_pattern(exc) == {"_id": 1}:  # an earlier attempt of this very insert
                return MessageDoc.from_doc(doc), True
            winner = await self.messages.find_one(
                {"chat_id": doc["chat_id"], "request_id": doc["request_id"], "role": "user"}
            )
            return (None if winner is None else MessageDoc.from_doc(winner)), False
        return MessageDoc.from_doc(doc), True

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
        chat is inserted with that question already counted at ordinal 0, then the question."""
        now = _now()
        chat_doc: Doc = {
            "_id": new_id(),
            "user_id": user_id,
            "title": title,
            "bot_id": bot_id,
            "created_at": now,
            "updated_at": now,
            "message_count": 1,
            "next_ordinal": 2,
            "created_by_request": request_id,
        }
        message_id = new_id()
        fields = {"content": content, "token_count": token_count, "request_id": request_id}

        async def attempt() -> OpenedChat:
            chat = chat_doc
            try:
                await self.chats.insert_one(chat_doc)
            except DuplicateKeyError as exc:
                if _key_pattern(exc) != {"_id": 1}:
                    # This request started its chat before (a retry, or a concurrent delivery).
                    found = await self.chats.find_one(
                        {"user_id": user_id, "created_by_request": request_id}
                    )
                    if found is None:
                        raise
                    chat = found
            # Ordinal 0 is the slot the chat was counted with: whichever delivery of the request
            # places its question there first is the one stored.
            question, placed = await self._place_question(
                self._question_doc(message_id, chat["_id"], 0, now, fields)
            )
            return OpenedChat(ChatDoc.from_doc(chat), question, placed)

        return await self.retry.run(attempt, "open_chat")

    @_retried
    async def reserve_turn(self, user_id: str, chat_id: str) -> TurnSlot:
        """Reserve the next question's ordinal in the user's chat and count the question. Turn k's
        question has ordinal 2k and its answer 2k + 1, so an answer stored late still sits right
        after its question; turns submitted at once each reserve their own ordinal atomically."""
        now = _now()
        before = await self.chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id},
            {"$inc": {"next_ordinal": 2, "message_count": 1}, "$set": {"updated_at": now}},
            projection={"summary_job": 0},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            raise ChatNotFoundError(chat_id)
        after = {**before, "updated_at": now, "message_count": before.get("message_count", 0) + 1}
        return TurnSlot(
            chat=ChatDoc.from_doc(after),
            ordinal=before.get("next_ordinal", 0),
            reserved_at=now,
            previous_updated_at=before["updated_at"],
        )

    @_retried
    async def release_turn(self, slot: TurnSlot) -> None:
        """Give a reserved question back: uncount it, and leave the ordinal and the chat's time as
        they were unless another turn moved them meanwhile (a gap in the ordinals is harmless)."""
        await self.chats.update_one(
            {"_id": slot.chat.chat_id},
            [
                {
                    "$set": {
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
        )

    async def place_question(
        self, slot: TurnSlot, *, content: str, token_count: int, request_id: str
    ) -> tuple[MessageDoc, bool]:
        """Store the question in its reserved slot: (it, True), or (the question an earlier or
        concurrent delivery of the request stored, False): then the slot is to be released."""
        doc = self._question_doc(
            new_id(),
            slot.chat.chat_id,
            slot.ordinal,
            slot.reserved_at,
            {"content": content, "token_count": token_count, "request_id": request_id},
        )

        async def attempt() -> tuple[MessageDoc, bool]:
            question, placed = await self._place_question(doc)
            if question is None:
                # Only a slot given back while in use could be held by someone else.
                raise RuntimeError(f"ordinal {slot.ordinal} of chat {slot.chat.chat_id} is taken")
            return question, placed

        return await self.retry.run(attempt, "place_question")

    async def append_answer(
        self,
        *,
        chat_id: str,
        question_ordinal: int,
        content: str,
        token_count: int,
        request_id: str,
        finish_reason: str,
        model: str = "",
        cache_entry_id: str = "",
        worker_id: str = "",
    ) -> bool:
        """Store the answer to the question at `question_ordinal`; False if it was already there
        (a redelivered result: the unique indexes refuse it) or the chat is gone."""
        now = _now()
        doc = {
            "_id": new_id(),
            "chat_id": chat_id,
            "ordinal": question_ordinal + 1,
            "role": "assistant",
            "content": content,
            "token_count": token_count,
            "request_id": request_id,
            "created_at": now,
            "finish_reason": finish_reason,
            "model": model,
            "cache_entry_id": cache_entry_id,
            "worker_id": worker_id,
        }

        async def attempt() -> bool:
            try:
                await self.messages.insert_one(doc)
            except DuplicateKeyError as exc:
                if _key_pattern(exc) != {"_id": 1}:
                    return False
            counted = await self.chats.update_one(
                {"_id": chat_id}, {"$inc": {"message_count": 1}, "$max": {"updated_at": now}}
            )
            if counted.matched_count == 0:
                # The chat is gone (deleted before or meanwhile): leave nothing behind.
                await self.messages.delete_many({"chat_id": chat_id})
                return False
            return True

        return await self.retry.run(attempt, "append_answer")

    @_retried
    async def message_at(self, chat_id: str, ordinal: int) -> MessageDoc | None:
        doc = await self.messages.find_one({"chat_id": chat_id, "ordinal": ordinal})
        return None if doc is None else MessageDoc.from_doc(doc)

    @_retried
    async def chat_messages(self, chat_id: str) -> list[MessageDoc]:
        cursor = self.messages.find({"chat_id": chat_id}).sort("ordinal", ASCENDING)
        return [MessageDoc.from_doc(d) async for d in cursor]

    @_retried
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
            created[doc["ordinal"]] = _ms(doc["created_at"])
            return _stored(doc)

        if budget is None or cost is None:
            cursor = self.messages.find(query, projection).sort("ordinal", ASCENDING)
            return LoadedHistory([stored(d) async for d in cursor], 0, created)
        newest_first: list[StoredMessage] = []
        spent = 0
        over = False
        cut = False
        # A message costs at least a few tokens of template: one batch holds what can fit.
        batch = min(max(budget // 8, 32), 2000)
        cursor = self.messages.find(query, projection).sort("ordinal", DESCENDING)
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
            older = await self.messages.count_documents(
                {"chat_id": chat_id, "ordinal": {"$gt": after, "$lt": newest_first[-1].ordinal}}
            )
        return LoadedHistory(newest_first[::-1], older, created)

    # summaries

    @_retried
    async def claim_summary_job(
        self, chat_id: str, *, now: datetime, stale_before: datetime
    ) -> SummaryJob | None:
        """Take the chat's summary job unless one is in flight (and not stale) or waiting out
        its backoff; at most one summary request per chat is outstanding."""
        request_id = f"summary-{new_id()}"
        doc = await self.chats.find_one_and_update(
            {
                "_id": chat_id,
                "$or": [
                    {"summary_job": None},
                    {"summary_job.state": "failed", "summary_job.retry_at": {"$lte": now}},
                    {
                        "summary_job.state": "pending",
                        "summary_job.requested_at": {"$lte": stale_before},
                    },
                ],
            },
            [
                {
                    "$set": {
                        "summary_job": {
                            "request_id": request_id,
                            "state": "pending",
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

    @_retried
    async def fail_summary_job(self, chat_id: str, request_id: str, retry_at: datetime) -> bool:
        result = await self.chats.update_one(
            {"_id": chat_id, "summary_job.request_id": request_id},
            {"$set": {"summary_job.state": "failed", "summary_job.retry_at": retry_at}},
        )
        return result.modified_count == 1

    @_retried
    async def release_summary_job(self, chat_id: str, request_id: str) -> None:
        await self.chats.update_one(
            {"_id": chat_id, "summary_job.request_id": request_id}, {"$unset": {"summary_job": ""}}
        )

    @_retried
    async def store_summary(
        self, chat_id: str, *, request_id: str, text: str, through_ordinal: int, token_count: int
    ) -> bool:
        """Keep the summary unless the chat already has one that covers more (a late or repeated
        result changes nothing); True when stored."""
        result = await self.chats.update_one(
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
                        "created_at": _now(),
                    }
                }
            },
        )
        await self.chats.update_one(
            {"_id": chat_id, "summary_job.request_id": request_id}, {"$unset": {"summary_job": ""}}
        )
        return result.modified_count == 1

    @_retried
    async def summary_job(self, chat_id: str) -> Doc | None:
        doc = await self.chats.find_one({"_id": chat_id}, {"summary_job": 1})
        return None if doc is None else doc.get("summary_job")

    # bot profiles

    @_retried
    async def list_bots(self, user_id: str | None) -> list[BotProfile]:
        """Shared profiles, then the user's own (None: shared ones only)."""
        owners = [""] if user_id is None else ["", user_id]
        cursor = self.bots.find({"owner_user_id": {"$in": owners}, "deleted_at": None}).sort(
            [("owner_user_id", ASCENDING), ("created_at", ASCENDING)]
        )
        return [bot_from_doc(d) async for d in cursor]

    @_retried
    async def count_bots(self, user_id: str) -> int:
        return await self.bots.count_documents({"owner_user_id": user_id, "deleted_at": None})

    @_retried
    async def get_bot(
        self, bot_id: str, *, visible_to: str | None, include_deleted: bool
    ) -> BotProfile:
        """A profile by id. `visible_to`: only one shared or owned by this user (None: any)."""
        query: Doc = {"_id": bot_id}
        if visible_to is not None:
            query["owner_user_id"] = {"$in": ["", visible_to]}
        if not include_deleted:
            query["deleted_at"] = None
        doc = await self.bots.find_one(query)
        if doc is None:
            raise BotNotFoundError(bot_id)
        return bot_from_doc(doc)

    async def create_bot(self, bot: BotProfile) -> BotProfile:
        now = _now()
        bot_id = new_id()
        doc = {
            "_id": bot_id,
            "owner_user_id": bot.owner_user_id,
            **bot_fields(bot),
            "created_at": now,
            "updated_at": now,
            "deleted_at": None,
        }
        await self.retry.run(lambda: self._insert_new(self.bots, doc), "create_bot")
        return bot_from_doc(doc)

    @_retried
    async def replace_bot(self, bot: BotProfile) -> BotProfile:
        doc = await self.bots.find_one_and_update(
            {"_id": bot.bot_id, "owner_user_id": bot.owner_user_id, "deleted_at": None},
            {"$set": {**bot_fields(bot), "updated_at": _now()}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise BotNotFoundError(bot.bot_id)
        return bot_from_doc(doc)

    @_retried
    async def delete_bot(self, bot_id: str, owner_user_id: str) -> None:
        """Soft delete: chats started with the profile keep using it; nobody can pick it again."""
        result = await self.bots.update_one(
            {"_id": bot_id, "owner_user_id": owner_user_id, "deleted_at": None},
            {"$set": {"deleted_at": _now()}},
        )
        if result.matched_count == 0:
            raise BotNotFoundError(bot_id)

    # feedback

    @_retried
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
        now = _now()
        update = {
            "$set": {
                "rating": rating,
                "comment": comment,
                "tags": list(tags),
                "updated_at": now,
                "bot_id": chat.bot_id,
            },
            "$setOnInsert": {
                "_id": new_id(),
                "chat_id": chat.chat_id,
                "request_id": message.request_id,
                "cache_entry_id": message.cache_entry_id,
                "model": message.model,
                "created_at": now,
            },
        }
        key = {"message_id": message.message_id, "user_id": user_id}
        try:
            doc = await self.feedback.find_one_and_update(
                key, update, upsert=True, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            # Two upserts of the same feedback at once: the second one updates the first.
            doc = await self.feedback.find_one_and_update(
                key, update, return_document=ReturnDocument.AFTER
            )
        assert doc is not None
        return FeedbackDoc.from_doc(doc)

    @_retried
    async def list_feedback(self, query: FeedbackQuery, *, limit: int) -> list[FeedbackDoc]:
        page = await self._feedback_page(query, limit)
        return await self._with_texts(page)

    async def export_feedback(
        self, query: FeedbackQuery, *, batch: int = 200
    ) -> AsyncIterator[FeedbackDoc]:
        """Every matching feedback, most recent first, with its question and answer."""
        while True:
            page = await self.retry.run(
                functools.partial(self._feedback_page, query, batch), "export_feedback"
            )
            if not page:
                return
            for item in await self.retry.run(
                functools.partial(self._with_texts, page), "export_feedback"
            ):
                yield item
            last = page[-1]
            query = FeedbackQuery(
                query.bot_id, query.since, query.until, (from_ms(last.updated_ms), last.feedback_id)
            )
            if len(page) < batch:
                return

    async def _feedback_page(self, query: FeedbackQuery, limit: int) -> list[FeedbackDoc]:
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
            self.feedback.find(filters)
            .sort([("updated_at", DESCENDING), ("_id", DESCENDING)])
            .limit(limit)
        )
        # Milliseconds are what the cursor carries; MongoDB keeps them, so none is skipped.
        return [FeedbackDoc.from_doc(d) async for d in cursor]

    async def _with_texts(self, page: list[FeedbackDoc]) -> list[FeedbackDoc]:
        """Attach each answer and the question it replied to (for review and retraining)."""
        if not page:
            return page
        answers = {
            d["_id"]: d
            async for d in self.messages.find(
                {"_id": {"$in": [f.message_id for f in page]}},
                {"chat_id": 1, "ordinal": 1, "content": 1},
            )
        }
        wanted = [{"chat_id": a["chat_id"], "ordinal": a["ordinal"] - 1} for a in answers.values()]
        questions: dict[tuple[str, int], str] = {}
        if wanted:
            async for d in self.messages.find(
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


def _stored(doc: Doc) -> StoredMessage:
    return StoredMessage(doc["ordinal"], doc["role"], doc["content"], doc.get("token_count", 0))
