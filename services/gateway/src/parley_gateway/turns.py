"""One turn: store the question (or take the client's messages), try the cache, else ask a worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from parley.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    envelopes_pb2,
    session_pb2,
    types_pb2,
)
from parley_common.envelopes import cancel_request, completion_request, completion_result
from parley_common.ids import new_id
from parley_common.kafka import Topics
from parley_common.logs import bind_log_fields
from parley_common.timeutil import now_ms
from parley_common.vocabulary import FinishReason, Role
from parley_gateway.admission import RateLimiter
from parley_gateway.auth import Principal
from parley_gateway.errors import ApiError
from parley_gateway.metrics import GatewayMetrics
from parley_gateway.relay import AnswerRelay, Reset, TextChunk, TextEvent
from parley_gateway.replies import ReplyRouter
from parley_gateway.schemas import TurnAnswer, TurnLogprob, TurnToolCall, Usage
from parley_gateway.session_client import SessionClient
from parley_gateway.telemetry import annotate_cache, annotate_turn, observe_turn

__all__ = [
    "Reset",
    "Sampling",
    "TextChunk",
    "Turn",
    "TurnEvent",
    "TurnService",
    "cache_audit_headers",
    "generation_failed",
]

log = logging.getLogger(__name__)

# The producer retries for request_timeout_ms (10 s) while the broker is away; a client waits at
# most this long before a 503. A refused request may still be delivered once the broker is back:
# the client's retry with the same request_id is then answered from what was stored.
QUEUE_WAIT_S = 2.0

# A turn's budget hold outlives its deadline by this much before it is given back unsettled: a
# worker may have started it just before the deadline, or redo it after a crash.
HOLD_GRACE_S = 600.0


# A worker's error is shown to the client; an engine's exception text can be long.
_MAX_ERROR_CHARS = 300

TurnEvent = TextEvent | TurnAnswer


_SMALLEST_TOP_P = 1e-30


@dataclass(frozen=True, slots=True)
class Sampling:
    """A request's own sampling parameters; what is None keeps the bot profile's."""

    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def over(self, base: types_pb2.SamplingParams) -> types_pb2.SamplingParams:
        merged = types_pb2.SamplingParams()
        merged.CopyFrom(base)
        if self.temperature is not None:
            merged.temperature = self.temperature
        if self.top_p is not None:
            # The wire holds a float32: a positive top_p below its range would arrive as 0.
            merged.top_p = max(self.top_p, _SMALLEST_TOP_P)
        if self.stop:
            del merged.stop[:]
            merged.stop.extend(self.stop)
        if self.seed is not None:
            merged.seed = self.seed
        return merged

    @property
    def cacheable(self) -> bool:
        """A stop string cuts the answer and a seed asks for one sample: neither may be answered
        from, or stored in, the semantic cache."""
        return not self.stop and self.seed is None


@dataclass
class Turn:
    """A started turn. Iterate `events()` for its text: `TextChunk`s, a `Reset` when the answer
    starts over (its worker died and another generated it again differently), and last the
    `TurnAnswer`, whose content is the stored answer. A failed generation raises ApiError."""

    chat_id: str
    request_id: str
    message_id: str
    _events: AsyncIterator[TurnEvent]
    model: str = ""
    created_unix_s: int = field(default_factory=lambda: int(time.time()))
    queued: bool = False  # sent to the workers (not a cache hit or a replayed answer)
    # An answer served from the semantic cache: its decision, as response headers for audits.
    audit_headers: dict[str, str] = field(default_factory=dict)
    context_notice: str = ""  # what of the question's attached documents was cut to fit

    def events(self) -> AsyncIterator[TurnEvent]:
        return self._events

    async def close(self) -> None:
        """Stop following the turn; one still being generated is cancelled (unless detached)."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def answer(self) -> TurnAnswer:
        async for event in self._events:
            if isinstance(event, TurnAnswer):
                return event
        raise ApiError(502, "upstream_error", "the worker's stream ended without an answer")


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a turn sends to the cache and the workers, whichever way it was started."""

    request_id: str
    chat_id: str
    message_id: str
    model: str
    context: session_pb2.Context
    sampling: types_pb2.SamplingParams
    cache_scope: types_pb2.CacheScope.ValueType
    tenant_id: str
    bot_id: str = ""
    user_message_ordinal: int = 0
    options: types_pb2.GenerationOptions = field(default_factory=types_pb2.GenerationOptions)
    hold: types_pb2.BudgetHold | None = None  # the tokens reserved against the budgets
    cache_max_error_rate: float = 0.0  # the bot profile's; 0: the cache's CACHE_MAX_ERROR_RATE


class TurnService:
    def __init__(
        self,
        *,
        session: SessionClient,
        cache: cache_pb2_grpc.CacheServiceAsyncStub,
        producer: AIOKafkaProducer,
        replies: ReplyRouter,
        topics: Topics,
        completion_timeout_s: float,
        cache_timeout_s: float,
        metrics: GatewayMetrics | None = None,
        limiter: RateLimiter | None = None,
        cache_sample_share: float = 0.0,
    ) -> None:
        """`cache_sample_share`: the share of cache hits also generated by a worker, and the two
        answers compared by the cache (CompareSampledAnswer); 0: none."""
        self._metrics = metrics or GatewayMetrics(CollectorRegistry())
        self._limiter = limiter
        self._session = session
        self._cache = cache
        self._producer = producer
        self._replies = replies
        self._topics = topics
        self._completion_timeout_s = completion_timeout_s
        self._cache_timeout_s = cache_timeout_s
        self._cache_sample_share = cache_sample_share
        self._background: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Requests of this gateway that a worker has not finished yet."""
        return self._replies.open_streams

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
        sampling: Sampling | None = None,
        detached: bool = False,
        before_queue: Callable[[str, str, str], Awaitable[bool]] | None = None,
        instructions: str | None = None,
        edit_message_id: str = "",
        regenerate_message_id: str = "",
        tool_results: Sequence[types_pb2.ChatMessage] = (),
        options: types_pb2.GenerationOptions | None = None,
        attachment_ids: Sequence[str] = (),
    ) -> Turn:
        """A turn of a stored chat (a new one when `chat_id` is empty); with `edit_message_id`
        that user message asked again as a new branch, with `regenerate_message_id` a new
        answer beside that assistant message; with `tool_results` (and no `message`) the results
        of the tool calls of the chat's last answer; `attachment_ids`: files of the chat sent
        with the question. `options` (tools, response format) go to the workers; a turn with
        options, tool results or attachments skips the semantic cache.

        `instructions`: this turn's system prompt in place of the bot profile's (not stored).

        `detached`: nobody waits on the stream (asynchronous mode), so a follower that stops
        reading does not cancel the generation. `before_queue(chat_id, message_id, model)` runs
        once the question is stored, before the answer is looked up or queued; when it returns
        False the turn goes no further (its events are empty).
        """
        request_id = request_id or new_id()
        bind_log_fields(request_id=request_id)  # from here on, log lines and gRPC calls carry it
        options = options or types_pb2.GenerationOptions()
        cacheable = (
            (sampling or Sampling()).cacheable
            and options == types_pb2.GenerationOptions()
            and not tool_results
            and not attachment_ids
        )
        if cacheable and not no_cache:
            self._prime(message)
        try:
            started = await self._session.start_turn(
                session_pb2.StartTurnRequest(
                    user_id=principal.user_id,
                    chat_id=chat_id,
                    request_id=request_id,
                    content=message,
                    bot_id=bot_id or "",
                    max_tokens=max_tokens or 0,
                    edit_message_id=edit_message_id,
                    regenerate_message_id=regenerate_message_id,
                    tool_results=tool_results,
                    attachment_ids=list(attachment_ids),
                )
            )
        except ApiError as exc:
            if exc.status == 422 and (exc.param or "").startswith("tool_results"):
                # Results that answer no call of the chat's last answer: a bad request.
                raise ApiError(400, exc.type, exc.message, param=exc.param) from None
            raise
        sampling = sampling or Sampling()
        # A conversation with tool calls is keyed by more than its text: not for the cache.
        # A regenerated question keeps its files: not for the cache either.
        cacheable = (
            cacheable
            and not started.user_message.attachments
            and not any(
                m.tool_calls or m.role == types_pb2.ROLE_TOOL for m in started.context.messages
            )
        )
        plan = _Plan(
            request_id=request_id,
            chat_id=started.chat.chat_id,
            message_id=started.user_message.message_id,
            model=started.model,
            context=(
                started.context
                if instructions is None
                else _with_system_prompt(started.context, instructions)
            ),
            sampling=sampling.over(started.sampling),
            cache_scope=started.cache_scope,
            tenant_id=started.tenant_id or principal.tenant_id,
            bot_id=started.chat.bot_id,
            user_message_ordinal=started.answer_slot,
            options=options,
            cache_max_error_rate=started.cache_max_error_rate,
        )
        # The budgets are checked beside the cache lookup (in `_run`), unless something must
        # come between the two: the asynchronous hand-off, the rejection of a served answer.
        reserve_in_run = (
            not started.replayed and before_queue is None and not started.regenerated_cache_entry_id
        )
        if not started.replayed and not reserve_in_run:
            # Before the completion is recorded: a refused turn leaves none queued.
            plan = await self._reserve(principal, plan)
        if before_queue is not None and not await before_queue(
            started.chat.chat_id, started.user_message.message_id, started.model
        ):
            return Turn(
                started.chat.chat_id,
                request_id,
                started.user_message.message_id,
                _empty(),
                model=started.model,
            )
        if started.regenerated_cache_entry_id:
            # Regenerating a served answer rejects it, as a thumbs-down does (parley_cache.tuning).
            self._in_background(
                self._send_reject(principal.user_id, started.regenerated_cache_entry_id)
            )
        if started.replayed:
            stored = _stored_answer(started.existing_answer)
            return Turn(
                started.chat.chat_id,
                request_id,
                started.user_message.message_id,
                _single(stored),
                model=started.model,
                audit_headers=cache_audit_headers(stored),
            )
        turn = await self._run(
            principal,
            plan,
            no_cache=no_cache,
            cacheable=cacheable,
            detached=detached,
            reserve=reserve_in_run,
        )
        turn.context_notice = started.user_message.context_notice
        return turn

    async def start_stateless(
        self,
        principal: Principal,
        *,
        messages: Sequence[tuple[str, str] | types_pb2.ChatMessage],
        model: str,
        max_tokens: int | None,
        sampling: Sampling | None = None,
        no_cache: bool = False,
        options: types_pb2.GenerationOptions | None = None,
    ) -> Turn:
        """A turn on the client's messages (OpenAI style): nothing is stored in a chat.

        `messages` are (role, text) pairs or whole messages (with tool calls and results);
        `options` (tools, response format) go to the workers with them, and a request with any
        is neither looked up in nor stored into the semantic cache."""
        chat = [m if isinstance(m, types_pb2.ChatMessage) else _text_message(*m) for m in messages]
        options = options or types_pb2.GenerationOptions()
        cacheable = (sampling or Sampling()).cacheable and options == types_pb2.GenerationOptions()
        if cacheable and not no_cache and chat and chat[-1].role == types_pb2.ROLE_USER:
            self._prime(chat[-1].content)
        prepared = await self._session.prepare_completion(
            session_pb2.PrepareCompletionRequest(
                user_id=principal.user_id,
                model=model,
                messages=_as_text(chat, options),
                max_tokens=max_tokens or 0,
            )
        )
        # The context is the client's messages (the session counted them as text): sent whole.
        context = session_pb2.Context()
        context.CopyFrom(prepared.context)
        del context.messages[:]
        context.messages.extend(chat)
        sampling = sampling or Sampling()
        plan = _Plan(
            request_id=new_id(),
            chat_id="",
            message_id="",
            model=prepared.model,
            context=context,
            sampling=sampling.over(prepared.sampling),
            cache_scope=prepared.cache_scope,
            tenant_id=prepared.tenant_id or principal.tenant_id,
            options=options,
        )
        return await self._run(
            principal, plan, no_cache=no_cache, cacheable=cacheable, reserve=True
        )

    async def _reserve(self, principal: Principal, plan: _Plan) -> _Plan:
        """Reserve the turn against the budgets before it is looked up or queued: one request
        and the most tokens it may use (its prompt and its reply's cap); 429 when they do not
        fit. The hold travels with the request and is settled from its result."""
        if self._limiter is None:
            return plan
        try:
            hold = await self._limiter.reserve(
                principal,
                tokens=plan.context.prompt_tokens + plan.sampling.max_tokens,
                hold_s=self._completion_timeout_s + HOLD_GRACE_S,
                saved=bool(plan.chat_id),
            )
        except ApiError as exc:
            if exc.status == 429:
                self._metrics.admission_refusals.labels(exc.code or "budget").inc()
            raise
        return replace(plan, hold=hold)

    async def _run(
        self,
        principal: Principal,
        plan: _Plan,
        *,
        no_cache: bool,
        cacheable: bool,
        detached: bool = False,
        reserve: bool = False,
    ) -> Turn:
        """Look the turn up in the cache, and ask a worker on a miss; with `reserve`, the
        budgets are checked beside the lookup (neither waits for the other; a refusal drops
        the lookup)."""
        turn = Turn(plan.chat_id, plan.request_id, plan.message_id, _empty(), model=plan.model)
        annotate_turn(request_id=plan.request_id, chat_id=plan.chat_id, model=plan.model)
        looking = (
            asyncio.ensure_future(self._lookup(principal, plan, bypass=no_cache))
            if cacheable
            else None
        )
        if reserve:
            try:
                plan = await self._reserve(principal, plan)
            except BaseException:
                if looking is not None:
                    looking.cancel()
                raise
        lookup = await looking if looking is not None else None
        annotate_cache(lookup)
        if lookup is not None and lookup.hit:
            await self._record_cached(principal, plan, lookup)
            answer = TurnAnswer(
                content=lookup.answer,
                # An answer cut at max_tokens is served only to the same budget, cut as before.
                finish_reason="length" if lookup.truncated else "stop",
                usage=Usage(
                    prompt_tokens=plan.context.prompt_tokens,
                    completion_tokens=0,
                    total_tokens=plan.context.prompt_tokens,
                ),
                cached=True,
                cache_score=lookup.score,
                cache_reason=lookup.reason or None,
            )
            turn._events = _single(answer)
            turn.audit_headers = cache_audit_headers(answer)
            turn._events = observe_turn(turn._events, self._metrics, source="cache")
            if lookup.entry_id and random.random() < self._cache_sample_share:
                self._in_background(self._compare_sample(plan, lookup.entry_id))
            return turn

        request = self._completion_request(plan, user_id=principal.user_id)
        if lookup is not None and lookup.HasField("key"):
            request.cache_key.CopyFrom(lookup.key)
        if plan.hold is not None:
            request.budget_hold.CopyFrom(plan.hold)
        stream = self._replies.open(plan.request_id)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._topics.requests, request.SerializeToString(), key=_key(plan)
                ),
                QUEUE_WAIT_S,
            )
        except (KafkaError, TimeoutError) as exc:
            self._replies.close(plan.request_id)
            log.warning("could not enqueue a completion", extra={"error": repr(exc)})
            saved = "your message was saved, " if plan.chat_id else ""
            raise ApiError(
                503,
                "service_unavailable",
                f"the completion queue is unavailable; {saved}retry with the same request_id",
                retry_after_s=5,
            ) from exc
        turn._events = self._follow(
            plan.request_id, stream, cancel_on_exit=not detached, stored=bool(plan.chat_id)
        )
        turn._events = observe_turn(turn._events, self._metrics, source="worker")
        turn.queued = True
        return turn

    def _completion_request(
        self, plan: _Plan, *, user_id: str, request_id: str = ""
    ) -> envelopes_pb2.CompletionRequest:
        return completion_request(
            request_id=request_id or plan.request_id,
            chat_id=plan.chat_id if not request_id else "",
            user_id=user_id,
            model=plan.model,
            kind=envelopes_pb2.COMPLETION_KIND_CHAT,
            messages=plan.context.messages,
            sampling=plan.sampling,
            deadline_unix_ms=now_ms() + int(self._completion_timeout_s * 1000),
            enqueued_unix_ms=now_ms(),
            reply_topic=self._replies.topic,
            bot_id=plan.bot_id,
            user_message_ordinal=plan.user_message_ordinal,
            options=plan.options,
            user_message_id=plan.message_id if not request_id else "",
        )

    async def _compare_sample(self, plan: _Plan, entry_id: str) -> None:
        """A sampled hit generated as if it were a miss, and the answer compared with the one
        served. Stored nowhere (no chat, no cache key) and billed to nobody (no user id)."""
        request_id = new_id()
        request = self._completion_request(plan, user_id="", request_id=request_id)
        stream = self._replies.open(request_id)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._topics.requests, request.SerializeToString(), key=request_id.encode()
                ),
                QUEUE_WAIT_S,
            )
        except (KafkaError, TimeoutError) as exc:
            self._replies.close(request_id)
            log.warning("could not enqueue a sampled cache hit", extra={"error": repr(exc)})
            return
        events = self._follow(request_id, stream, cancel_on_exit=True, stored=False)
        try:
            generated = await Turn("", request_id, "", events).answer()
            compared = await self._cache.CompareSampledAnswer(
                cache_pb2.CompareSampledAnswerRequest(
                    entry_id=entry_id, generated_answer=generated.content
                ),
                timeout=self._cache_timeout_s * 4,
            )
        except ApiError as exc:
            log.warning("a sampled cache hit was not generated", extra={"error": exc.message})
            return
        except grpc.aio.AioRpcError as exc:
            log.warning("a sampled cache hit was not compared", extra={"code": exc.code().name})
            return
        log.info(
            "sampled cache hit compared",
            extra={
                "entry_id": entry_id,
                "similarity": compared.similarity,
                "agreed": compared.agreed,
            },
        )

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _prime(self, question: str) -> None:
        """Has the cache embed the question while the session stores it and builds the context:
        the lookup that follows finds its vector ready, or being made, instead of starting it."""
        if not question.strip():
            return
        self._in_background(self._send_prime(question))

    async def _send_prime(self, question: str) -> None:
        # Only a head start: when it fails, the lookup embeds the question anyway.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._cache.Prime(
                cache_pb2.PrimeRequest(question=question), timeout=self._cache_timeout_s
            )

    async def _send_reject(self, user_id: str, entry_id: str) -> None:
        try:
            await self._cache.Evict(
                cache_pb2.EvictRequest(user_id=user_id, entry_id=entry_id),
                timeout=self._cache_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            # The regeneration goes on; the entry only stays served a while longer.
            log.warning("could not reject a regenerated cache hit", extra={"code": exc.code().name})

    async def _lookup(
        self, principal: Principal, plan: _Plan, *, bypass: bool
    ) -> cache_pb2.LookupResponse | None:
        if plan.cache_scope == types_pb2.CACHE_SCOPE_DISABLED:
            return None
        try:
            return await self._cache.Lookup(
                _lookup_request(principal, plan, bypass=bypass), timeout=self._cache_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            # The cache is an optimisation: when it is down or slow, the turn goes to a worker.
            self._metrics.cache_lookup_failures.inc()
            log.warning("cache lookup failed; treating as a miss", extra={"code": exc.code().name})
            return None

    async def _record_cached(
        self, principal: Principal, plan: _Plan, lookup: cache_pb2.LookupResponse
    ) -> None:
        """A cached answer is still the turn's answer: record it like a worker's result."""
        result = _cached_result(principal, plan, lookup)
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._topics.results, result.SerializeToString(), key=_key(plan)
                ),
                QUEUE_WAIT_S,
            )
        except (KafkaError, TimeoutError) as exc:
            raise ApiError(
                503,
                "service_unavailable",
                "the results queue is unavailable; retry",
                retry_after_s=5,
            ) from exc

    async def _follow(
        self,
        request_id: str,
        stream: asyncio.Queue[envelopes_pb2.CompletionChunk],
        *,
        cancel_on_exit: bool,
        stored: bool,
    ) -> AsyncIterator[TurnEvent]:
        deadline = time.monotonic() + self._completion_timeout_s
        relay = AnswerRelay()
        finished = False
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
                if not chunk.done:
                    for event in relay.add(chunk):
                        yield event
                    continue
                finished = True
                if chunk.finish_reason == types_pb2.FINISH_REASON_ERROR and chunk.error_param:
                    # The request's fault (a schema the workers cannot enforce, say).
                    param = chunk.error_param
                    raise ApiError(400, "invalid_request", f"{param}: {chunk.error}", param=param)
                if chunk.finish_reason == types_pb2.FINISH_REASON_ERROR:
                    raise generation_failed(chunk.error, request_id=request_id, stored=stored)
                content, events = relay.finish(chunk)
                for event in events:
                    yield event
                yield _final_answer(content, chunk)
                return
        finally:
            self._replies.close(request_id)
            if not finished and cancel_on_exit:
                # In a task of its own: the follower's task may be in a cancelled scope, where
                # anything it awaits is cancelled again.
                self._in_background(self.cancel(request_id, "client went away"))

    async def cancel(self, request_id: str, reason: str) -> None:
        cancel = cancel_request(request_id, reason)
        try:
            await self._producer.send_and_wait(self._topics.control, cancel.SerializeToString())
        except KafkaError as exc:
            log.warning("could not send a cancel", extra={"error": repr(exc)})


def generation_failed(reason: str, *, request_id: str, stored: bool) -> ApiError:
    """A worker's error answer (its engine failed on the request, again and again), for a client.

    Nothing is stored for it but the question, so the same request id tries it again."""
    reason = " ".join(reason.split()) or "the worker gave no reason"
    if len(reason) > _MAX_ERROR_CHARS:
        reason = reason[: _MAX_ERROR_CHARS - 1] + "…"
    retry = (
        f"your message is saved: send it again with the same request id ({request_id}) to retry"
        if stored
        else "retry the request"
    )
    return ApiError(502, "generation_failed", f"the model could not answer ({reason}); {retry}")


def cache_audit_headers(answer: TurnAnswer) -> dict[str, str]:
    """`X-Parley-Cache-Score` and `-Reason` of an answer served from the cache (none otherwise)."""
    if not answer.cached or answer.cache_score is None:
        return {}
    # The reason is ASCII as parley_cache.policy writes it; a header can hold nothing else.
    reason = (answer.cache_reason or "").encode("ascii", "replace").decode()
    return {"X-Parley-Cache-Score": f"{answer.cache_score:.4f}", "X-Parley-Cache-Reason": reason}


def _stored_answer(answer: session_pb2.Message) -> TurnAnswer:
    """The answer a retried turn had already (its prompt's tokens are not on record)."""
    return TurnAnswer(
        content=answer.content,
        finish_reason=(FinishReason.from_pb(answer.finish_reason) or FinishReason.STOP).value,
        usage=Usage(
            prompt_tokens=0,
            completion_tokens=answer.token_count,
            total_tokens=answer.token_count,
        ),
        tool_calls=_turn_tool_calls(answer.tool_calls),
        cached=answer.cached,
        cache_score=answer.cache_score if answer.cached else None,
        cache_reason=(answer.cache_reason or None) if answer.cached else None,
    )


def _turn_tool_calls(calls: Sequence[types_pb2.ToolCall]) -> list[TurnToolCall]:
    return [TurnToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls]


def _final_answer(content: str, chunk: envelopes_pb2.CompletionChunk) -> TurnAnswer:
    usage = chunk.usage
    return TurnAnswer(
        content=content,
        finish_reason=FinishReason.name_of(chunk.finish_reason),
        usage=Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        ),
        tool_calls=_turn_tool_calls(chunk.tool_calls),
        logprobs=[
            TurnLogprob(
                token=t.token,
                logprob=t.logprob,
                top=[(a.token, a.logprob) for a in t.top_logprobs],
            )
            for t in chunk.logprobs
        ]
        or None,
    )


def _text_message(role: str, content: str) -> types_pb2.ChatMessage:
    return types_pb2.ChatMessage(role=Role(role).to_pb(), content=content)


def _as_text(
    messages: Sequence[types_pb2.ChatMessage], options: types_pb2.GenerationOptions
) -> list[types_pb2.ChatMessage]:
    """The messages as the session counts them: tool calls and tool definitions as JSON text,
    about what a chat template makes of them."""
    counted = []
    if options.tools:
        tools = [
            {"name": t.name, "description": t.description, "parameters": t.parameters_json}
            for t in options.tools
        ]
        counted.append(_text_message("system", json.dumps(tools)))
    for message in messages:
        calls = [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls]
        text = message.content + (json.dumps(calls) if calls else "")
        counted.append(types_pb2.ChatMessage(role=message.role, content=text))
    return counted


def _lookup_request(principal: Principal, plan: _Plan, *, bypass: bool) -> cache_pb2.LookupRequest:
    return cache_pb2.LookupRequest(
        user_id=principal.user_id,
        tenant_id=plan.tenant_id,
        bot_id=plan.bot_id,
        model=plan.model,
        scope=plan.cache_scope,
        messages=plan.context.messages,
        bypass=bypass,
        max_tokens=plan.sampling.max_tokens,
        # Above the cache's CACHE_MAX_TEMPERATURE a stored answer is not served.
        temperature=plan.sampling.temperature,
        max_error_rate=plan.cache_max_error_rate,
    )


def _cached_result(
    principal: Principal, plan: _Plan, lookup: cache_pb2.LookupResponse
) -> envelopes_pb2.CompletionResult:
    result = completion_result(
        request_id=plan.request_id,
        chat_id=plan.chat_id,
        user_id=principal.user_id,
        model=plan.model,
        kind=envelopes_pb2.COMPLETION_KIND_CHAT,
        text=lookup.answer,
        finish_reason=(
            types_pb2.FINISH_REASON_LENGTH if lookup.truncated else types_pb2.FINISH_REASON_STOP
        ),
        usage=types_pb2.Usage(prompt_tokens=plan.context.prompt_tokens),
        worker_id="cache",
        bot_id=plan.bot_id,
        user_message_ordinal=plan.user_message_ordinal,
        user_message_id=plan.message_id,
        completed_unix_ms=now_ms(),
        cache_entry_id=lookup.entry_id,
        cache_score=lookup.score,
        cache_reason=lookup.reason,
    )
    if plan.hold is not None:
        result.budget_hold.CopyFrom(plan.hold)  # settled to nothing: no model ran
    return result


def _with_system_prompt(context: session_pb2.Context, prompt: str) -> session_pb2.Context:
    replaced = session_pb2.Context()
    replaced.CopyFrom(context)
    turns = [m for m in context.messages if m.role != types_pb2.ROLE_SYSTEM]
    del replaced.messages[:]
    replaced.messages.append(types_pb2.ChatMessage(role=types_pb2.ROLE_SYSTEM, content=prompt))
    replaced.messages.extend(turns)
    return replaced


def _key(plan: _Plan) -> bytes:
    # A chat's turns share a partition (in order); a stateless request has no chat to order by.
    return (plan.chat_id or plan.request_id).encode()


async def _single(answer: TurnAnswer) -> AsyncIterator[TurnEvent]:
    yield TextChunk(answer.content)
    yield answer


async def _empty() -> AsyncIterator[TurnEvent]:
    return
    yield  # pragma: no cover - makes this an async generator
