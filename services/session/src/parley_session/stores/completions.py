"""Asynchronous completions (`completions`): one document per completion, `_id =
"<user>:<request id>"` (request ids are chosen by clients, so they are unique per user only). A
gateway creates it before the request is queued; the results topic moves it to its final state,
so any gateway replica, or one restarted since, answers for it. Documents expire after the
retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from parley_common.vocabulary import CompletionState, FinishReason
from parley_session.domain import ToolCall
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, ms, now, retried
from parley_session.stores.chats import tool_calls_of

__all__ = ["CompletionDoc", "CompletionStore", "FinishedCompletion"]

_PENDING = [CompletionState.QUEUED.value, CompletionState.RUNNING.value]


@dataclass(frozen=True, slots=True)
class CompletionDoc:
    completion_id: str
    chat_id: str
    message_id: str
    model: str
    state: CompletionState | None  # None: a state this build does not know
    content: str = ""
    finish_reason: FinishReason | None = None  # None: not finished
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    cached: bool = False
    cache_score: float = 0.0  # with cached: the cache's decision, for audits
    cache_reason: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    request_params: bytes = b""  # the submitting API's, opaque
    tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def from_doc(cls, doc: Doc) -> CompletionDoc:
        return cls(
            completion_id=doc["completion_id"],
            chat_id=doc.get("chat_id", ""),
            message_id=doc.get("message_id", ""),
            model=doc.get("model", ""),
            state=CompletionState.parse(doc.get("state", "")),
            content=doc.get("content", ""),
            finish_reason=FinishReason.from_pb(doc.get("finish_reason", 0)),
            prompt_tokens=doc.get("prompt_tokens", 0),
            completion_tokens=doc.get("completion_tokens", 0),
            error=doc.get("error", ""),
            cached=doc.get("cached", False),
            cache_score=doc.get("cache_score", 0.0),
            cache_reason=doc.get("cache_reason", ""),
            created_ms=ms(doc["created_at"]),
            updated_ms=ms(doc["updated_at"]),
            request_params=bytes(doc.get("request_params", b"")),
            tool_calls=tool_calls_of(doc),
        )


@dataclass(frozen=True, slots=True)
class FinishedCompletion:
    """What a result sets on its completion."""

    user_id: str
    completion_id: str
    finish_reason: FinishReason
    content: str
    prompt_tokens: int
    completion_tokens: int
    error: str
    cached: bool
    tool_calls: tuple[ToolCall, ...] = ()
    cache_score: float = 0.0
    cache_reason: str = ""


class CompletionStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy, retention_s: float) -> None:
        self.retry = retry
        self._completions = db["completions"]
        self._retention = timedelta(seconds=retention_s)

    @retried
    async def ensure_indexes(self) -> None:
        await self._completions.create_index("expires_at", expireAfterSeconds=0)

    @staticmethod
    def _key(user_id: str, completion_id: str) -> str:
        return f"{user_id}:{completion_id}"

    async def create(self, user_id: str, queued: CompletionDoc) -> tuple[CompletionDoc, bool]:
        """Store `queued` unless the user has a completion with its id; (the stored one,
        whether it was stored by this call)."""
        at = now()
        doc: Doc = {
            "_id": self._key(user_id, queued.completion_id),
            "user_id": user_id,
            "completion_id": queued.completion_id,
            "chat_id": queued.chat_id,
            "message_id": queued.message_id,
            "model": queued.model,
            "state": (queued.state or CompletionState.QUEUED).value,
            "content": queued.content,
            # Stored as its wire number, as the results that finish it carry it.
            "finish_reason": 0 if queued.finish_reason is None else queued.finish_reason.to_pb(),
            "prompt_tokens": queued.prompt_tokens,
            "completion_tokens": queued.completion_tokens,
            "error": "",
            "cached": False,
            "created_at": at,
            "updated_at": at,
            "expires_at": at + self._retention,
        }
        if queued.request_params:
            doc["request_params"] = queued.request_params
        return await self._insert(doc)

    @retried
    async def _insert(self, doc: Doc) -> tuple[CompletionDoc, bool]:
        before = await self._completions.find_one_and_update(
            {"_id": doc["_id"]},
            {"$setOnInsert": doc},
            upsert=True,
            return_document=ReturnDocument.BEFORE,
        )
        return CompletionDoc.from_doc(doc if before is None else before), before is None

    @retried
    async def get(self, user_id: str, completion_id: str) -> CompletionDoc | None:
        doc = await self._completions.find_one({"_id": self._key(user_id, completion_id)})
        return None if doc is None else CompletionDoc.from_doc(doc)

    async def mark_running(self, user_id: str, completion_id: str) -> CompletionDoc | None:
        await self._start(self._key(user_id, completion_id))
        return await self.get(user_id, completion_id)

    @retried
    async def _start(self, key: str) -> None:
        await self._completions.update_one(
            {"_id": key, "state": CompletionState.QUEUED.value},
            {"$set": {"state": CompletionState.RUNNING.value, "updated_at": now()}},
        )

    @retried
    async def finish(self, done: FinishedCompletion) -> bool:
        """Apply a result to its completion if it is still pending (redeliveries change
        nothing); True when applied."""
        changes: Doc = {
            "state": CompletionState.after(done.finish_reason).value,
            "content": done.content,
            "finish_reason": done.finish_reason.to_pb(),
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "error": done.error,
            "cached": done.cached,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in done.tool_calls
            ],
            "cache_score": done.cache_score,
            "cache_reason": done.cache_reason,
            "updated_at": now(),
        }
        updated = await self._completions.update_one(
            {"_id": self._key(done.user_id, done.completion_id), "state": {"$in": _PENDING}},
            {"$set": changes},
        )
        return updated.modified_count == 1
