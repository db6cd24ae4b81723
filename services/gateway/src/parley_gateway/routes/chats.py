"""The chat REST API: start and continue chats (JSON, SSE or asynchronously), list, read and
delete them; edit a question, regenerate an answer, list siblings, choose or delete a branch;
search them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse

from parley.v1 import session_pb2, types_pb2
from parley_common.ids import is_id, new_id
from parley_common.vocabulary import FinishReason, Role
from parley_gateway.async_completions import BeforeQueue, completion_out
from parley_gateway.auth import Principal
from parley_gateway.deps import Admitted, CacheControl, PartsDep, User, asks_no_cache
from parley_gateway.errors import ApiError
from parley_gateway.generation import chat_tools
from parley_gateway.relay import RESET_MESSAGE
from parley_gateway.schemas import (
    AttachmentRef,
    ChatDetail,
    ChatList,
    ChatsExport,
    ChatSummary,
    CompletionBody,
    CompletionOut,
    DataDeleted,
    ErrorBody,
    ExportedChatOut,
    MessageOut,
    RegenerateBody,
    SearchHitOut,
    SearchPage,
    SelectBranchBody,
    SiblingsOut,
    StartChatBody,
    ToolResultOut,
    TurnAnswer,
    TurnResponse,
    TurnToolCall,
)
from parley_gateway.turns import Reset, Sampling, TextChunk, Turn

router = APIRouter(tags=["chats"])

ChatId = Annotated[str, Path(description="a chat id (32 hexadecimal characters)")]
MessageId = Annotated[str, Path(description="a message id of this chat")]


def _finish_name(finish: int) -> str | None:
    """An answer's finish reason; None for a question."""
    reason = FinishReason.from_pb(finish)
    return None if reason is None else reason.value


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the body is not valid JSON"},
    401: {"model": ErrorBody, "description": "missing, malformed or revoked API key"},
    404: {"model": ErrorBody, "description": "no such chat (or not yours)"},
    413: {"model": ErrorBody, "description": "body or message too large"},
    422: {"model": ErrorBody, "description": "a field is missing or invalid"},
    503: {"model": ErrorBody, "description": "a backing service is down; retry after Retry-After"},
}
_TURN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    200: {
        "description": "the answer as JSON, or with `stream: true` a text/event-stream of "
        "`chat`, `chunk` and `done` events (`reset`: discard the chunks so far, the answer "
        "starts over; `error`: the turn failed)",
        "content": {"text/event-stream": {}},
    },
    202: {
        "model": CompletionOut,
        "description": "with `?mode=async` or `Prefer: respond-async`: the completion, queued; "
        "follow it at `Location`",
    },
    429: {"model": ErrorBody, "description": "over a rate limit; retry after Retry-After"},
    502: {
        "model": ErrorBody,
        "description": "`generation_failed`: the model could not answer (the message says why); "
        "send the message again with the same request_id to retry",
    },
    503: {
        "model": ErrorBody,
        "description": "the workers' queue is full or a backing service is down; retry after "
        "Retry-After",
    },
    504: {"model": ErrorBody, "description": "no answer within the deadline"},
}

Mode = Annotated[
    Literal["sync", "async"] | None,
    Query(description="`async`: answer 202 at once with a completion to poll or follow"),
]
Prefer = Annotated[
    str | None,
    Header(max_length=200, description="`respond-async`: the same as `?mode=async` (RFC 7240)"),
]


def _no_cache(body: CompletionBody, cache_control: str | None) -> bool:
    return body.no_cache or asks_no_cache(cache_control)


def _wants_async(mode: str | None, prefer: str | None) -> bool:
    if mode is not None:
        return mode == "async"
    return prefer is not None and "respond-async" in prefer.lower()


def _valid_chat_id(chat_id: str) -> str:
    if not is_id(chat_id):
        raise ApiError(
            404, "not_found", f"chat {chat_id!r} not found: chat ids are 32 hexadecimal characters"
        )
    return chat_id


def _check_message(
    parts: PartsDep, body: CompletionBody
) -> tuple[types_pb2.GenerationOptions, list[types_pb2.ChatMessage]]:
    """The turn's options and tool results, its message and budget checked."""
    tools = chat_tools(body, parts.settings.max_message_chars)
    if body.max_tokens is not None and body.max_tokens > parts.settings.max_tokens_limit:
        raise ApiError(
            422, "invalid_request", f"max_tokens: at most {parts.settings.max_tokens_limit}"
        )
    return tools


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _sse_stream(turn: Turn) -> AsyncIterator[bytes]:
    yield _sse(
        "chat",
        {
            "chat_id": turn.chat_id,
            "request_id": turn.request_id,
            "message_id": turn.message_id,
            "context_notice": turn.context_notice or None,
        },
    )
    try:
        async for event in turn.events():
            if isinstance(event, TextChunk):
                yield _sse("chunk", {"text": event.text})
            elif isinstance(event, Reset):
                yield _sse("reset", {"message": RESET_MESSAGE})
            else:
                yield _sse("done", event.model_dump())
    except ApiError as exc:
        yield _sse("error", {"type": exc.type, "message": exc.message})
    finally:
        await turn.close()


async def _respond(turn: Turn, stream: bool) -> Response | TurnResponse:
    if stream:
        return StreamingResponse(
            _sse_stream(turn),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **turn.audit_headers},
        )
    answer: TurnAnswer = await turn.answer()
    response = TurnResponse(
        chat_id=turn.chat_id,
        request_id=turn.request_id,
        message_id=turn.message_id,
        answer=answer,
        context_notice=turn.context_notice or None,
    )
    if not turn.audit_headers:
        return response
    return JSONResponse(response.model_dump(mode="json"), headers=turn.audit_headers)


async def _turn(
    parts: PartsDep,
    user: Principal,
    *,
    chat_id: str,
    body: CompletionBody,
    bot_id: str | None,
    mode: str | None,
    prefer: str | None,
    no_cache: bool,
) -> Response | TurnResponse:
    """A turn of `POST /chat` or `/chat/{id}/completion`: asynchronous (202), streamed, or JSON;
    the three answers side by side read better than split apart."""
    options, tool_results = _check_message(parts, body)
    sampling = Sampling(
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(body.stop or ()),
        seed=body.seed,
    )
    if not _wants_async(mode, prefer):
        turn = await parts.turns.start(
            user,
            chat_id=chat_id,
            message=body.message,
            request_id=body.request_id,
            max_tokens=body.max_tokens,
            bot_id=bot_id,
            no_cache=no_cache,
            sampling=sampling,
            tool_results=tool_results,
            options=options,
            attachment_ids=body.attachment_ids,
        )
        return await _respond(turn, body.stream)
    if body.stream:
        raise ApiError(
            422,
            "invalid_request",
            "stream: an asynchronous completion is followed at GET /completions/{id}/events",
        )
    request_id = body.request_id or new_id()

    async def start(before_queue: BeforeQueue) -> Turn:
        return await parts.turns.start(
            user,
            chat_id=chat_id,
            message=body.message,
            request_id=request_id,
            max_tokens=body.max_tokens,
            bot_id=bot_id,
            no_cache=no_cache,
            sampling=sampling,
            detached=True,
            before_queue=before_queue,
            tool_results=tool_results,
            options=options,
            attachment_ids=body.attachment_ids,
        )

    completion = await parts.async_completions.submit(user, request_id, start)
    headers = {"Location": f"/completions/{request_id}"}
    if mode is None:
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(
        completion_out(completion).model_dump(mode="json"), status_code=202, headers=headers
    )


@router.post(
    "/chat", response_model=TurnResponse, responses=_TURN_RESPONSES, summary="Start a chat"
)
async def start_chat(
    body: StartChatBody,
    user: Admitted,
    parts: PartsDep,
    mode: Mode = None,
    prefer: Prefer = None,
    cache_control: CacheControl = None,
) -> Response | TurnResponse:
    """Start a chat with a first message and get the assistant's answer (or stream it, or
    submit it asynchronously)."""
    return await _turn(
        parts,
        user,
        chat_id="",
        body=body,
        bot_id=body.bot_id,
        mode=mode,
        prefer=prefer,
        no_cache=_no_cache(body, cache_control),
    )


@router.post(
    "/chat/{chat_id}/completion",
    response_model=TurnResponse,
    responses=_TURN_RESPONSES,
    summary="Continue a chat",
)
async def continue_chat(
    chat_id: ChatId,
    body: CompletionBody,
    user: Admitted,
    parts: PartsDep,
    mode: Mode = None,
    prefer: Prefer = None,
    cache_control: CacheControl = None,
) -> Response | TurnResponse:
    """Send the next message of a chat; the model sees the chat's history."""
    return await _turn(
        parts,
        user,
        chat_id=_valid_chat_id(chat_id),
        body=body,
        bot_id=None,
        mode=mode,
        prefer=prefer,
        no_cache=_no_cache(body, cache_control),
    )


def _summary(chat: session_pb2.Chat) -> ChatSummary:
    return ChatSummary(
        chat_id=chat.chat_id,
        title=chat.title,
        bot_id=chat.bot_id,
        created_at=chat.created_unix_ms,
        updated_at=chat.updated_unix_ms,
        message_count=chat.message_count,
    )


@router.get("/chats", response_model=ChatList, responses=_ERRORS, summary="List your chats")
async def list_chats(
    user: User,
    parts: PartsDep,
    limit: Annotated[int, Query(ge=1, le=100, description="chats per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> ChatList:
    """Your chats, most recently active first."""
    listed = await parts.session.list_chats(
        session_pb2.ListChatsRequest(user_id=user.user_id, limit=limit, cursor=cursor or "")
    )
    return ChatList(
        chats=[_summary(c) for c in listed.chats], next_cursor=listed.next_cursor or None
    )


@router.get(
    "/chats/search", response_model=SearchPage, responses=_ERRORS, summary="Search your chats"
)
async def search_chats(
    user: User,
    parts: PartsDep,
    q: Annotated[str, Query(min_length=1, max_length=200, description="words to look for")],
    bot_id: Annotated[str, Query(max_length=64, description="only chats of this bot")] = "",
    since: Annotated[
        datetime | None, Query(description="messages at or after (ISO 8601; UTC if no zone)")
    ] = None,
    until: Annotated[datetime | None, Query(description="and at or before")] = None,
    limit: Annotated[int, Query(ge=1, le=50, description="hits per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the previous page")
    ] = None,
) -> SearchPage:
    """Your chats' titles and messages that contain the words of `q` (MongoDB text search:
    stemmed, `"exact phrase"` and `-excluded` words work), best first, with the matching
    ranges to highlight."""
    if cursor is not None and not cursor.isdigit():
        raise ApiError(422, "invalid_request", "cursor: not a cursor returned by this API")
    found = await parts.session.search_chats(
        session_pb2.SearchChatsRequest(
            user_id=user.user_id,
            query=q,
            bot_id=bot_id,
            since_unix_ms=_unix_ms(since),
            until_unix_ms=_unix_ms(until),
            limit=limit,
            offset=int(cursor or 0),
        )
    )
    return SearchPage(
        hits=[
            SearchHitOut(
                chat_id=h.chat_id,
                chat_title=h.chat_title,
                bot_id=h.bot_id,
                message_id=h.message_id or None,
                role=None if not h.message_id else (Role.from_pb(h.role) or Role.USER).value,
                snippet=h.snippet,
                highlights=list(zip(h.highlight_starts, h.highlight_ends, strict=True)),
                score=h.score,
                created_at=h.created_unix_ms,
            )
            for h in found.hits
        ],
        next_cursor=str(found.next_offset) if found.next_offset else None,
    )


def _unix_ms(value: datetime | None) -> int:
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return max(1, int(value.timestamp() * 1000))


@router.get(
    "/chats/export",
    response_model=ChatsExport,
    responses=_ERRORS,
    summary="Export your chats as JSON",
)
async def export_chats(user: User, parts: PartsDep) -> JSONResponse:
    """Every chat of yours with every message of every branch (`parent_id` makes the tree), as
    one JSON file to download."""
    exported = await parts.session.export_chats(
        session_pb2.ExportChatsRequest(user_id=user.user_id),
        timeout_s=max(parts.settings.grpc_timeout_s, 600),
    )
    document = ChatsExport(
        exported_at=int(datetime.now(UTC).timestamp() * 1000),
        user_id=user.user_id,
        chats=[
            ExportedChatOut(
                **_summary(c.chat).model_dump(),
                active_leaf_id=c.active_leaf_id or None,
                messages=[_message_out(m) for m in c.messages],
            )
            for c in exported
        ],
    )
    return JSONResponse(
        document.model_dump(mode="json"),
        headers={"Content-Disposition": 'attachment; filename="parley-chats.json"'},
    )


@router.delete(
    "/chats", response_model=DataDeleted, responses=_ERRORS, summary="Delete all your chats"
)
async def delete_all_chats(user: User, parts: PartsDep) -> DataDeleted:
    """Delete every chat of yours with its messages, branches and feedback (your data; the
    account and its keys stay)."""
    deleted = await parts.session.delete_user_data(
        session_pb2.DeleteUserDataRequest(user_id=user.user_id)
    )
    return DataDeleted(chats_deleted=deleted.chats_deleted)


@router.get("/chat/{chat_id}", response_model=ChatDetail, responses=_ERRORS, summary="Read a chat")
async def get_chat(chat_id: ChatId, user: User, parts: PartsDep) -> ChatDetail:
    """A chat with its messages in order."""
    got = await parts.session.get_chat(
        session_pb2.GetChatRequest(
            user_id=user.user_id, chat_id=_valid_chat_id(chat_id), include_messages=True
        )
    )
    return _detail(got)


def _message_out(m: session_pb2.Message) -> MessageOut:
    return MessageOut(
        message_id=m.message_id,
        ordinal=m.ordinal,
        role=(Role.from_pb(m.role) or Role.USER).value,
        content=m.content,
        token_count=m.token_count,
        request_id=m.request_id,
        created_at=m.created_unix_ms,
        finish_reason=_finish_name(m.finish_reason),
        tool_calls=[TurnToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in m.tool_calls]
        or None,
        tool_results=[
            ToolResultOut(tool_call_id=r.tool_call_id, content=r.content) for r in m.tool_results
        ]
        or None,
        parent_id=m.parent_id or None,
        sibling_count=m.sibling_count or 1,
        sibling_index=m.sibling_index,
        cached=m.cached,
        cache_score=m.cache_score if m.cached else None,
        cache_reason=(m.cache_reason or None) if m.cached else None,
        attachments=[
            AttachmentRef(
                id=a.attachment_id,
                name=a.name,
                media_type=a.media_type,
                kind=a.kind,
                size=a.size,
                tokens=a.tokens if a.HasField("tokens") else None,
            )
            for a in m.attachments
        ],
        context_notice=m.context_notice or None,
    )


def _detail(got: session_pb2.GetChatResponse) -> ChatDetail:
    messages = [_message_out(m) for m in got.messages]
    return ChatDetail(**_summary(got.chat).model_dump(), messages=messages)


def _valid_message_id(message_id: str) -> str:
    if not is_id(message_id):
        raise ApiError(404, "not_found", f"message {message_id} not found in this chat")
    return message_id


@router.post(
    "/chat/{chat_id}/messages/{message_id}/edit",
    response_model=TurnResponse,
    responses=_TURN_RESPONSES,
    summary="Edit a question: a new branch",
)
async def edit_message(
    chat_id: ChatId,
    message_id: MessageId,
    body: CompletionBody,
    user: Admitted,
    parts: PartsDep,
    cache_control: CacheControl = None,
) -> Response | TurnResponse:
    """Ask this user message again with new text: a new branch from the message before it,
    which becomes the chat's active branch, answered like a next message."""
    options, tool_results = _check_message(parts, body)
    turn = await parts.turns.start(
        user,
        chat_id=_valid_chat_id(chat_id),
        message=body.message,
        request_id=body.request_id,
        max_tokens=body.max_tokens,
        no_cache=_no_cache(body, cache_control),
        sampling=Sampling(
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop or ()),
            seed=body.seed,
        ),
        edit_message_id=_valid_message_id(message_id),
        tool_results=tool_results,
        options=options,
    )
    return await _respond(turn, body.stream)


@router.post(
    "/chat/{chat_id}/messages/{message_id}/regenerate",
    response_model=TurnResponse,
    responses=_TURN_RESPONSES,
    summary="Regenerate an answer",
)
async def regenerate_message(
    chat_id: ChatId,
    message_id: MessageId,
    user: Admitted,
    parts: PartsDep,
    body: RegenerateBody | None = None,
) -> Response | TurnResponse:
    """A new answer to this assistant message's question, stored beside it (a sibling) and made
    the active branch; never from the cache."""
    body = body or RegenerateBody()
    turn = await parts.turns.start(
        user,
        chat_id=_valid_chat_id(chat_id),
        message="",
        request_id=body.request_id,
        max_tokens=body.max_tokens,
        no_cache=True,
        regenerate_message_id=_valid_message_id(message_id),
    )
    return await _respond(turn, body.stream)


@router.get(
    "/chat/{chat_id}/messages/{message_id}/siblings",
    response_model=SiblingsOut,
    responses=_ERRORS,
    summary="A message's siblings",
)
async def list_siblings(
    chat_id: ChatId, message_id: MessageId, user: User, parts: PartsDep
) -> SiblingsOut:
    """The edits of a question, or the regenerations of an answer, at this place of the chat."""
    got = await parts.session.list_siblings(
        session_pb2.ListSiblingsRequest(
            user_id=user.user_id,
            chat_id=_valid_chat_id(chat_id),
            message_id=_valid_message_id(message_id),
        )
    )
    return SiblingsOut(
        siblings=[_message_out(m) for m in got.siblings],
        active_message_id=got.active_message_id or None,
    )


@router.post(
    "/chat/{chat_id}/branch",
    response_model=ChatDetail,
    responses=_ERRORS,
    summary="Choose a branch",
)
async def select_branch(
    chat_id: ChatId, body: SelectBranchBody, user: User, parts: PartsDep
) -> ChatDetail:
    """Make the chat's active branch go through this message (to its newest message); the next
    turn, the context and the summary follow it."""
    got = await parts.session.select_branch(
        session_pb2.SelectBranchRequest(
            user_id=user.user_id,
            chat_id=_valid_chat_id(chat_id),
            message_id=_valid_message_id(body.message_id),
        )
    )
    return _detail(got)


@router.delete(
    "/chat/{chat_id}/messages/{message_id}",
    response_model=ChatDetail,
    responses=_ERRORS,
    summary="Delete a branch",
)
async def delete_branch(
    chat_id: ChatId, message_id: MessageId, user: User, parts: PartsDep
) -> ChatDetail:
    """Delete this message and every message after it, on all branches."""
    got = await parts.session.delete_branch(
        session_pb2.DeleteBranchRequest(
            user_id=user.user_id,
            chat_id=_valid_chat_id(chat_id),
            message_id=_valid_message_id(message_id),
        )
    )
    return _detail(got)


@router.delete("/chat/{chat_id}", status_code=204, responses=_ERRORS, summary="Delete a chat")
async def delete_chat(chat_id: ChatId, user: User, parts: PartsDep) -> Response:
    """Delete a chat and its messages."""
    await parts.session.delete_chat(
        session_pb2.DeleteChatRequest(user_id=user.user_id, chat_id=_valid_chat_id(chat_id))
    )
    return Response(status_code=204)
