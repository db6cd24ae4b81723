"""Asynchronous completions: submit now, read the answer later, from any gateway replica.

The session service holds each completion's state (created before the request is queued, made
final by the results topic), so `GET /completions/{id}` and its event stream work on every
replica and after a restart. The replica that accepted a completion also follows its chunks as
they are generated and keeps them for a while, so that its event stream shows the text as it
comes and resumes after a reconnect (`Last-Event-ID`) from the next chunk; elsewhere the stream
tells the state and delivers the answer whole when it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from parley.v1 import session_pb2, types_pb2
from parley_common.vocabulary import CompletionState, FinishReason
from parley_gateway.auth import Principal
from parley_gateway.errors import ApiError
from parley_gateway.relay import RESET_MESSAGE, Reset, TextChunk, TextEvent
from parley_gateway.schemas import CompletionError, CompletionOut, TurnAnswer, Usage
from parley_gateway.session_client import SessionClient
from parley_gateway.turns import Turn

__all__ = ["AsyncCompletions", "BeforeQueue", "completion_out"]

log = logging.getLogger(__name__)

BeforeQueue = Callable[[str, str, str], Awaitable[bool]]

FINAL_STATES = frozenset(
    {CompletionState.DONE.value, CompletionState.FAILED.value, CompletionState.CANCELLED.value}
)

_POLL_S = 0.5


def _state_name(state: int) -> str:
    return (CompletionState.from_pb(state) or CompletionState.QUEUED).value


_KEEPALIVE_S = 15.0
_KEEP_FINISHED_S = 120.0
_MAX_FOLLOWED = 10_000


def completion_out(completion: session_pb2.Completion) -> CompletionOut:
    state = _state_name(completion.state)
    answer = None
    if state in ("done", "cancelled"):
        usage = completion.usage
        answer = TurnAnswer(
            content=completion.content,
            finish_reason=(
                FinishReason.from_pb(completion.finish_reason) or FinishReason.STOP
            ).value,
            usage=Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.prompt_tokens + usage.completion_tokens,
            ),
            cached=completion.cached,
            cache_score=completion.cache_score if completion.cached else None,
            cache_reason=(completion.cache_reason or None) if completion.cached else None,
        )
    error = None
    if state == "failed":
        error = CompletionError(
            type="expired"
            if completion.finish_reason == types_pb2.FINISH_REASON_EXPIRED
            else "generation_failed",
            message=completion.error or "the completion failed",
        )
    return CompletionOut(
        completion_id=completion.completion_id,
        chat_id=completion.chat_id,
        message_id=completion.message_id,
        state=state,
        model=completion.model,
        created_at=completion.created_unix_ms,
        updated_at=completion.updated_unix_ms,
        answer=answer,
        error=error,
    )


@dataclass
class _Progress:
    """What this replica saw of a completion it accepted."""

    events: list[TextEvent] = field(default_factory=list)  # their event ids: 0, 1, ...
    answer: TurnAnswer | None = None
    failed: ApiError | None = None
    finished_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def _sse(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class AsyncCompletions:
    def __init__(
        self,
        session: SessionClient,
        *,
        follow_timeout_s: float,
    ) -> None:
        self._session = session
        self._follow_timeout_s = follow_timeout_s
        self._progress: dict[tuple[str, str], _Progress] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        """Stop following (the workers carry on: the answers are recorded by the session)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(
        self,
        principal: Principal,
        request_id: str,
        start: Callable[[BeforeQueue], Awaitable[Turn]],
        *,
        request_params: bytes = b"",
    ) -> session_pb2.Completion:
        """Start a turn with `start`, recording its completion before it is queued (with the
        caller's `request_params`, returned as they are when the completion is read)."""

        async def before_queue(chat_id: str, message_id: str, model: str) -> bool:
            response = await self._session.create_completion(
                session_pb2.CreateCompletionRequest(
                    user_id=principal.user_id,
                    completion_id=request_id,
                    chat_id=chat_id,
                    message_id=message_id,
                    model=model,
                    request_params=request_params,
                )
            )
            recorded.append(response)
            # Not queued again: a completion submitted before with this id (a retry), or one
            # whose turn was answered already.
            proceed = response.created and (
                response.completion.state == session_pb2.COMPLETION_STATE_QUEUED
            )
            proceeding.append(proceed)
            return proceed

        recorded: list[session_pb2.CreateCompletionResponse] = []
        proceeding: list[bool] = []
        turn = await start(before_queue)
        if not recorded:
            raise ApiError(502, "upstream_error", "the turn started without a completion record")
        if proceeding[0]:
            self._follow(principal.user_id, request_id, turn)
        return recorded[0].completion

    def _follow(self, user_id: str, completion_id: str, turn: Turn) -> None:
        self._forget_old()
        progress = _Progress()
        self._progress[(user_id, completion_id)] = progress
        task = asyncio.create_task(
            self._run(user_id, completion_id, turn, progress), name=f"follow-{completion_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, user_id: str, completion_id: str, turn: Turn, progress: _Progress) -> None:
        try:
            async for event in turn.events():
                if isinstance(event, TextChunk | Reset):
                    if not progress.events and turn.queued:
                        self._mark_running(user_id, completion_id)
                    progress.events.append(event)
                else:
                    progress.answer = event
                progress.notify()
        except ApiError as exc:
            progress.failed = exc
        finally:
            progress.finished_at = time.monotonic()
            progress.notify()

    def _mark_running(self, user_id: str, completion_id: str) -> None:
        async def mark() -> None:
            with contextlib.suppress(ApiError):
                await self._session.mark_completion_running(
                    session_pb2.MarkCompletionRunningRequest(
                        user_id=user_id, completion_id=completion_id
                    )
                )

        task = asyncio.create_task(mark())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_old(self) -> None:
        now = time.monotonic()
        for key, progress in list(self._progress.items()):
            if progress.finished_at is not None and now - progress.finished_at > _KEEP_FINISHED_S:
                del self._progress[key]
        while len(self._progress) >= _MAX_FOLLOWED:
            del self._progress[next(iter(self._progress))]

    def followed(self, user_id: str, completion_id: str) -> _Progress | None:
        """What this replica saw of a completion it accepted (None: accepted elsewhere, before a
        restart, or forgotten since)."""
        return self._progress.get((user_id, completion_id))

    async def get(self, principal: Principal, completion_id: str) -> session_pb2.Completion:
        return await self._session.get_completion(
            session_pb2.GetCompletionRequest(user_id=principal.user_id, completion_id=completion_id)
        )

    async def events(
        self, principal: Principal, first: session_pb2.Completion, last_event_id: str | None
    ) -> AsyncIterator[bytes]:
        """The completion's event stream: `state`, then `chunk`s (ids 0, 1, ...; only on the
        replica that accepted it; a `reset` among them voids the chunks before it), then `done`
        (id "done") with the whole completion, or `error`. `last_event_id` skips the chunks
        already received."""
        completion_id = first.completion_id
        state = _state_name(first.state)
        if state in FINAL_STATES:
            yield self._final(first)
            return
        yield _sse("state", {"completion_id": completion_id, "state": state})
        progress = self._progress.get((principal.user_id, completion_id))
        if progress is not None:
            next_chunk = _resume_from(last_event_id)
            deadline = time.monotonic() + self._follow_timeout_s
            while progress.failed is None:
                while next_chunk < len(progress.events):
                    event = progress.events[next_chunk]
                    if isinstance(event, Reset):
                        yield _sse("reset", {"message": RESET_MESSAGE}, str(next_chunk))
                    else:
                        yield _sse("chunk", {"text": event.text}, str(next_chunk))
                    next_chunk += 1
                if progress.answer is not None:
                    break  # its final record comes from the session, like everywhere else
                changed = progress.changed
                try:
                    await asyncio.wait_for(changed.wait(), timeout=_KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                if time.monotonic() > deadline:
                    break
        async for frame in self._poll(principal, completion_id, state):
            yield frame

    async def _poll(
        self, principal: Principal, completion_id: str, state: str
    ) -> AsyncIterator[bytes]:
        deadline = time.monotonic() + self._follow_timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                current = await self.get(principal, completion_id)
            except ApiError as exc:
                if exc.status == 404:
                    yield _sse("error", {"type": "not_found", "message": exc.message})
                    return
                current = None  # the session is briefly away: keep following
            if current is not None:
                now_state = _state_name(current.state)
                if now_state in FINAL_STATES:
                    yield self._final(current)
                    return
                if now_state != state:
                    state = now_state
                    yield _sse("state", {"completion_id": completion_id, "state": state})
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since > _KEEPALIVE_S:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(_POLL_S)
        yield _sse(
            "error",
            {
                "type": "timeout",
                "message": "no answer yet; reconnect to keep following, or poll the completion",
            },
        )

    @staticmethod
    def _final(completion: session_pb2.Completion) -> bytes:
        out = completion_out(completion)
        if out.state == "failed":
            return _sse("error", out.model_dump(mode="json"), "done")
        return _sse("done", out.model_dump(mode="json"), "done")


def _resume_from(last_event_id: str | None) -> int:
    if last_event_id is None:
        return 0
    try:
        return max(0, int(last_event_id) + 1)
    except ValueError:
        return 0
