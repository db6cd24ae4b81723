"""OpenAI's Responses API: `POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`, `cancel`.

A stored response (`store: true`, the default) is a turn of a Parley chat, submitted as an
asynchronous completion: `previous_response_id` continues that chat server-side, `background`
answers at once and the response is polled or streamed, and `GET ...?stream=true&starting_after=N`
resumes its event stream after event N on any gateway replica (see `parley_gateway.responses`).
`store: false` answers statelessly, as `/v1/chat/completions` does, and keeps nothing. Responses
are readable for `COMPLETION_RETENTION_S` (the session's); `DELETE` deletes the response's
conversation, its chat, with every response in it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from parley.v1 import session_pb2, types_pb2
from parley_common.ids import new_id
from parley_common.vocabulary import Role
from parley_gateway.async_completions import BeforeQueue
from parley_gateway.auth import Principal
from parley_gateway.deps import Admitted, PartsDep, User
from parley_gateway.errors import ApiError
from parley_gateway.generation import generation_options, tool_calls_pb
from parley_gateway.openai_schemas import (
    FunctionCall,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    dump,
)
from parley_gateway.response_schemas import (
    DeletedResponse,
    FunctionCallInput,
    FunctionCallOutputInput,
    InputMessage,
    ResponseObject,
    ResponseRequest,
)
from parley_gateway.responses import (
    RESPONSE_PREFIX,
    Observation,
    Outcome,
    ResponseMeta,
    completion_id_of,
    event_stream,
    from_completion,
    in_flight_status,
    local_observations,
    response_object,
    turn_observations,
    with_chat,
)
from parley_gateway.routes.openai import _COMPLETION_ERRORS, _model_not_found, _models
from parley_gateway.turns import Sampling, Turn

router = APIRouter(prefix="/v1/responses", tags=["openai"])

ResponseId = Annotated[str, Path(max_length=140, description="a response id (`resp_...`)")]

_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _not_found(response_id: str, param: str | None = None) -> ApiError:
    return ApiError(
        404,
        "not_found",
        f"response {response_id[:140]!r} not found (unknown, not yours, deleted or expired)",
        param=param,
    )


def _renamed(error: ApiError, old: str, new: str) -> ApiError:
    """`error` with the parameter `old` (a prefix of its param) called `new`."""
    param = (error.param or "").replace(old, new, 1)
    message = error.message.replace(old, new, 1)
    return ApiError(error.status, error.type, message, param=param or None)


def _tools(body: ResponseRequest) -> list[ToolDefinition]:
    """The Responses API's function tools, in the chat completions' shape."""
    tools = []
    for index, tool in enumerate(body.tools or []):
        if tool.get("type") != "function":
            raise ApiError(
                400,
                "invalid_request",
                f"tools[{index}].type: only 'function' tools are supported, "
                f"not {str(tool.get('type'))[:64]!r}",
                param=f"tools[{index}].type",
            )
        function = {k: v for k, v in tool.items() if k != "type"}
        try:
            tools.append(ToolDefinition(type="function", function=FunctionDefinition(**function)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = f"tools[{index}]" + "".join(f".{p}" for p in first["loc"])
            raise ApiError(
                400, "invalid_request", f"{where}: {first['msg']}", param=where
            ) from None
    return tools


def _tool_choice(body: ResponseRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if choice is None or choice in ("auto", "none", "required"):
        return cast("ToolChoice | None", choice)
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        try:
            return NamedToolChoice(type="function", function=NamedFunction(name=choice["name"]))
        except ValidationError:
            pass
    raise ApiError(
        400,
        "invalid_request",
        "tool_choice: 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
        param="tool_choice",
    )


def _options(body: ResponseRequest, tools: list[ToolDefinition]) -> types_pb2.GenerationOptions:
    try:
        return generation_options(
            tools=tools,
            tool_choice=_tool_choice(body),
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=None,
        )
    except ApiError as exc:
        found = _CHAT_TOOL_PARAM.match(exc.param or "")
        if found is None:
            raise
        raise _renamed(exc, found[0], found[1] + ".") from None


_CHAT_TOOL_PARAM = re.compile(r"^(tools\[\d+\])\.function\.")


def _input(
    parts: PartsDep, body: ResponseRequest, tools: list[ToolDefinition]
) -> tuple[str | None, list[types_pb2.ChatMessage], list[int]]:
    """(the instructions: `instructions` and any system/developer messages, the conversation's
    messages: function calls on their assistant message and outputs as tool messages, the input
    index of each message)."""
    limit = parts.settings.max_message_chars
    system: list[str] = [body.instructions] if body.instructions else []
    messages: list[types_pb2.ChatMessage] = []
    positions: list[int] = []
    called: set[str] = set()
    items = (
        [InputMessage(role="user", content=body.input)]
        if isinstance(body.input, str)
        else body.input
    )
    if not items:
        raise ApiError(422, "invalid_request", "input: at least one message", param="input")
    for index, item in enumerate(items):
        where = "input" if isinstance(body.input, str) else f"input[{index}]"
        if isinstance(item, FunctionCallInput):
            try:
                function = FunctionCall(name=item.name, arguments=item.arguments)
            except ValidationError as exc:
                field = exc.errors()[0]["loc"][0]
                raise ApiError(
                    400,
                    "invalid_request",
                    f"{where}.{field}: {exc.errors()[0]['msg']}",
                    param=f"{where}.{field}",
                ) from None
            call = ToolCall(id=item.call_id, function=function)
            try:
                (pb,) = tool_calls_pb([call], where, tools)
            except ApiError as exc:
                raise _renamed(exc, f"{where}[0].function.", f"{where}.") from None
            called.add(item.call_id)
            if not messages or messages[-1].role != types_pb2.ROLE_ASSISTANT:
                messages.append(types_pb2.ChatMessage(role=types_pb2.ROLE_ASSISTANT))
                positions.append(index)
            messages[-1].tool_calls.append(pb)
            continue
        if isinstance(item, FunctionCallOutputInput):
            role, text, param = "tool", item.output, f"{where}.output"
        else:
            role, text, param = item.role, item.text(), f"{where}.content"
        if len(text) > limit:
            raise ApiError(
                413,
                "message_too_large",
                f"{param} is {len(text)} characters; the limit is {limit}",
                param=param,
            )
        if role in ("system", "developer"):
            system.append(text)
            continue
        if role == "user" and not text.strip():
            raise ApiError(
                422, "invalid_request", f"{param}: a user message needs text", param=param
            )
        message = types_pb2.ChatMessage(role=Role(role).to_pb(), content=text)
        if isinstance(item, FunctionCallOutputInput):
            if item.call_id not in called and not body.previous_response_id:
                raise ApiError(
                    400,
                    "invalid_request",
                    f"{where}.call_id: {item.call_id[:128]!r} answers no function_call "
                    "earlier in input (or of previous_response_id)",
                    param=f"{where}.call_id",
                )
            message.tool_call_id = item.call_id
        messages.append(message)
        positions.append(index)
    if not messages or messages[-1].role not in (types_pb2.ROLE_USER, types_pb2.ROLE_TOOL):
        raise ApiError(
            422,
            "invalid_request",
            "input: the last item must be the user's message or a function_call_output",
            param="input",
        )
    return ("\n\n".join(system) if system else None), messages, positions


def _as_responses_error(error: ApiError) -> ApiError:
    """The session names the reply budget `max_tokens`; the Responses API calls it otherwise."""
    if error.param == "max_tokens":
        error.param = "max_output_tokens"
        error.message = error.message.replace("max_tokens", "max_output_tokens", 1)
    return error


def _check(parts: PartsDep, body: ResponseRequest) -> None:
    limit = parts.settings.max_tokens_limit
    if body.max_output_tokens is not None and body.max_output_tokens > limit:
        raise ApiError(
            422, "invalid_request", f"max_output_tokens: at most {limit}", param="max_output_tokens"
        )
    if body.background and not body.store:
        raise ApiError(
            422,
            "invalid_request",
            "background: a background response is stored; leave store true",
            param="background",
        )
    if not body.store and body.previous_response_id:
        raise ApiError(
            422,
            "invalid_request",
            "previous_response_id: continuing a conversation stores it; leave store true",
            param="previous_response_id",
        )


def _sampling(body: ResponseRequest) -> Sampling:
    temperature, top_p = body.temperature, body.top_p
    if top_p == 0:
        temperature, top_p = 0.0, None  # greedy, as on /v1/chat/completions
    return Sampling(temperature=temperature, top_p=top_p)


# What a stored response shows of its request, kept with its completion (`request_params`).
_KEPT_PARAMS = (
    "instructions",
    "previous_response_id",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


def _request_params(body: ResponseRequest) -> bytes:
    return json.dumps({name: getattr(body, name) for name in _KEPT_PARAMS}).encode()


def _kept_params(completion: session_pb2.Completion) -> dict[str, Any]:
    if not completion.request_params:
        return {}  # a completion recorded before they were kept
    kept = json.loads(completion.request_params)
    return {name: kept.get(name) for name in _KEPT_PARAMS} | {
        "tools": tuple(kept.get("tools") or ())
    }


def _meta(body: ResponseRequest, response_id: str, model: str, created_at: int) -> ResponseMeta:
    return ResponseMeta(
        response_id=response_id,
        model=model,
        created_at=created_at,
        store=body.store,
        background=bool(body.background),
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=tuple(body.tools or ()),
        tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
    )


_TOOL_RESULT_PARAM = re.compile(r"^tool_results\[(\d+)\]")
_RESULT_FIELDS = {".tool_call_id": ".call_id", ".content": ".output"}


def _named_by_item(error: ApiError, positions: list[int]) -> ApiError:
    """The session names a tool turn's results `tool_results[i]`: here they are input items."""
    if error.param == "tool_results":
        return _renamed(error, "tool_results", "input")
    found = _TOOL_RESULT_PARAM.match(error.param or "")
    if found is None:
        return error
    rest = (error.param or "")[found.end() :]
    return _renamed(
        error, found[0] + rest, f"input[{positions[int(found[1])]}]{_RESULT_FIELDS.get(rest, rest)}"
    )


async def _final(parts: PartsDep, observations: AsyncIterator[Observation]) -> Outcome:
    """The outcome, within the turn's deadline."""
    try:
        async with asyncio.timeout(parts.settings.completion_timeout_s + 30):
            async for observation in observations:
                if isinstance(observation, Outcome):
                    return observation
    finally:
        aclose = getattr(observations, "aclose", None)
        if aclose is not None:
            await aclose()
    raise ApiError(502, "upstream_error", "the response ended without an answer")


async def _previous_chat(parts: PartsDep, user: Principal, previous_response_id: str) -> str:
    completion_id = completion_id_of(previous_response_id)
    if completion_id is None:
        raise _not_found(previous_response_id, "previous_response_id")
    try:
        previous = await parts.async_completions.get(user, completion_id)
    except ApiError as exc:
        if exc.status == 404:
            raise _not_found(previous_response_id, "previous_response_id") from exc
        raise
    if not previous.chat_id:
        raise _not_found(previous_response_id, "previous_response_id")
    return previous.chat_id


async def _stateless(
    parts: PartsDep,
    user: Principal,
    body: ResponseRequest,
    instructions: str | None,
    messages: list[types_pb2.ChatMessage],
    options: types_pb2.GenerationOptions,
) -> Response:
    system = [("system", instructions)] if instructions else []
    try:
        turn = await parts.turns.start_stateless(
            user,
            messages=[*system, *messages],
            model=body.model,
            max_tokens=body.max_output_tokens,
            sampling=_sampling(body),
            no_cache=body.no_cache,
            options=options,
        )
    except ApiError as exc:
        if exc.status == 404:
            raise _model_not_found(body.model) from exc
        raise _as_responses_error(exc) from exc
    meta = _meta(body, RESPONSE_PREFIX + turn.request_id, turn.model, turn.created_unix_s)
    if body.stream:
        return StreamingResponse(
            event_stream(meta, turn_observations(turn)),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )
    outcome = await _final(parts, turn_observations(turn))
    return JSONResponse(dump(response_object(meta, outcome.status, outcome)))


@router.post(
    "", response_model=ResponseObject, responses=_COMPLETION_ERRORS, summary="Create a response"
)
async def create_response(body: ResponseRequest, user: Admitted, parts: PartsDep) -> Response:
    """A model response to text or messages; with `stream: true` its events (Server-Sent
    Events with `sequence_number`s); with `background: true` at once, `queued`."""
    _check(parts, body)
    tools = _tools(body)
    options = _options(body, tools)
    instructions, messages, positions = _input(parts, body, tools)
    if body.model not in {m.id for m in await _models(parts)}:
        raise _model_not_found(body.model)
    if not body.store:
        return await _stateless(parts, user, body, instructions, messages, options)
    tool_results = [m for m in messages if m.role == types_pb2.ROLE_TOOL]
    if tool_results and len(tool_results) < len(messages):
        raise ApiError(
            422,
            "invalid_request",
            "input: with previous_response_id, function_call_output items are the whole turn "
            "(the function calls are the previous response's); send a user message in the "
            "next response, or store: false with the whole conversation",
            param="input",
        )
    chat_id = ""
    if body.previous_response_id:
        chat_id = await _previous_chat(parts, user, body.previous_response_id)
    if len(messages) > 1 and not tool_results:
        raise ApiError(
            422,
            "invalid_request",
            "input: a stored response takes the new user message (system and developer messages "
            "as instructions); the earlier turns come from previous_response_id, or send "
            "store: false with the whole conversation",
            param="input",
        )
    request_id = new_id()
    sampling = _sampling(body)

    async def start(before_queue: BeforeQueue) -> Turn:
        return await parts.turns.start(
            user,
            chat_id=chat_id,
            message="" if tool_results else messages[-1].content,
            request_id=request_id,
            max_tokens=body.max_output_tokens,
            no_cache=body.no_cache,
            sampling=sampling,
            detached=True,
            before_queue=before_queue,
            instructions=instructions,
            tool_results=tool_results,
            options=options,
        )

    try:
        completion = await parts.async_completions.submit(
            user, request_id, start, request_params=_request_params(body)
        )
    except ApiError as exc:
        if exc.status == 404 and body.previous_response_id:
            raise _not_found(body.previous_response_id, "previous_response_id") from exc
        raise _as_responses_error(_named_by_item(exc, positions)) from exc
    meta = _meta(
        body, RESPONSE_PREFIX + request_id, completion.model, completion.created_unix_ms // 1000
    )
    meta = with_chat(meta, completion.chat_id)
    observations = local_observations(parts.async_completions, user, request_id)
    if body.stream:
        return StreamingResponse(
            event_stream(meta, observations),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )
    if body.background:
        done = from_completion(completion)
        status = done.status if done is not None else in_flight_status(completion)
        return JSONResponse(dump(response_object(meta, status, done)))
    outcome = await _final(parts, observations)
    return JSONResponse(dump(response_object(meta, outcome.status, outcome)))


async def _stored(
    parts: PartsDep, user: Principal, response_id: str
) -> tuple[session_pb2.Completion, ResponseMeta]:
    completion_id = completion_id_of(response_id)
    if completion_id is None:
        raise _not_found(response_id)
    try:
        completion = await parts.async_completions.get(user, completion_id)
        # A deleted conversation takes its responses with it.
        await parts.session.get_chat(
            session_pb2.GetChatRequest(user_id=user.user_id, chat_id=completion.chat_id)
        )
    except ApiError as exc:
        if exc.status == 404:
            raise _not_found(response_id) from exc
        raise
    meta = ResponseMeta(
        response_id=response_id,
        model=completion.model,
        created_at=completion.created_unix_ms // 1000,
        background=False,
        chat_id=completion.chat_id,
        **_kept_params(completion),
    )
    return completion, meta


@router.get(
    "/{response_id}",
    response_model=ResponseObject,
    responses={
        **_COMPLETION_ERRORS,
        200: {
            "description": "the response, or with `stream=true` its events after "
            "`starting_after` (a text/event-stream, live until it is final)",
            "content": {"text/event-stream": {}},
        },
    },
    summary="Read a response",
)
async def get_response(
    response_id: ResponseId,
    user: User,
    parts: PartsDep,
    stream: Annotated[bool, Query(description="stream its events")] = False,
    starting_after: Annotated[
        int | None, Query(ge=-1, description="with stream: send the events after this number")
    ] = None,
) -> Response:
    """A stored response as it is now; with `stream=true` its event stream, replayed after
    `starting_after` and followed live, on any replica."""
    if starting_after is not None and not stream:
        raise ApiError(
            422,
            "invalid_request",
            "starting_after: only with stream=true",
            param="starting_after",
        )
    completion, meta = await _stored(parts, user, response_id)
    if stream:
        observations = local_observations(parts.async_completions, user, completion.completion_id)
        return StreamingResponse(
            event_stream(
                meta, observations, starting_after=-1 if starting_after is None else starting_after
            ),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )
    done = from_completion(completion)
    status = done.status if done is not None else in_flight_status(completion)
    progress = parts.async_completions.followed(user.user_id, completion.completion_id)
    text = None
    if done is None and progress is not None:
        text = "".join(getattr(e, "text", "") for e in progress.events) or None
    return JSONResponse(dump(response_object(meta, status, done, text=text)))


@router.delete(
    "/{response_id}",
    response_model=DeletedResponse,
    responses=_COMPLETION_ERRORS,
    summary="Delete a response",
)
async def delete_response(response_id: ResponseId, user: User, parts: PartsDep) -> DeletedResponse:
    """Deletes the response's conversation (its Parley chat, with every response in it)."""
    completion, _ = await _stored(parts, user, response_id)
    await parts.session.delete_chat(
        session_pb2.DeleteChatRequest(user_id=user.user_id, chat_id=completion.chat_id)
    )
    return DeletedResponse(id=response_id)


@router.post(
    "/{response_id}/cancel",
    response_model=ResponseObject,
    responses=_COMPLETION_ERRORS,
    summary="Cancel a response",
)
async def cancel_response(response_id: ResponseId, user: User, parts: PartsDep) -> Response:
    """Asks the workers to stop a response still being generated; the text so far is kept."""
    completion, meta = await _stored(parts, user, response_id)
    done = from_completion(completion)
    if done is None:
        await parts.turns.cancel(completion.completion_id, "cancelled by its user")
    status = done.status if done is not None else in_flight_status(completion)
    return JSONResponse(dump(response_object(meta, status, done)))
