"""The OpenAI-compatible API: `GET /v1/models` and `POST /v1/chat/completions`.

Point an OpenAI SDK at `<gateway>/v1` with a Parley API key. A call is stateless, as with
OpenAI: the client's messages are the whole context and no chat is stored. To keep the history
server-side instead, name a stored chat (`extra_body={"chat_id": ...}` or the header
`X-Parley-Chat-Id`): the last message is then the user's next turn of that chat (or the trailing
`tool` messages answer the tool calls of the chat's last answer) and the chat's own history is
the context.

A streamed answer whose worker stopped mid-way is generated again by another worker; when that
text differs from what was streamed, OpenAI's stream has no way to take text back, so the stream
ends with an error (`answer_restarted`) instead of a finish: a client never keeps a text that is
not the answer.

Tools, the response format and the penalties go to the workers as the request's
`GenerationOptions` (`parley_gateway.generation`); an answer that may be tool calls is streamed
once it is complete (it must be parsed to be known a call), its calls as OpenAI streams them.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Response
from fastapi.responses import JSONResponse, StreamingResponse

from parley.v1 import types_pb2
from parley_common.ids import is_id
from parley_common.vocabulary import Role
from parley_gateway.auth import Principal
from parley_gateway.deps import Admitted, CacheControl, PartsDep, User, asks_no_cache
from parley_gateway.errors import ApiError
from parley_gateway.generation import generation_options, tool_calls_pb
from parley_gateway.openai_schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionUsage,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    Model,
    ModelList,
    OpenAIErrorBody,
    ParleyInfo,
    ResponseMessage,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
    dump,
)
from parley_gateway.schemas import TurnAnswer, TurnToolCall
from parley_gateway.turns import Reset, Sampling, TextChunk, Turn

router = APIRouter(prefix="/v1", tags=["openai"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorBody, "description": "an invalid request (the param is named)"},
    401: {"model": OpenAIErrorBody, "description": "missing, malformed or revoked API key"},
    403: {"model": OpenAIErrorBody, "description": "the admin key, where a user's key is needed"},
    404: {"model": OpenAIErrorBody, "description": "no such model, or no such chat (or not yours)"},
    413: {"model": OpenAIErrorBody, "description": "body or message too large"},
}
_COMPLETION_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "the completion, or with `stream: true` a text/event-stream of "
        "`data: <chat.completion.chunk>` events ending with `data: [DONE]`",
        "content": {"text/event-stream": {}},
    },
    429: {"model": OpenAIErrorBody, "description": "over a rate limit; retry after Retry-After"},
    502: {
        "model": OpenAIErrorBody,
        "description": "the model failed to answer (`generation_failed`, the message says why)",
    },
    503: {
        "model": OpenAIErrorBody,
        "description": "the workers are busy or a backing service is down; retry after Retry-After",
    },
    504: {"model": OpenAIErrorBody, "description": "no answer within the deadline"},
}

_SYSTEM_ROLES = {"system": "system", "developer": "system", "user": "user"}


async def _models(parts: PartsDep) -> list[Model]:
    listed = await parts.session.list_models()
    return [
        Model(id=m.model_id, created=m.created_unix_ms // 1000, context_window=m.context_window)
        for m in listed.models
    ]


@router.get("/models", response_model=ModelList, responses=_ERRORS, summary="List models")
async def list_models(_: User, parts: PartsDep) -> ModelList:
    """The models this platform serves."""
    return ModelList(data=await _models(parts))


@router.get(
    "/models/{model_id:path}", response_model=Model, responses=_ERRORS, summary="Read a model"
)
async def get_model(
    model_id: Annotated[str, Path(description="a model id from GET /v1/models")],
    _: User,
    parts: PartsDep,
) -> Model:
    for model in await _models(parts):
        if model.id == model_id:
            return model
    raise _model_not_found(model_id)


def _model_not_found(model_id: str) -> ApiError:
    return ApiError(
        404,
        "not_found",
        f"the model {model_id[:256]!r} does not exist; GET /v1/models lists the models served",
        param="model",
        code="model_not_found",
    )


def _messages(
    parts: PartsDep, body: ChatCompletionRequest, *, stored: bool
) -> list[types_pb2.ChatMessage]:
    """The client's messages; with a `stored` chat, the tool calls that tool messages answer
    may be the chat's (the session checks them against its last answer)."""
    limit = parts.settings.max_message_chars
    converted = []
    called: set[str] = set()
    for index, message in enumerate(body.messages):
        role = _SYSTEM_ROLES.get(message.role, message.role)
        text = message.text()
        if len(text) > limit:
            raise ApiError(
                413,
                "message_too_large",
                f"messages[{index}] is {len(text)} characters; the limit is {limit}",
                param=f"messages[{index}].content",
            )
        pb = types_pb2.ChatMessage(role=Role(role).to_pb(), content=text)
        if message.tool_calls and role != "assistant":
            raise _invalid(f"messages[{index}].tool_calls", "only assistant messages have them")
        if role == "assistant" and message.tool_calls:
            pb.tool_calls.extend(
                tool_calls_pb(message.tool_calls, f"messages[{index}].tool_calls", body.tools)
            )
            called.update(call.id for call in message.tool_calls)
        elif role == "tool":
            if not message.tool_call_id:
                raise _invalid(
                    f"messages[{index}].tool_call_id",
                    "a tool message needs the id of the tool call it answers",
                )
            if message.tool_call_id not in called and not stored:
                raise _invalid(
                    f"messages[{index}].tool_call_id",
                    f"{message.tool_call_id[:128]!r} answers no tool call of an earlier "
                    "assistant message",
                )
            pb.tool_call_id = message.tool_call_id
        elif role != "assistant" and not text.strip():
            raise ApiError(
                422,
                "invalid_request",
                f"messages[{index}].content: a {message.role} message needs text",
                param=f"messages[{index}].content",
            )
        converted.append(pb)
    return converted


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{param}: {message}", param=param)


def _options(body: ChatCompletionRequest) -> types_pb2.GenerationOptions:
    options = generation_options(
        tools=body.tools,
        tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=body.response_format,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
    )
    if (body.n or 1) > 1:
        # Each choice a fresh sample: marks the request as one the cache may not answer.
        options.n = body.n or 1
    if body.top_logprobs is not None and not body.logprobs:
        raise _invalid("top_logprobs", "only with logprobs: true")
    if body.logprobs:
        options.logprobs = True
        options.top_logprobs = body.top_logprobs or 0
    return options


def _sampling(body: ChatCompletionRequest) -> Sampling:
    temperature, top_p = body.temperature, body.top_p
    if top_p == 0:
        # Only the most likely token is left: greedy decoding, which the engines ask for as
        # temperature 0 (their top_p must be above 0).
        temperature, top_p = 0.0, None
    return Sampling(temperature=temperature, top_p=top_p, stop=body.stop_strings(), seed=body.seed)


def _check_stream_options(stream: bool | None, stream_options: object | None) -> None:
    if stream_options is not None and not stream:
        raise ApiError(
            422,
            "invalid_request",
            "stream_options: only allowed when stream is true",
            param="stream_options",
        )


def _check(parts: PartsDep, body: ChatCompletionRequest) -> None:
    _check_stream_options(body.stream, body.stream_options)
    choices, most = body.n or 1, parts.settings.max_choices
    if choices > most:
        raise ApiError(400, "invalid_request", f"n: at most {most} choices a request", param="n")
    budget = body.reply_budget()
    limit = parts.settings.max_tokens_limit
    if budget is not None and budget > limit:
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(422, "invalid_request", f"{field}: at most {limit}", param=field)


async def _start(
    parts: PartsDep,
    user: Principal,
    body: ChatCompletionRequest,
    chat_id: str | None,
    request_id: str | None,
    *,
    choice: int = 0,
) -> Turn:
    options = _options(body)
    messages = _messages(parts, body, stored=chat_id is not None)
    sampling = _sampling(body)
    if choice and sampling.seed is not None:
        # Reproducible, yet each choice its own sample.
        sampling = replace(sampling, seed=(sampling.seed + choice + 2**63) % 2**64 - 2**63)
    if chat_id is None:
        try:
            return await parts.turns.start_stateless(
                user,
                messages=messages,
                model=body.model,
                max_tokens=body.reply_budget(),
                sampling=sampling,
                no_cache=body.no_cache,
                options=options,
            )
        except ApiError as exc:
            if exc.status == 404:
                raise _model_not_found(body.model) from exc
            raise
    if not is_id(chat_id):
        raise ApiError(
            404,
            "not_found",
            f"chat {chat_id[:64]!r} not found: chat ids are 32 hexadecimal characters",
            param="chat_id",
        )
    # The turn: the trailing tool messages (the results of the chat's last answer's calls), or
    # else the last message, the user's next question.
    turn_start = len(messages)
    while turn_start > 0 and messages[turn_start - 1].role == types_pb2.ROLE_TOOL:
        turn_start -= 1
    tool_results = messages[turn_start:]
    last = messages[-1]
    if not tool_results and last.role != types_pb2.ROLE_USER:
        raise ApiError(
            422,
            "invalid_request",
            "messages: with chat_id, the last message is the user's next turn, or the tool "
            "messages answering the chat's last tool calls",
            param="messages",
        )
    if body.model not in {m.id for m in await _models(parts)}:
        raise _model_not_found(body.model)
    try:
        return await parts.turns.start(
            user,
            chat_id=chat_id,
            message="" if tool_results else last.content,
            request_id=request_id,
            max_tokens=body.reply_budget(),
            no_cache=body.no_cache,
            sampling=sampling,
            tool_results=tool_results,
            options=options,
        )
    except ApiError as exc:
        raise _named_by_message(exc, turn_start) from None


_TOOL_RESULT_PARAM = re.compile(r"^tool_results\[(\d+)\]")


def _named_by_message(exc: ApiError, first: int) -> ApiError:
    """The session names a tool turn's results `tool_results[i]`: here they are messages."""
    if exc.param == "tool_results":
        return ApiError(exc.status, exc.type, exc.message, param="messages")
    found = _TOOL_RESULT_PARAM.match(exc.param or "")
    if found is None:
        return exc
    param = f"messages[{first + int(found[1])}]" + (exc.param or "")[found.end() :]
    message = exc.message.replace(found[0], f"messages[{first + int(found[1])}]", 1)
    return ApiError(exc.status, exc.type, message, param=param)


def _finish_reason(answer: TurnAnswer) -> str:
    if answer.finish_reason == "expired":
        raise ApiError(
            503,
            "overloaded",
            "no worker could start this request before its deadline; retry later",
            retry_after_s=10,
        )
    if answer.finish_reason == "error":
        raise ApiError(502, "upstream_error", "the model failed to generate an answer")
    if answer.finish_reason == "tool_calls":
        return "tool_calls"
    return "length" if answer.finish_reason == "length" else "stop"


def _logprobs(answer: TurnAnswer) -> ChoiceLogprobs | None:
    if answer.logprobs is None:
        return None

    def utf8(token: str) -> list[int]:
        return list(token.encode())

    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=utf8(t.token),
                top_logprobs=[
                    TopLogprob(token=token, logprob=logprob, bytes=utf8(token))
                    for token, logprob in t.top
                ],
            )
            for t in answer.logprobs
        ]
    )


def _tool_calls(answer: TurnAnswer) -> list[ToolCall] | None:
    if not answer.tool_calls:
        return None
    return [
        ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
        for c in answer.tool_calls
    ]


def _restarted(turn: Turn) -> ApiError:
    where = (
        f"the answer is stored with the chat: GET /chat/{turn.chat_id} reads it"
        if turn.chat_id
        else "retry the request"
    )
    return ApiError(
        502,
        "answer_restarted",
        "the worker generating this answer stopped and another generated it again differently, "
        f"so the text streamed is not the answer; {where}",
    )


def _usage(*answers: TurnAnswer) -> CompletionUsage:
    """The choices share the prompt: it counts once."""
    prompt = answers[0].usage.prompt_tokens
    completion = sum(a.usage.completion_tokens for a in answers)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=_COMPLETION_ERRORS,
    summary="Create a chat completion",
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    user: Admitted,
    parts: PartsDep,
    x_parley_chat_id: Annotated[
        str | None,
        Header(max_length=64, description="Parley: the stored chat to answer within"),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=128,
            pattern=r"^[A-Za-z0-9._:-]+$",
            description="Parley, with a chat: a retry with the same key never stores the turn "
            "twice",
        ),
    ] = None,
    cache_control: CacheControl = None,
) -> Response:
    """OpenAI's chat completion: JSON, or Server-Sent Events with `stream: true`."""
    _check(parts, body)
    if asks_no_cache(cache_control):
        body = body.model_copy(update={"no_cache": True})
    chat_id = body.chat_id if body.chat_id is not None else x_parley_chat_id
    if (body.n or 1) > 1 and chat_id is not None:
        raise ApiError(400, "invalid_request", "n: only 1 choice with a stored chat", param="n")
    turn = await _start(parts, user, body, chat_id, idempotency_key)
    turns = [turn]
    try:
        # The other choices are queued at once: the workers generate them side by side.
        for choice in range(1, body.n or 1):
            turns.append(await _start(parts, user, body, chat_id, None, choice=choice))
    except BaseException:
        for started in turns:
            await started.close()
        raise
    headers = {"X-Parley-Request-Id": turn.request_id, **turn.audit_headers}
    if turn.chat_id:
        headers["X-Parley-Chat-Id"] = turn.chat_id
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _stream(turns, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        answers = [await t.answer() for t in turns]
    finally:
        for started in turns[1:]:
            await started.close()
    answer = answers[0]
    completion = ChatCompletion(
        id=f"chatcmpl-{turn.request_id}",
        created=turn.created_unix_s,
        model=turn.model,
        choices=[
            Choice(
                index=index,
                message=ResponseMessage(
                    content=a.content or (None if a.tool_calls else ""),
                    tool_calls=_tool_calls(a),
                ),
                finish_reason=_finish_reason(a),
                logprobs=_logprobs(a),
            )
            for index, a in enumerate(answers)
        ],
        usage=_usage(*answers),
        parley=ParleyInfo(
            request_id=turn.request_id,
            chat_id=turn.chat_id or None,
            cached=answer.cached,
            cache_score=answer.cache_score,
            cache_reason=answer.cache_reason,
        ),
    )
    return JSONResponse(dump(completion), headers=headers)


_ARGUMENT_FRAGMENT_CHARS = 32


def _tool_call_deltas(index: int, call: TurnToolCall) -> list[ToolCallDelta]:
    """As OpenAI streams a call: the id and name first, then the arguments in fragments."""
    first = ToolCallDelta(
        index=index,
        id=call.id,
        type="function",
        function=FunctionCallDelta(name=call.name, arguments=""),
    )
    arguments = call.arguments
    return [first] + [
        ToolCallDelta(index=index, function=FunctionCallDelta(arguments=arguments[i : i + n]))
        for n in (_ARGUMENT_FRAGMENT_CHARS,)
        for i in range(0, len(arguments), n)
    ]


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _stream(turns: list[Turn], include_usage: bool) -> AsyncIterator[bytes]:
    """The choices one after the other (each chunk names its `index`), then the usage."""
    first = turns[0]

    def chunk(
        delta: Delta,
        index: int,
        finish: str | None = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> bytes:
        payload = ChatCompletionChunk(
            id=f"chatcmpl-{first.request_id}",
            created=first.created_unix_s,
            model=first.model,
            choices=[
                ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
            ],
        )
        data = dump(payload)
        # As OpenAI: a delta has only what it sets; `usage` is there (null) only when asked for.
        data["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
        if not include_usage:
            del data["usage"]
        return _data(data)

    answers: list[TurnAnswer] = []
    try:
        for index, turn in enumerate(turns):
            yield chunk(Delta(role="assistant", content=""), index)
            restarted = False
            async for event in turn.events():
                if isinstance(event, Reset):
                    # OpenAI's stream cannot take text back: the client is told once the answer
                    # (stored, when there is a chat) is complete.
                    restarted = True
                elif isinstance(event, TextChunk):
                    if event.text and not restarted:
                        yield chunk(Delta(content=event.text), index)
                elif restarted:
                    raise _restarted(turn)
                else:
                    for number, call in enumerate(event.tool_calls):
                        for delta in _tool_call_deltas(number, call):
                            yield chunk(Delta(tool_calls=[delta]), index)
                    # A choice's log probabilities come whole, with its finish.
                    yield chunk(Delta(), index, _finish_reason(event), _logprobs(event))
                    answers.append(event)
        if include_usage:
            yield _data(
                dump(
                    ChatCompletionChunk(
                        id=f"chatcmpl-{first.request_id}",
                        created=first.created_unix_s,
                        model=first.model,
                        choices=[],
                        usage=_usage(*answers),
                    )
                )
            )
    except ApiError as exc:
        # OpenAI's way to fail a stream that has begun; its SDKs raise an APIError from it.
        yield _data(exc.openai_body())
        return
    finally:
        for turn in turns:
            await turn.close()
    yield b"data: [DONE]\n\n"
