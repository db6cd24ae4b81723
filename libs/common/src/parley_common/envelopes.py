"""Every Kafka envelope is built and read here: the constructors stamp the schema version that
`decode` checks, so a writer and its readers cannot disagree on it.

    request = completion_request(request_id="r1", chat_id="c1", user_id="u1", model="m", ...)
    decode(envelopes_pb2.CompletionRequest, request.SerializeToString()) == request
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias, TypeVar

from aiokafka import ConsumerRecord
from google.protobuf.message import DecodeError, Message

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.vocabulary import FinishReasonPb

__all__ = [
    "SCHEMA_VERSION",
    "EnvelopeError",
    "cancel_request",
    "completion_request",
    "completion_result",
    "dead_letter",
    "decode",
    "done_chunk",
    "text_chunk",
]

SCHEMA_VERSION = 1

M = TypeVar("M", bound=Message)
KindPb: TypeAlias = envelopes_pb2.CompletionKind.ValueType


class EnvelopeError(ValueError):
    """A message that is not the envelope it should be (or of a schema this build cannot read)."""


def decode(message_type: type[M], value: bytes | None) -> M:
    if value is None:
        raise EnvelopeError("empty message value")
    msg = message_type()
    try:
        msg.ParseFromString(value)
    except DecodeError as exc:
        raise EnvelopeError(f"not a {message_type.__name__}: {exc}") from exc
    version = getattr(msg, "schema_version", None)
    if version != SCHEMA_VERSION:
        raise EnvelopeError(
            f"{message_type.__name__} schema_version {version} is not supported "
            f"(this build reads {SCHEMA_VERSION})"
        )
    return msg


def completion_request(
    *,
    request_id: str,
    chat_id: str,
    user_id: str,
    model: str,
    kind: KindPb,
    messages: Iterable[types_pb2.ChatMessage],
    sampling: types_pb2.SamplingParams,
    deadline_unix_ms: int,
    enqueued_unix_ms: int,
    reply_topic: str = "",
    bot_id: str = "",
    user_message_ordinal: int = 0,
    summary_through_ordinal: int = 0,
    options: types_pb2.GenerationOptions | None = None,
    user_message_id: str = "",
) -> envelopes_pb2.CompletionRequest:
    """A request for the workers (`parley.completions.requests`, key = chat id)."""
    return envelopes_pb2.CompletionRequest(
        schema_version=SCHEMA_VERSION,
        request_id=request_id,
        chat_id=chat_id,
        user_id=user_id,
        model=model,
        kind=kind,
        messages=messages,
        sampling=sampling,
        deadline_unix_ms=deadline_unix_ms,
        enqueued_unix_ms=enqueued_unix_ms,
        reply_topic=reply_topic,
        bot_id=bot_id,
        user_message_ordinal=user_message_ordinal,
        summary_through_ordinal=summary_through_ordinal,
        options=options,
        user_message_id=user_message_id,
    )


def completion_result(
    *,
    request_id: str,
    chat_id: str,
    user_id: str,
    model: str,
    kind: KindPb,
    text: str,
    finish_reason: FinishReasonPb,
    usage: types_pb2.Usage,
    worker_id: str,
    completed_unix_ms: int,
    error: str = "",
    bot_id: str = "",
    user_message_ordinal: int = 0,
    summary_through_ordinal: int = 0,
    user_message_id: str = "",
    cache_entry_id: str = "",
    cache_score: float = 0.0,
    cache_reason: str = "",
    tool_calls: Iterable[types_pb2.ToolCall] = (),
) -> envelopes_pb2.CompletionResult:
    """The durable record of an answer (`parley.completions.results`, key = chat id)."""
    return envelopes_pb2.CompletionResult(
        schema_version=SCHEMA_VERSION,
        request_id=request_id,
        chat_id=chat_id,
        user_id=user_id,
        model=model,
        kind=kind,
        text=text,
        finish_reason=finish_reason,
        usage=usage,
        error=error,
        worker_id=worker_id,
        bot_id=bot_id,
        user_message_ordinal=user_message_ordinal,
        summary_through_ordinal=summary_through_ordinal,
        user_message_id=user_message_id,
        completed_unix_ms=completed_unix_ms,
        cache_entry_id=cache_entry_id,
        cache_score=cache_score,
        cache_reason=cache_reason,
        tool_calls=tool_calls,
    )


def text_chunk(request_id: str, seq: int, text: str) -> envelopes_pb2.CompletionChunk:
    return envelopes_pb2.CompletionChunk(
        schema_version=SCHEMA_VERSION, request_id=request_id, seq=seq, text=text
    )


def done_chunk(
    request_id: str,
    seq: int,
    *,
    finish_reason: FinishReasonPb,
    usage: types_pb2.Usage,
    error: str,
    full_text: str,
    tool_calls: Iterable[types_pb2.ToolCall] = (),
    logprobs: Iterable[types_pb2.TokenLogprob] = (),
    error_param: str = "",
) -> envelopes_pb2.CompletionChunk:
    """The final chunk of a reply stream: how it ended, and the whole text."""
    return envelopes_pb2.CompletionChunk(
        schema_version=SCHEMA_VERSION,
        request_id=request_id,
        seq=seq,
        done=True,
        finish_reason=finish_reason,
        usage=usage,
        error=error,
        full_text=full_text,
        tool_calls=tool_calls,
        logprobs=logprobs,
        error_param=error_param,
    )


def cancel_request(request_id: str, reason: str) -> envelopes_pb2.CancelRequest:
    """Stop generating `request_id` (`parley.completions.control`, read by every worker)."""
    return envelopes_pb2.CancelRequest(
        schema_version=SCHEMA_VERSION, request_id=request_id, reason=reason
    )


def dead_letter(
    record: ConsumerRecord[bytes, bytes], reason: str, *, failed_unix_ms: int
) -> envelopes_pb2.DeadLetter:
    return envelopes_pb2.DeadLetter(
        schema_version=SCHEMA_VERSION,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        reason=reason,
        key=record.key or b"",
        value=record.value or b"",
        failed_unix_ms=failed_unix_ms,
    )
