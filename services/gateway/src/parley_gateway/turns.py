"""One chat turn: store the question, build the context, try the cache, else ask a worker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from parley.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    envelopes_pb2,
    session_pb2,
    session_pb2_grpc,
    types_pb2,
)
from parley_common.ids import new_id
from parley_common.kafka import SCHEMA_VERSION, Topics
from parley_common.timeutil import now_ms
from parley_gateway.auth import Principal
from parley_gateway.errors import ApiError, from_grpc
from parley_gateway.replies import ReplyRouter
from parley_gateway.schemas import TurnAnswer, Usage

__all__ = ["TextChunk", "Turn", "TurnService"]

log = logging.getLogger(__name__)

FINISH_NAMES = {
    types_pb2.FINISH_REASON_STOP: "stop",
    types_pb2.FINISH_REASON_LENGTH: "length",
    types_pb2.FINISH_REASON_CANCELLED: "cancelled",
    types_pb2.FINISH_REASON_ERROR: "error",
    types_pb2.FINISH_REASON_EXPIRED: "expired",
}


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass
class Turn:
    """A started turn. Iterate `events()` for its text chunks and, last, the TurnAnswer."""

    chat_id: str
    request_id: str
    message_id: str
    _events: AsyncIterator[TextChunk | TurnAnswer]

    def events(self) -> AsyncIterator[TextChunk | TurnAnswer]:
        return self._events

    async def answer(self) -> TurnAnswer:
        async for event in self._events:
            if isinstance(event, TurnAnswer):
                return event
        raise ApiError(502, "upstream_error", "the worker's stream ended without an answer")


class TurnService:
    def __init__(
        self,
        *,
        session: session_pb2_grpc.SessionServiceAsyncStub,
        cache: cache_pb2_grpc.CacheServiceAsyncStub,
        producer: AIOKafkaProducer,
        replies: ReplyRouter,
        topics: Topics,
        completion_timeout_s: float,
        cache_timeout_s: float,
        grpc_timeout_s: float,
    ) -> None:
        self._session = session
        self._cache = cache
        self._producer = producer
        self._replies = replies
        self._topics = topics
        self._completion_timeout_s = completion_timeout_s
        self._cache_timeout_s = cache_timeout_s
        self._grpc_timeout_s = grpc_timeout_s

    async def start(
        self,
        principal: Principal,
        *,
        chat_id: str,
        message: str,
        request_id: str | None,
        max_tokens: int | None,
        bot_id: str | None = None,
        no_cache: bool = False,
    ) -> Turn:
        request_id = request_id or new_id()
        try:
            started = await self._session.StartTurn(
                session_pb2.StartTurnRequest(
                    user_id=principal.user_id,
                    chat_id=chat_id,
                    request_id=request_id,
                    content=message,
                    bot_id=bot_id or "",
                    max_tokens=max_tokens or 0,
                ),
                timeout=self._grpc_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, "session") from exc
        chat_id = started.chat.chat_id
        base = Turn(chat_id, request_id, started.user_message.message_id, _empty())
        if started.replayed:
            answer = started.existing_answer
            base._events = _single(
                TurnAnswer(
                    content=answer.content,
                    finish_reason=FINISH_NAMES.get(answer.finish_reason, "stop"),
                    usage=Usage(
                        prompt_tokens=0,
                        completion_tokens=answer.token_count,
                        total_tokens=answer.token_count,
                    ),
                )
            )
            return base

        lookup = await self._lookup(principal, started, bypass=no_cache)
        if lookup is not None and lookup.hit:
            await self._record_cached(principal, started, request_id, lookup)
            base._events = _single(
                TurnAnswer(
                    content=lookup.answer,
                    finish_reason="stop",
                    usage=Usage(
                        prompt_tokens=started.context.prompt_tokens,
                        completion_tokens=0,
                        total_tokens=started.context.prompt_tokens,
                    ),
                    cached=True,
                    cache_score=lookup.score,
                )
            )
            return base

        request = envelopes_pb2.CompletionRequest(
            schema_version=SCHEMA_VERSION,
            request_id=request_id,
            chat_id=chat_id,
            user_id=principal.user_id,
            model=started.model,
            kind=envelopes_pb2.COMPLETION_KIND_CHAT,
            messages=started.context.messages,
            sampling=started.sampling,
            deadline_unix_ms=now_ms() + int(self._completion_timeout_s * 1000),
            enqueued_unix_ms=now_ms(),
            reply_topic=self._replies.topic,
            bot_id=started.chat.bot_id,
            user_message_ordinal=started.user_message.ordinal,
        )
        if lookup is not None and lookup.HasField("key"):
            request.cache_key.CopyFrom(lookup.key)
        stream = self._replies.open(request_id)
        try:
            await self._producer.send_and_wait(
                self._topics.requests, request.SerializeToString(), key=chat_id.encode()
            )
        except KafkaError as exc:
            self._replies.close(request_id)
            log.warning("could not enqueue a completion", extra={"error": repr(exc)})
            raise ApiError(
                503,
                "service_unavailable",
                "the completion queue is unavailable; your message was saved, retry with the same request_id",
                retry_after_s=5,
            ) from exc
        base._events = self._follow(request_id, stream)
        return base

    async def _lookup(
        self, principal: Principal, started: session_pb2.StartTurnResponse, *, bypass: bool
    ) -> cache_pb2.LookupResponse | None:
        if started.cache_scope == types_pb2.CACHE_SCOPE_DISABLED:
            return None
        try:
            return await self._cache.Lookup(
                cache_pb2.LookupRequest(
                    user_id=principal.user_id,
                    tenant_id=started.tenant_id or principal.tenant_id,
                    bot_id=started.chat.bot_id,
                    model=started.model,
                    scope=started.cache_scope,
                    messages=started.context.messages,
                    bypass=bypass,
                    max_tokens=started.sampling.max_tokens,
                ),
                timeout=self._cache_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            # The cache is an optimisation: when it is down or slow, the turn goes to a worker.
            log.warning("cache lookup failed; treating as a miss", extra={"code": exc.code().name})
            return None

    async def _record_cached(
        self,
        principal: Principal,
        started: session_pb2.StartTurnResponse,
        request_id: str,
        lookup: cache_pb2.LookupResponse,
    ) -> None:
        """A cached answer is still the chat's answer: record it like a worker's result."""
        result = envelopes_pb2.CompletionResult(
            schema_version=SCHEMA_VERSION,
            request_id=request_id,
            chat_id=started.chat.chat_id,
            user_id=principal.user_id,
            model=started.model,
            kind=envelopes_pb2.COMPLETION_KIND_CHAT,
            text=lookup.answer,
            finish_reason=types_pb2.FINISH_REASON_STOP,
            usage=types_pb2.Usage(prompt_tokens=started.context.prompt_tokens),
            worker_id="cache",
            bot_id=started.chat.bot_id,
            user_message_ordinal=started.user_message.ordinal,
            completed_unix_ms=now_ms(),
        )
        try:
            await self._producer.send_and_wait(
                self._topics.results, result.SerializeToString(), key=started.chat.chat_id.encode()
            )
        except KafkaError as exc:
            raise ApiError(
                503,
                "service_unavailable",
                "the results queue is unavailable; retry",
                retry_after_s=5,
            ) from exc

    async def _follow(
        self, request_id: str, stream: asyncio.Queue[envelopes_pb2.CompletionChunk]
    ) -> AsyncIterator[TextChunk | TurnAnswer]:
        deadline = time.monotonic() + self._completion_timeout_s
        next_seq = 0
        finished = False
        text: list[str] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ApiError(
                        504,
                        "timeout",
                        "no answer within the deadline; the answer will be stored with the chat when it arrives",
                    )
                try:
                    chunk = await asyncio.wait_for(stream.get(), timeout=remaining)
                except TimeoutError:
                    continue
                if chunk.done:
                    finished = True
                    usage = chunk.usage
                    yield TurnAnswer(
                        content="".join(text),
                        finish_reason=FINISH_NAMES.get(chunk.finish_reason, "error"),
                        usage=Usage(
                            prompt_tokens=usage.prompt_tokens,
                            completion_tokens=usage.completion_tokens,
                            total_tokens=usage.prompt_tokens + usage.completion_tokens,
                        ),
                    )
                    return
                if chunk.seq < next_seq:
                    continue  # a redelivered request re-sends what was already relayed
                next_seq = chunk.seq + 1
                text.append(chunk.text)
                yield TextChunk(chunk.text)
        finally:
            self._replies.close(request_id)
            if not finished:
                await self.cancel(request_id, "client went away")

    async def cancel(self, request_id: str, reason: str) -> None:
        cancel = envelopes_pb2.CancelRequest(
            schema_version=SCHEMA_VERSION, request_id=request_id, reason=reason
        )
        try:
            await self._producer.send(self._topics.control, cancel.SerializeToString())
        except KafkaError as exc:
            log.warning("could not send a cancel", extra={"error": repr(exc)})


async def _single(answer: TurnAnswer) -> AsyncIterator[TextChunk | TurnAnswer]:
    yield TextChunk(answer.content)
    yield answer


async def _empty() -> AsyncIterator[TextChunk | TurnAnswer]:
    return
    yield  # pragma: no cover - makes this an async generator
