"""From the Kafka envelopes to the engine's terms and back (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from parley.v1 import envelopes_pb2, types_pb2
from parley_common import envelopes
from parley_common.vocabulary import FinishReason, FinishReasonPb, Role
from parley_worker.engines.base import (
    ChatMessage,
    GenerationOptions,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TokenLogprob,
    Tool,
    ToolCall,
)

__all__ = [
    "Outcome",
    "done_chunk",
    "finish_name",
    "finish_reason",
    "generation_request",
    "result_envelope",
]

# What an engine may end a generation with; the other reasons are the worker's to give.
_ENGINE_ENDINGS = frozenset(
    {FinishReason.STOP, FinishReason.LENGTH, FinishReason.TOOL_CALLS, FinishReason.CANCELLED}
)
_TOOL_CHOICES = {
    types_pb2.TOOL_CHOICE_UNSPECIFIED: "auto",
    types_pb2.TOOL_CHOICE_AUTO: "auto",
    types_pb2.TOOL_CHOICE_NONE: "none",
    types_pb2.TOOL_CHOICE_REQUIRED: "required",
    types_pb2.TOOL_CHOICE_FUNCTION: "function",
}
_FORMATS = {
    types_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED: "text",
    types_pb2.RESPONSE_FORMAT_TYPE_TEXT: "text",
    types_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    types_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a request ended: what the results topic and the final chunk say."""

    finish: FinishReasonPb
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    timings: envelopes_pb2.Timings | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    error_param: str = ""  # an error that is the request's fault: the parameter at fault


def generation_request(request: envelopes_pb2.CompletionRequest) -> GenerationRequest:
    """The engine's request; ValueError (with a message for the user) when it cannot be one."""
    if not request.messages:
        raise ValueError("the request has no messages")
    messages = []
    for message in request.messages:
        role = Role.from_pb(message.role)
        if role is None:
            raise ValueError(f"message role {message.role} is not system, user, assistant or tool")
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in message.tool_calls)
        images = tuple(ImagePart(i.media_type, i.data) for i in message.images)
        messages.append(
            ChatMessage(role.value, message.content, calls, message.tool_call_id, images)
        )
    return GenerationRequest(
        request_id=request.request_id,
        messages=tuple(messages),
        sampling=_sampling(request.sampling),
        options=generation_options(request.options),
    )


def generation_options(pb: types_pb2.GenerationOptions) -> GenerationOptions:
    """The engine's options; ValueError when a schema on the wire is not JSON."""
    fmt = pb.response_format
    return GenerationOptions(
        tools=tuple(
            Tool(t.name, t.description, _json_object(t.parameters_json, f"tool {t.name!r}"))
            for t in pb.tools
        ),
        tool_choice=_TOOL_CHOICES.get(pb.tool_choice, "auto"),
        tool_choice_function=pb.tool_choice_function,
        parallel_tool_calls=pb.parallel_tool_calls if pb.HasField("parallel_tool_calls") else True,
        response_format=_FORMATS.get(fmt.type, "text"),
        json_schema=(
            _json_object(fmt.schema_json, "response_format")
            if fmt.type == types_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
            else None
        ),
        logprobs=pb.logprobs,
        top_logprobs=pb.top_logprobs,
        presence_penalty=pb.presence_penalty,
        frequency_penalty=pb.frequency_penalty,
        logit_bias=dict(pb.logit_bias),
    )


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the schema of {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"the schema of {what} is not a JSON object")
    return value


def finish_reason(engine_reason: str) -> FinishReasonPb:
    """The wire value of an engine's finish reason (an unknown one is an engine bug)."""
    reason = FinishReason.parse(engine_reason)
    if reason is None or reason not in _ENGINE_ENDINGS:
        raise RuntimeError(f"the engine ended with an unknown finish reason {engine_reason!r}")
    return reason.to_pb()


def finish_name(finish: FinishReasonPb) -> str:
    """How metrics, logs and traces name a finish reason."""
    return FinishReason.name_of(finish)


def result_envelope(
    request: envelopes_pb2.CompletionRequest, outcome: Outcome, *, worker_id: str, now_ms: int
) -> envelopes_pb2.CompletionResult:
    result = envelopes.completion_result(
        request_id=request.request_id,
        chat_id=request.chat_id,
        user_id=request.user_id,
        model=request.model,
        kind=request.kind,
        text=outcome.text,
        finish_reason=outcome.finish,
        usage=_usage(outcome),
        error=outcome.error,
        worker_id=worker_id,
        bot_id=request.bot_id,
        user_message_ordinal=request.user_message_ordinal,
        user_message_id=request.user_message_id,
        summary_through_ordinal=request.summary_through_ordinal,
        completed_unix_ms=now_ms,
        tool_calls=_tool_calls_pb(outcome),
    )
    if outcome.timings is not None:
        result.timings.CopyFrom(outcome.timings)
    if request.HasField("budget_hold"):
        result.budget_hold.CopyFrom(request.budget_hold)  # settled from this result's usage
    # Only complete text answers may be served again from the cache.
    if request.HasField("cache_key") and outcome.finish in (
        types_pb2.FINISH_REASON_STOP,
        types_pb2.FINISH_REASON_LENGTH,
    ):
        result.cache_key.CopyFrom(request.cache_key)
    return result


def done_chunk(request_id: str, seq: int, outcome: Outcome) -> envelopes_pb2.CompletionChunk:
    return envelopes.done_chunk(
        request_id,
        seq,
        finish_reason=outcome.finish,
        usage=_usage(outcome),
        error=outcome.error,
        full_text=outcome.text,
        tool_calls=_tool_calls_pb(outcome),
        error_param=outcome.error_param,
        logprobs=[
            types_pb2.TokenLogprob(
                token=t.token,
                logprob=t.logprob,
                top_logprobs=[types_pb2.TokenLogprob(token=a, logprob=p) for a, p in t.top],
            )
            for t in outcome.logprobs
        ],
    )


def _tool_calls_pb(outcome: Outcome) -> list[types_pb2.ToolCall]:
    return [
        types_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in outcome.tool_calls
    ]


def _usage(outcome: Outcome) -> types_pb2.Usage:
    return types_pb2.Usage(
        prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens
    )


def _sampling(pb: types_pb2.SamplingParams) -> SamplingParams:
    defaults = SamplingParams()
    return SamplingParams(
        max_tokens=pb.max_tokens or defaults.max_tokens,
        temperature=pb.temperature if pb.HasField("temperature") else defaults.temperature,
        top_p=pb.top_p if pb.HasField("top_p") else defaults.top_p,
        stop=tuple(pb.stop),
        seed=pb.seed if pb.HasField("seed") else None,
    )
