"""Asynchronous completions, stateless (OpenAI-style) completions and the shared rate limits.

- `completions` (MongoDB): one document per asynchronous completion, `_id = "<user>:<request id>"`
  (request ids are chosen by clients, so they are unique per user only). A gateway creates it
  before the request is queued; the results topic moves it to its final state, so any gateway
  replica, or one restarted since, answers for it. Documents expire after `retention_s`.
- `rate_windows` (MongoDB): one document per user and minute with the requests admitted and the
  tokens spent (prompt + completion, added when a result is recorded), expiring a few minutes
  after its minute. The limit is a sliding window: the previous minute's counts weighted by the
  part of it still inside the last 60 s, plus this minute's. An atomic `$inc` per request keeps
  every gateway replica counting against the same numbers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from parley.v1 import envelopes_pb2, session_pb2, types_pb2
from parley_common.vocabulary import CompletionState, CompletionStatePb, FinishReason, Role
from parley_session.domain import InvalidArgumentError, ModelNotFoundError
from parley_session.retry import RetryPolicy
from parley_session.stores import Stores
from parley_session.tokens import TokenCounter

__all__ = [
    "CompletionService",
    "ContextLengthExceededError",
    "QuotaDecision",
    "ResultTracker",
    "quota_decision",
]

log = logging.getLogger(__name__)

Doc = dict[str, Any]
WINDOW_S = 60
MAX_MESSAGES = 1000
MAX_MESSAGE_CHARS = 100_000
_WINDOW_KEEP = timedelta(minutes=3)

_PENDING = [CompletionState.QUEUED.value, CompletionState.RUNNING.value]


class ContextLengthExceededError(InvalidArgumentError):
    """The client's messages and the reply budget do not fit the model's context window."""


def _now() -> datetime:
    return datetime.now(UTC)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


# rate limits


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    allowed: bool
    exceeded: str = ""  # "requests" | "tokens"
    retry_after_s: float = 0.0
    requests_remaining: int = 0
    tokens_remaining: int = 0


def _wait_s(previous: float, current: float, elapsed: float, budget: float) -> float:
    """Seconds until `previous * weight + current <= budget`, where the previous minute's weight
    falls from 1 - elapsed to 0 over the rest of this minute and `current` then becomes the
    previous minute's count in turn."""
    rest = 1.0 - elapsed
    if current <= budget:
        if previous <= 0:
            return 0.0
        return max(0.0, WINDOW_S * (rest - (budget - current) / previous))
    return WINDOW_S * rest + WINDOW_S * (1.0 - max(budget, 0.0) / current)


def quota_decision(
    *,
    previous: tuple[int, int],
    current: tuple[int, int],
    elapsed: float,
    requests_per_minute: int,
    tokens_per_minute: int,
) -> QuotaDecision:
    """Whether a request whose own count is already in `current` (requests, tokens) may go on.

    `elapsed` is the share of the current minute that has passed. A limit of 0 is no limit.
    """
    weight = 1.0 - elapsed
    requests = previous[0] * weight + current[0]
    tokens = previous[1] * weight + current[1]
    requests_left = max(0, math.floor(requests_per_minute - requests)) if requests_per_minute else 0
    tokens_left = max(0, math.floor(tokens_per_minute - tokens)) if tokens_per_minute else 0
    if requests_per_minute and requests > requests_per_minute:
        wait = _wait_s(previous[0], current[0] - 1, elapsed, requests_per_minute - 1)
        return QuotaDecision(False, "requests", wait, 0, tokens_left)
    if tokens_per_minute and tokens >= tokens_per_minute:
        wait = _wait_s(previous[1], current[1], elapsed, tokens_per_minute - 1)
        return QuotaDecision(False, "tokens", wait, requests_left, 0)
    return QuotaDecision(True, "", 0.0, requests_left, tokens_left)


class QuotaStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self._windows = db["rate_windows"]
        self._retry = retry

    async def ensure_indexes(self) -> None:
        await self._retry.run(
            lambda: self._windows.create_index("expires_at", expireAfterSeconds=0),
            "rate_windows indexes",
        )

    @staticmethod
    def _key(user_id: str, minute: int) -> str:
        return f"{user_id}:{minute}"

    def _bump(self, user_id: str, minute: int, inc: Doc) -> Awaitable[Doc | None]:
        expires = datetime.fromtimestamp((minute + 1) * WINDOW_S, UTC) + _WINDOW_KEEP
        return self._windows.find_one_and_update(
            {"_id": self._key(user_id, minute)},
            {"$inc": inc, "$setOnInsert": {"user_id": user_id, "expires_at": expires}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    async def consume(
        self, user_id: str, *, requests_per_minute: int, tokens_per_minute: int
    ) -> QuotaDecision:
        now = time.time()
        minute = int(now // WINDOW_S)
        elapsed = (now % WINDOW_S) / WINDOW_S
        # Not retried: a lost reply of an $inc that landed would count the request twice.
        current, previous = await asyncio.gather(
            self._bump(user_id, minute, {"requests": 1, "tokens": 0}),
            self._windows.find_one({"_id": self._key(user_id, minute - 1)}),
        )
        decision = quota_decision(
            previous=_counts(previous),
            current=_counts(current),
            elapsed=elapsed,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
        if not decision.allowed:
            # A refused request is not one of the minute's requests: undo its count, so that a
            # client retrying too early does not push its own window further out.
            await self._windows.update_one(
                {"_id": self._key(user_id, minute)}, {"$inc": {"requests": -1}}
            )
        return decision

    async def add_tokens(self, user_id: str, tokens: int, at_ms: int) -> None:
        at = at_ms / 1000 if at_ms else time.time()
        if not user_id or tokens <= 0 or time.time() - at > 2 * WINDOW_S:
            return  # a result replayed long after: its minute no longer counts
        await self._retry.run(
            lambda: self._bump(user_id, int(at // WINDOW_S), {"requests": 0, "tokens": tokens}),
            "add_tokens",
        )


def _counts(doc: Doc | None) -> tuple[int, int]:
    if doc is None:
        return 0, 0
    return int(doc.get("requests", 0)), int(doc.get("tokens", 0))


# asynchronous completions


class CompletionStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy, retention_s: float) -> None:
        self._completions = db["completions"]
        self._retry = retry
        self._retention = timedelta(seconds=retention_s)

    async def ensure_indexes(self) -> None:
        await self._retry.run(
            lambda: self._completions.create_index("expires_at", expireAfterSeconds=0),
            "completions indexes",
        )

    @staticmethod
    def _key(user_id: str, completion_id: str) -> str:
        return f"{user_id}:{completion_id}"

    async def create(self, doc: Doc) -> tuple[Doc, bool]:
        """Insert `doc` unless a completion with its id exists; (the stored one, inserted)."""

        async def attempt() -> tuple[Doc, bool]:
            before = await self._completions.find_one_and_update(
                {"_id": doc["_id"]},
                {"$setOnInsert": doc},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
            return (doc, True) if before is None else (before, False)

        return await self._retry.run(attempt, "create_completion")

    def new_doc(
        self,
        *,
        user_id: str,
        completion_id: str,
        chat_id: str,
        message_id: str,
        model: str,
        state: CompletionState = CompletionState.QUEUED,
    ) -> Doc:
        now = _now()
        return {
            "_id": self._key(user_id, completion_id),
            "user_id": user_id,
            "completion_id": completion_id,
            "chat_id": chat_id,
            "message_id": message_id,
            "model": model,
            "state": state.value,
            "content": "",
            "finish_reason": types_pb2.FINISH_REASON_UNSPECIFIED,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "error": "",
            "cached": False,
            "created_at": now,
            "updated_at": now,
            "expires_at": now + self._retention,
        }

    async def get(self, user_id: str, completion_id: str) -> Doc | None:
        return await self._retry.run(
            lambda: self._completions.find_one({"_id": self._key(user_id, completion_id)}),
            "get_completion",
        )

    async def mark_running(self, user_id: str, completion_id: str) -> Doc | None:
        key = self._key(user_id, completion_id)
        await self._retry.run(
            lambda: self._completions.update_one(
                {"_id": key, "state": CompletionState.QUEUED.value},
                {"$set": {"state": CompletionState.RUNNING.value, "updated_at": _now()}},
            ),
            "mark_completion_running",
        )
        return await self.get(user_id, completion_id)

    async def finish(self, result: envelopes_pb2.CompletionResult) -> bool:
        """Apply a result to its completion, if it is one and still pending (redeliveries and
        results of synchronous turns change nothing)."""
        finish = FinishReason.from_pb(result.finish_reason)
        if finish is None or not result.user_id:
            return False
        changes: Doc = {
            "state": CompletionState.after(finish).value,
            "content": result.text,
            "finish_reason": int(result.finish_reason),
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "error": result.error
            or (
                "the deadline passed before a worker could start it"
                if result.finish_reason == types_pb2.FINISH_REASON_EXPIRED
                else ""
            ),
            "cached": result.worker_id == "cache",
            "updated_at": _now(),
        }
        updated = await self._retry.run(
            lambda: self._completions.update_one(
                {
                    "_id": self._key(result.user_id, result.request_id),
                    "state": {"$in": _PENDING},
                },
                {"$set": changes},
            ),
            "finish_completion",
        )
        return updated.modified_count == 1


def _state_pb(stored: str) -> CompletionStatePb:
    state = CompletionState.parse(stored)
    return session_pb2.COMPLETION_STATE_UNSPECIFIED if state is None else state.to_pb()


def completion_pb(doc: Doc) -> session_pb2.Completion:
    return session_pb2.Completion(
        completion_id=doc["completion_id"],
        chat_id=doc.get("chat_id", ""),
        message_id=doc.get("message_id", ""),
        state=_state_pb(doc.get("state", "")),
        content=doc.get("content", ""),
        finish_reason=doc.get("finish_reason", types_pb2.FINISH_REASON_UNSPECIFIED),
        usage=types_pb2.Usage(
            prompt_tokens=doc.get("prompt_tokens", 0),
            completion_tokens=doc.get("completion_tokens", 0),
        ),
        error=doc.get("error", ""),
        created_unix_ms=_ms(doc["created_at"]),
        updated_unix_ms=_ms(doc["updated_at"]),
        cached=doc.get("cached", False),
        model=doc.get("model", ""),
    )


_FINISH_FROM_NAME = {
    "stop": types_pb2.FINISH_REASON_STOP,
    "length": types_pb2.FINISH_REASON_LENGTH,
    "cancelled": types_pb2.FINISH_REASON_CANCELLED,
    "error": types_pb2.FINISH_REASON_ERROR,
}


class CompletionService:
    """What the servicer's completion, model and quota RPCs do (translation and rules)."""

    def __init__(
        self,
        db: AsyncDatabase[Doc],
        *,
        sessions: Stores,
        tokens: TokenCounter,
        model_name: str,
        context_window: int,
        default_max_tokens: int,
        retry: RetryPolicy,
        retention_s: float = 86_400.0,
    ) -> None:
        self.completions = CompletionStore(db, retry=retry, retention_s=retention_s)
        self.quotas = QuotaStore(db, retry=retry)
        self._sessions = sessions
        self._tokens = tokens
        self._model = model_name
        self._window = context_window
        self._default_max_tokens = default_max_tokens
        self._started_ms = int(time.time() * 1000)

    @classmethod
    def for_store(
        cls,
        store: Stores,
        tokens: TokenCounter,
        *,
        model_name: str,
        context_window: int,
        default_max_tokens: int,
        retention_s: float = 86_400.0,
    ) -> CompletionService:
        """The service on the session store's database, under its retry policy."""
        return cls(
            store.db,
            sessions=store,
            tokens=tokens,
            model_name=model_name,
            context_window=context_window,
            default_max_tokens=default_max_tokens,
            retry=store.retry,
            retention_s=retention_s,
        )

    async def ensure_indexes(self) -> None:
        await self.completions.ensure_indexes()
        await self.quotas.ensure_indexes()

    def list_models(self) -> session_pb2.ListModelsResponse:
        return session_pb2.ListModelsResponse(
            models=[
                session_pb2.ModelInfo(
                    model_id=self._model,
                    created_unix_ms=self._started_ms,
                    context_window=self._window,
                )
            ]
        )

    def prepare(
        self, request: session_pb2.PrepareCompletionRequest
    ) -> session_pb2.PrepareCompletionResponse:
        if request.model and request.model != self._model:
            raise ModelNotFoundError(
                f"the model {request.model!r} does not exist; this platform serves {self._model!r}"
            )
        messages = _client_messages(request.messages)
        max_tokens = request.max_tokens or self._default_max_tokens
        if max_tokens >= self._window:
            raise ContextLengthExceededError(
                "max_tokens", f"{max_tokens} does not fit this model's {self._window}-token window"
            )
        prompt_tokens = self._tokens.prompt_tokens(messages)
        if prompt_tokens + max_tokens > self._window:
            raise ContextLengthExceededError(
                "messages",
                f"this model's context window is {self._window} tokens; the messages are "
                f"{prompt_tokens} tokens and {max_tokens} are asked for the reply",
            )
        return session_pb2.PrepareCompletionResponse(
            context=session_pb2.Context(
                messages=[
                    types_pb2.ChatMessage(role=m.role, content=m.content) for m in request.messages
                ],
                prompt_tokens=prompt_tokens,
                policy=session_pb2.HISTORY_POLICY_FULL,
            ),
            model=self._model,
            sampling=types_pb2.SamplingParams(max_tokens=max_tokens),
            cache_scope=types_pb2.CACHE_SCOPE_USER,
        )

    async def create(
        self, request: session_pb2.CreateCompletionRequest
    ) -> session_pb2.CreateCompletionResponse:
        if not request.completion_id or len(request.completion_id) > 128:
            raise InvalidArgumentError("completion_id", "must be 1 to 128 characters")
        doc = self.completions.new_doc(
            user_id=request.user_id,
            completion_id=request.completion_id,
            chat_id=request.chat_id,
            message_id=request.message_id,
            model=request.model,
        )
        if request.chat_id:
            # The turn was answered before (a retry of a synchronous request): done already,
            # and no result will come again to finish it.
            answer = await self._sessions.messages.find_message(
                request.chat_id, request.completion_id, "assistant"
            )
            if answer is not None:
                doc.update(
                    state=CompletionState.DONE,
                    content=answer.content,
                    finish_reason=_FINISH_FROM_NAME.get(
                        answer.finish_reason, types_pb2.FINISH_REASON_STOP
                    ),
                    completion_tokens=answer.token_count,
                )
        stored, created = await self.completions.create(doc)
        return session_pb2.CreateCompletionResponse(
            completion=completion_pb(stored), created=created
        )

    async def get(self, user_id: str, completion_id: str) -> session_pb2.Completion | None:
        doc = await self.completions.get(user_id, completion_id)
        return None if doc is None else completion_pb(doc)

    async def mark_running(self, user_id: str, completion_id: str) -> session_pb2.Completion | None:
        doc = await self.completions.mark_running(user_id, completion_id)
        return None if doc is None else completion_pb(doc)

    async def consume_quota(
        self, request: session_pb2.ConsumeQuotaRequest
    ) -> session_pb2.ConsumeQuotaResponse:
        if not request.user_id:
            raise InvalidArgumentError("user_id", "required")
        if not (request.requests_per_minute or request.tokens_per_minute):
            return session_pb2.ConsumeQuotaResponse(allowed=True)
        decision = await self.quotas.consume(
            request.user_id,
            requests_per_minute=request.requests_per_minute,
            tokens_per_minute=request.tokens_per_minute,
        )
        return session_pb2.ConsumeQuotaResponse(
            allowed=decision.allowed,
            exceeded=decision.exceeded,
            retry_after_ms=math.ceil(decision.retry_after_s * 1000),
            requests_remaining=decision.requests_remaining,
            tokens_remaining=decision.tokens_remaining,
        )


def _client_messages(
    messages: Sequence[types_pb2.ChatMessage],
) -> list[tuple[str, str]]:
    if not messages:
        raise InvalidArgumentError("messages", "at least one message is needed")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgumentError("messages", f"at most {MAX_MESSAGES} messages")
    converted: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role = Role.from_pb(message.role)
        if role is None:
            raise InvalidArgumentError(
                f"messages[{index}].role", "must be system, user or assistant"
            )
        if len(message.content) > MAX_MESSAGE_CHARS:
            raise InvalidArgumentError(
                f"messages[{index}].content", f"longer than {MAX_MESSAGE_CHARS} characters"
            )
        converted.append((role.value, message.content))
    return converted


Handler = Callable[[envelopes_pb2.CompletionResult], Awaitable[None]]


class ResultTracker:
    """The results topic's handler around the chat's own: after the answer is stored in its
    chat, the completion (if the request was asynchronous) is finished and the user's tokens of
    the minute are counted. Stateless results (no chat) only do the latter two."""

    def __init__(self, chats: Handler, service: CompletionService) -> None:
        self._chats = chats
        self._service = service

    async def __call__(self, result: envelopes_pb2.CompletionResult) -> None:
        if result.chat_id:
            await self._chats(result)
        finished = await self._service.completions.finish(result)
        if finished:
            log.info("completion finished", extra={"request_id": result.request_id})
        await self._service.quotas.add_tokens(
            result.user_id,
            result.usage.prompt_tokens + result.usage.completion_tokens,
            result.completed_unix_ms,
        )
