"""Responses (`/v1/responses`): their objects and their numbered, resumable event streams.

A stored response is a turn of a Parley chat submitted as an asynchronous completion, so its
state lives in the session service and every gateway replica answers for it, also after a
restart. Its stream is a pure function of that state: `response.created` and
`response.in_progress` (sequence numbers 0-1), the message item opened at the first word (2-3),
one `response.output_text.delta` per word of the answer (a word with the spaces before it), the
message item closed, then per function call of the answer its item (added, its arguments' delta
and done, done: the calls come whole with the final answer), then the closing event. Because the words are cut from the text itself, the replica that follows the
generation live and any other that reads the stored answer number the same events the same
way: `starting_after=N` resumes exactly after event N wherever it is asked. Elsewhere than on
the replica that accepted the response, the words come once the answer is stored.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Final

from parley.v1 import session_pb2, types_pb2
from parley_common.vocabulary import CompletionState, FinishReason
from parley_gateway.async_completions import AsyncCompletions
from parley_gateway.auth import Principal
from parley_gateway.errors import ApiError
from parley_gateway.relay import Reset, TextChunk
from parley_gateway.response_schemas import (
    OutputFunctionCall,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from parley_gateway.schemas import TurnAnswer, TurnToolCall
from parley_gateway.turns import Turn

__all__ = [
    "RESPONSE_PREFIX",
    "Observation",
    "Outcome",
    "ResponseMeta",
    "TextSoFar",
    "completion_id_of",
    "event_stream",
    "from_completion",
    "in_flight_status",
    "local_observations",
    "outcome_of_answer",
    "polled_observations",
    "response_object",
    "turn_observations",
    "with_chat",
    "words",
]

RESPONSE_PREFIX: Final = "resp_"
_POLL_S: Final = 0.5
_KEEPALIVE_S: Final = 15.0
_WORD = re.compile(r"\s*\S+")
_ID = re.compile(r"[0-9a-f]{32}")


def completion_id_of(response_id: str) -> str | None:
    """The asynchronous completion behind a response id, or None for an id that is none."""
    completion_id = response_id.removeprefix(RESPONSE_PREFIX)
    if completion_id == response_id or not _ID.fullmatch(completion_id):
        return None
    return completion_id


def words(text: str, *, final: bool) -> list[str]:
    """The deltas of `text`: each word with the whitespace before it. Of a text still growing,
    only the words known to be whole (whitespace after them); of a final text, every one, and
    its trailing whitespace last."""
    found = list(_WORD.finditer(text))
    if not final:
        return [m.group() for m in found if m.end() < len(text)]
    out = [m.group() for m in found]
    end = found[-1].end() if found else 0
    if end < len(text):
        out.append(text[end:])
    return out


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """What a response's object shows besides its answer."""

    response_id: str
    model: str
    created_at: int
    store: bool = True
    background: bool = False
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    chat_id: str | None = None

    @property
    def message_id(self) -> str:
        return "msg_" + self.response_id.removeprefix(RESPONSE_PREFIX)

    def function_call_item_id(self, index: int) -> str:
        return f"fc_{self.response_id.removeprefix(RESPONSE_PREFIX)}_{index}"


@dataclass(frozen=True, slots=True)
class TextSoFar:
    """The answer's text as generated so far (after the last restart of the answer)."""

    text: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """A response's final state."""

    status: ResponseStatus
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: ResponseError | None = None
    tool_calls: tuple[TurnToolCall, ...] = ()


Observation = TextSoFar | Outcome | None  # None: nothing new (a keep-alive is due)


def outcome_of_answer(answer: TurnAnswer) -> Outcome:
    status: ResponseStatus = {"length": "incomplete", "cancelled": "cancelled"}.get(
        answer.finish_reason, "completed"
    )  # type: ignore[assignment]
    if answer.finish_reason in ("error", "expired"):
        return Outcome(
            "failed",
            error=ResponseError(code="server_error", message="the model failed to answer"),
        )
    return Outcome(
        status,
        text=answer.content,
        input_tokens=answer.usage.prompt_tokens,
        output_tokens=answer.usage.completion_tokens,
        tool_calls=tuple(answer.tool_calls),
    )


def _outcome_of_error(error: ApiError) -> Outcome:
    return Outcome(
        "failed", error=ResponseError(code=error.code or error.type, message=error.message)
    )


def from_completion(completion: session_pb2.Completion) -> Outcome | None:
    """The final state of a response's completion; None while it is queued or running."""
    state = CompletionState.from_pb(completion.state)
    if state is CompletionState.FAILED:
        expired = completion.finish_reason == types_pb2.FINISH_REASON_EXPIRED
        return Outcome(
            "failed",
            error=ResponseError(
                code="expired" if expired else "generation_failed",
                message=completion.error or "the response failed",
            ),
        )
    if state not in (CompletionState.DONE, CompletionState.CANCELLED):
        return None
    finish = FinishReason.from_pb(completion.finish_reason) or FinishReason.STOP
    status: ResponseStatus = "completed"
    if state is CompletionState.CANCELLED:
        status = "cancelled"
    elif finish is FinishReason.LENGTH:
        status = "incomplete"
    return Outcome(
        status,
        text=completion.content,
        input_tokens=completion.usage.prompt_tokens,
        output_tokens=completion.usage.completion_tokens,
        tool_calls=tuple(
            TurnToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in completion.tool_calls
        ),
    )


def in_flight_status(completion: session_pb2.Completion) -> ResponseStatus:
    return "queued" if completion.state == session_pb2.COMPLETION_STATE_QUEUED else "in_progress"


def response_object(
    meta: ResponseMeta,
    status: ResponseStatus,
    outcome: Outcome | None = None,
    *,
    text: str | None = None,
) -> ResponseObject:
    """The response as OpenAI shows it: `output` holds the answer once there is one (or `text`,
    the answer so far): its message (unless it is only function calls), then its calls."""
    output: list[OutputMessage | OutputFunctionCall] = []
    body = outcome.text if outcome is not None else text
    calls = outcome.tool_calls if outcome is not None else ()
    if body is not None and status != "failed" and (body or not calls):
        output.append(
            OutputMessage(
                id=meta.message_id,
                status="incomplete" if status in ("incomplete", "cancelled") else "completed",
                content=[OutputText(text=body)],
            )
        )
    if status != "failed":
        output.extend(_function_call(meta, index, call) for index, call in enumerate(calls))
    usage = None
    if outcome is not None and status != "failed":
        usage = ResponseUsage(
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            total_tokens=outcome.input_tokens + outcome.output_tokens,
        )
    return ResponseObject(
        id=meta.response_id,
        created_at=meta.created_at,
        status=status,
        model=meta.model,
        output=output,
        usage=usage,
        error=outcome.error if outcome is not None else None,
        incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
        instructions=meta.instructions,
        previous_response_id=meta.previous_response_id,
        store=meta.store,
        background=meta.background,
        max_output_tokens=meta.max_output_tokens,
        temperature=meta.temperature,
        top_p=meta.top_p,
        tools=list(meta.tools),
        tool_choice=meta.tool_choice or "auto",
        parallel_tool_calls=meta.parallel_tool_calls is not False,
        parley_chat_id=meta.chat_id,
    )


def _function_call(meta: ResponseMeta, index: int, call: TurnToolCall) -> OutputFunctionCall:
    return OutputFunctionCall(
        id=meta.function_call_item_id(index),
        call_id=call.id,
        name=call.name,
        arguments=call.arguments,
    )


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


async def event_stream(
    meta: ResponseMeta,
    observations: AsyncIterator[Observation],
    *,
    starting_after: int = -1,
) -> AsyncIterator[bytes]:
    """The response's events numbered from 0, those after `starting_after` sent."""
    sequence = 0

    def emit(event: dict[str, Any]) -> bytes | None:
        nonlocal sequence
        numbered = {**event, "sequence_number": sequence}
        sequence += 1
        return _sse(numbered) if numbered["sequence_number"] > starting_after else None

    def dump(status: ResponseStatus, outcome: Outcome | None = None) -> dict[str, Any]:
        return response_object(meta, status, outcome).model_dump(mode="json")

    item = {"id": meta.message_id, "type": "message", "role": "assistant"}
    part_of = {"item_id": meta.message_id, "output_index": 0, "content_index": 0}
    message_opening: list[dict[str, Any]] = [
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**item, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            **part_of,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ]
    opening: list[dict[str, Any]] = [
        {"type": "response.created", "response": dump("in_progress")},
        {"type": "response.in_progress", "response": dump("in_progress")},
    ]
    for event in opening:
        if (frame := emit(event)) is not None:
            yield frame
    sent: list[str] = []
    quiet_since = time.monotonic()
    async for observation in observations:
        if observation is None:
            if time.monotonic() - quiet_since >= _KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            continue
        final = isinstance(observation, Outcome)
        if isinstance(observation, Outcome) and observation.status == "failed":
            frame = emit({"type": "response.failed", "response": dump("failed", observation)})
            if frame is not None:
                yield frame
            return
        known = words(observation.text, final=final)
        if known[: len(sent)] != sent[: len(known)] or (final and len(known) < len(sent)):
            # The answer started over (its worker died) and differs from the words sent.
            yield _sse(
                {
                    "type": "error",
                    "code": "answer_restarted",
                    "message": "the answer was generated again differently; "
                    f"GET /v1/responses/{meta.response_id} reads it",
                    "param": None,
                    "sequence_number": sequence,
                }
            )
            return
        for word in known[len(sent) :]:
            if not sent:
                for event in message_opening:
                    if (frame := emit(event)) is not None:
                        yield frame
            sent.append(word)
            frame = emit({"type": "response.output_text.delta", **part_of, "delta": word})
            if frame is not None:
                quiet_since = time.monotonic()
                yield frame
        if isinstance(observation, Outcome):
            outcome = observation
            text = outcome.text
            done_status = "incomplete" if outcome.status != "completed" else "completed"
            closing: list[dict[str, Any]] = []
            if sent or not outcome.tool_calls:  # the message item, as response_object has it
                closing += [] if sent else message_opening
                closing += [
                    {"type": "response.output_text.done", **part_of, "text": text},
                    {
                        "type": "response.content_part.done",
                        **part_of,
                        "part": {"type": "output_text", "text": text, "annotations": []},
                    },
                    {
                        "type": "response.output_item.done",
                        "output_index": 0,
                        "item": {
                            **item,
                            "status": done_status,
                            "content": [{"type": "output_text", "text": text, "annotations": []}],
                        },
                    },
                ]
            first_call = 1 if closing else 0
            for index, call in enumerate(outcome.tool_calls):
                done = _function_call(meta, index, call).model_dump(mode="json")
                of_call = {"item_id": done["id"], "output_index": first_call + index}
                closing += [
                    {
                        "type": "response.output_item.added",
                        "output_index": first_call + index,
                        "item": {**done, "arguments": "", "status": "in_progress"},
                    },
                    {
                        "type": "response.function_call_arguments.delta",
                        **of_call,
                        "delta": call.arguments,
                    },
                    {
                        "type": "response.function_call_arguments.done",
                        **of_call,
                        "arguments": call.arguments,
                    },
                    {
                        "type": "response.output_item.done",
                        "output_index": first_call + index,
                        "item": done,
                    },
                ]
            closing.append(
                {
                    "type": "response.completed"
                    if outcome.status == "completed"
                    else "response.incomplete",
                    "response": dump(outcome.status, outcome),
                }
            )
            for event in closing:
                if (frame := emit(event)) is not None:
                    yield frame
            return


async def turn_observations(turn: Turn) -> AsyncIterator[Observation]:
    """A turn followed directly (a response that is not stored)."""
    text = ""
    try:
        async for event in turn.events():
            if isinstance(event, Reset):
                text = ""
            elif isinstance(event, TextChunk):
                text += event.text
                yield TextSoFar(text)
            else:
                yield outcome_of_answer(event)
                return
    except ApiError as exc:
        yield _outcome_of_error(exc)
    finally:
        await turn.close()


async def local_observations(
    completions: AsyncCompletions, principal: Principal, completion_id: str
) -> AsyncIterator[Observation]:
    """The generation as this replica follows it, then (when this replica does not, or no
    longer does) the stored state."""
    progress = completions.followed(principal.user_id, completion_id)
    if progress is not None:
        seen = 0
        text = ""
        while True:
            changed = progress.changed
            for event in progress.events[seen:]:
                text = "" if isinstance(event, Reset) else text + event.text
            if len(progress.events) > seen:
                seen = len(progress.events)
                yield TextSoFar(text)
            if progress.failed is not None:
                yield _outcome_of_error(progress.failed)
                return
            if progress.answer is not None:
                yield outcome_of_answer(progress.answer)
                return
            try:
                await asyncio.wait_for(changed.wait(), timeout=_KEEPALIVE_S)
            except TimeoutError:
                yield None
    async for observation in polled_observations(completions, principal, completion_id):
        yield observation


async def polled_observations(
    completions: AsyncCompletions, principal: Principal, completion_id: str
) -> AsyncIterator[Observation]:
    """The stored state, read until it is final."""
    while True:
        try:
            current = await completions.get(principal, completion_id)
        except ApiError as exc:
            if exc.status == 404:
                yield Outcome("failed", error=ResponseError(code="not_found", message=exc.message))
                return
            current = None  # the session is briefly away: keep following
        if current is not None and (outcome := from_completion(current)) is not None:
            yield outcome
            return
        yield None
        await asyncio.sleep(_POLL_S)


def with_chat(meta: ResponseMeta, chat_id: str) -> ResponseMeta:
    return replace(meta, chat_id=chat_id or None)
