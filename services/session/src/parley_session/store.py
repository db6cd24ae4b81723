"""MongoDB adapter of the session service (PyMongo's native async API)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_common.ids import new_id
from parley_session.domain import ChatNotFoundError, InvalidArgumentError, StoredMessage

__all__ = ["ApiKey", "ChatDoc", "MessageDoc", "SessionStore", "UserDoc", "hash_api_key"]

Doc = dict[str, Any]

API_KEY_PREFIX = "pk-"


def hash_api_key(api_key: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(api_key.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


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
class ChatDoc:
    chat_id: str
    user_id: str
    title: str
    bot_id: str
    created_ms: int
    updated_ms: int
    message_count: int

    @classmethod
    def from_doc(cls, doc: Doc) -> ChatDoc:
        return cls(
            chat_id=doc["_id"],
            user_id=doc["user_id"],
            title=doc.get("title", ""),
            bot_id=doc.get("bot_id", ""),
            created_ms=_ms(doc["created_at"]),
            updated_ms=_ms(doc["updated_at"]),
            message_count=doc.get("message_count", 0),
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
        )

    def stored(self) -> StoredMessage:
        return StoredMessage(self.ordinal, self.role, self.content, self.token_count)


def _message_doc(
    chat_id: str,
    ordinal: int,
    role: str,
    content: str,
    token_count: int,
    request_id: str,
    finish_reason: str,
    now: datetime,
) -> Doc:
    return {
        "_id": new_id(),
        "chat_id": chat_id,
        "ordinal": ordinal,
        "role": role,
        "content": content,
        "token_count": token_count,
        "request_id": request_id,
        "created_at": now,
        "finish_reason": finish_reason,
    }


class SessionStore:
    """Users, keys, chats and messages. Every chat query is filtered by its owner."""

    def __init__(self, client: AsyncMongoClient[Doc], database: str) -> None:
        self._client = client
        self._db: AsyncDatabase[Doc] = client[database]
        self.users = self._db["users"]
        self.api_keys = self._db["api_keys"]
        self.chats = self._db["chats"]
        self.messages = self._db["messages"]

    async def ensure_indexes(self) -> None:
        await self.api_keys.create_index("key_hash", unique=True)
        await self.api_keys.create_index("user_id")
        # A user's chats by recency (GET /chats), with _id as the tie-breaker of the cursor.
        await self.chats.create_index(
            [("user_id", ASCENDING), ("updated_at", DESCENDING), ("_id", DESCENDING)]
        )
        # A retried "start a chat" request finds the chat it created the first time.
        await self.chats.create_index(
            [("user_id", ASCENDING), ("created_by_request", ASCENDING)],
            unique=True,
            partialFilterExpression={"created_by_request": {"$type": "string"}},
        )
        # A chat's messages in order.
        await self.messages.create_index(
            [("chat_id", ASCENDING), ("ordinal", ASCENDING)], unique=True
        )
        # One user message and one assistant message per request id, whatever is redelivered.
        await self.messages.create_index(
            [("chat_id", ASCENDING), ("request_id", ASCENDING), ("role", ASCENDING)],
            unique=True,
            partialFilterExpression={"request_id": {"$type": "string"}},
        )

    # users and keys

    async def create_user(self, name: str, tenant_id: str = "") -> UserDoc:
        user = UserDoc(user_id=new_id(), name=name, tenant_id=tenant_id)
        await self.users.insert_one(
            {"_id": user.user_id, "name": name, "tenant_id": tenant_id, "created_at": _now()}
        )
        return user

    async def get_user(self, user_id: str) -> UserDoc | None:
        doc = await self.users.find_one({"_id": user_id})
        if doc is None:
            return None
        return UserDoc(doc["_id"], doc.get("name", ""), doc.get("tenant_id", ""))

    async def create_api_key(self, user_id: str, name: str) -> ApiKey:
        if await self.get_user(user_id) is None:
            raise InvalidArgumentError("user_id", f"no user {user_id}")
        key = ApiKey(key_id=new_id(), api_key=API_KEY_PREFIX + secrets.token_urlsafe(32))
        await self.api_keys.insert_one(
            {
                "_id": key.key_id,
                "user_id": user_id,
                "name": name,
                "key_hash": hash_api_key(key.api_key),
                "created_at": _now(),
                "revoked_at": None,
            }
        )
        return key

    async def revoke_api_key(self, key_id: str) -> bool:
        result = await self.api_keys.update_one(
            {"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": _now()}}
        )
        return result.matched_count == 1

    async def authenticate(self, api_key: str) -> UserDoc | None:
        doc = await self.api_keys.find_one({"key_hash": hash_api_key(api_key), "revoked_at": None})
        if doc is None:
            return None
        return await self.get_user(doc["user_id"])

    # chats

    async def create_chat(
        self, user_id: str, *, bot_id: str, title: str, request_id: str
    ) -> ChatDoc:
        now = _now()
        doc: Doc = {
            "_id": new_id(),
            "user_id": user_id,
            "title": title,
            "bot_id": bot_id,
            "created_at": now,
            "updated_at": now,
            "message_count": 0,
            "next_ordinal": 0,
            "created_by_request": request_id,
        }
        try:
            await self.chats.insert_one(doc)
        except DuplicateKeyError:
            existing = await self.chats.find_one(
                {"user_id": user_id, "created_by_request": request_id}
            )
            if existing is None:
                raise
            return ChatDoc.from_doc(existing)
        return ChatDoc.from_doc(doc)

    async def get_chat(self, user_id: str, chat_id: str) -> ChatDoc:
        doc = await self.chats.find_one({"_id": chat_id, "user_id": user_id})
        if doc is None:
            raise ChatNotFoundError(chat_id)
        return ChatDoc.from_doc(doc)

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

    async def delete_chat(self, user_id: str, chat_id: str) -> None:
        result = await self.chats.delete_one({"_id": chat_id, "user_id": user_id})
        if result.deleted_count == 0:
            raise ChatNotFoundError(chat_id)
        await self.messages.delete_many({"chat_id": chat_id})

    # messages

    async def find_message(self, chat_id: str, request_id: str, role: str) -> MessageDoc | None:
        doc = await self.messages.find_one(
            {"chat_id": chat_id, "request_id": request_id, "role": role}
        )
        return None if doc is None else MessageDoc.from_doc(doc)

    async def append_user_message(
        self, *, user_id: str, chat_id: str, content: str, token_count: int, request_id: str
    ) -> MessageDoc:
        """Append the user's turn once per request id. Turn k's question has ordinal 2k and its
        answer 2k + 1, so an answer stored late still sits right after its question."""
        existing = await self.find_message(chat_id, request_id, "user")
        if existing is not None:
            return existing
        now = _now()
        chat = await self.chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id},
            {"$inc": {"next_ordinal": 2, "message_count": 1}, "$set": {"updated_at": now}},
            return_document=ReturnDocument.BEFORE,
            projection={"next_ordinal": 1},
        )
        if chat is None:
            raise ChatNotFoundError(chat_id)
        doc = _message_doc(
            chat_id, chat["next_ordinal"], "user", content, token_count, request_id, "", now
        )
        try:
            await self.messages.insert_one(doc)
        except DuplicateKeyError:
            # A concurrent delivery of the same request won the race; its turn stands, ours is void.
            await self.chats.update_one({"_id": chat_id}, {"$inc": {"message_count": -1}})
            winner = await self.find_message(chat_id, request_id, "user")
            if winner is None:
                raise
            return winner
        return MessageDoc.from_doc(doc)

    async def append_answer(
        self,
        *,
        chat_id: str,
        question_ordinal: int,
        content: str,
        token_count: int,
        request_id: str,
        finish_reason: str,
    ) -> bool:
        """Store the answer to the question at `question_ordinal`; False if it was already there
        (a redelivered result) or the chat is gone."""
        now = _now()
        doc = _message_doc(
            chat_id,
            question_ordinal + 1,
            "assistant",
            content,
            token_count,
            request_id,
            finish_reason,
            now,
        )
        if await self.chats.count_documents({"_id": chat_id}, limit=1) == 0:
            return False
        try:
            await self.messages.insert_one(doc)
        except DuplicateKeyError:
            return False
        await self.chats.update_one(
            {"_id": chat_id}, {"$inc": {"message_count": 1}, "$set": {"updated_at": now}}
        )
        return True

    async def message_at(self, chat_id: str, ordinal: int) -> MessageDoc | None:
        doc = await self.messages.find_one({"chat_id": chat_id, "ordinal": ordinal})
        return None if doc is None else MessageDoc.from_doc(doc)

    async def chat_messages(self, chat_id: str) -> list[MessageDoc]:
        cursor = self.messages.find({"chat_id": chat_id}).sort("ordinal", ASCENDING)
        return [MessageDoc.from_doc(d) async for d in cursor]
