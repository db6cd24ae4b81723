"""The chat API over a WebSocket: `/chat/ws`.

One JSON object per text frame. The client authenticates with `Authorization: Bearer <key>` on
the upgrade request or, where it cannot set headers (a browser), with a first frame
`{"type": "auth", "api_key": "..."}`, or with the session cookie of a signed-in page of this
site (its Origin is checked); the server answers `{"type": "ready"}`. Then:

- `{"type": "message", "message": "...", "chat_id"?, "bot_id"?, "max_tokens"?, "request_id"?,
  "no_cache"?, "temperature"?, "top_p"?, "stop"?, "seed"?, "tools"?, "tool_choice"?,
  "parallel_tool_calls"?, "tool_results"?}` (as in the REST API) starts a turn (a new chat
  without `chat_id`; `tool_results` in place of `message` answer the tool calls of the chat's
  last answer); the server sends `chat` (ids),
  `chunk`s (`text`) and `done` (`answer`, as in the REST API: its `content` is the stored
  answer), or `error`; `reset` says the chunks so far are void and those that follow start the
  answer over (its worker stopped and another generated it again differently);
- `{"type": "stop"}` stops the turn being generated: its `done` follows with the text so far
  and `finish_reason: "cancelled"` (that text is also what the chat stores);
- `{"type": "ping"}` is answered with `pong`.

One turn at a time per socket. Closing the socket mid-turn stops the generation too.
Errors are frames `{"type": "error", "error": {"type", "message", "retry_after_s"?}}`; the socket
stays open, except after a failed authentication (closed with code 4401).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from parley_common.ids import is_id
from parley_gateway.auth import SESSION_COOKIE, Principal
from parley_gateway.deps import Parts, admit, authenticate
from parley_gateway.errors import ApiError
from parley_gateway.generation import chat_tools
from parley_gateway.limits import MAX_JSON_DEPTH, json_too_deep
from parley_gateway.relay import RESET_MESSAGE
from parley_gateway.schemas import ToolFields
from parley_gateway.turns import Reset, Sampling, TextChunk, Turn

router = APIRouter(tags=["chats"])

log = logging.getLogger(__name__)

_AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHENTICATED = 4401


class _Auth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auth"]
    api_key: str = Field(min_length=1, max_length=256)


class _Message(ToolFields):
    model_config = ConfigDict(extra="forbid")
    type: Literal["message"]
    chat_id: str | None = None
    bot_id: str | None = Field(default=None, max_length=64)
    max_tokens: int | None = Field(default=None, ge=1)
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    no_cache: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=4
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    attachment_ids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=20
    )


class _Socket:
    """Sends frames one at a time: the turn's relay and the receive loop both send."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._lock:
            await self.websocket.send_text(json.dumps(frame))

    async def error(self, error: ApiError, request_id: str | None = None) -> None:
        body: dict[str, Any] = {"type": error.type, "message": error.message}
        if error.retry_after_s:
            body["retry_after_s"] = error.retry_after_s
        frame: dict[str, Any] = {"type": "error", "error": body}
        if request_id:
            frame["request_id"] = request_id
        await self.send(frame)


async def _receive(websocket: WebSocket) -> dict[str, Any] | ApiError:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        return ApiError(422, "invalid_request", "frames are JSON text; binary frames are not read")
    if json_too_deep(text.encode()):
        return ApiError(
            400, "invalid_json", f"the frame's JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        frame = json.loads(text)
    except json.JSONDecodeError as exc:
        return ApiError(400, "invalid_json", f"the frame is not valid JSON: {exc}")
    if not isinstance(frame, dict):
        return ApiError(422, "invalid_request", "a frame is a JSON object with a `type`")
    return frame


async def _authenticate(socket: _Socket, parts: Parts) -> Principal | None:
    websocket = socket.websocket
    header = websocket.headers.get("authorization")
    try:
        if header is None and websocket.cookies.get(SESSION_COOKIE):
            # A socket starts turns: checked as a state-changing request (no cross-site
            # WebSocket hijacking with the cookie).
            principal = await authenticate(parts, websocket, "POST")
        elif header is None:
            frame = await asyncio.wait_for(_receive(websocket), timeout=_AUTH_TIMEOUT_S)
            if isinstance(frame, ApiError):
                raise frame
            try:
                auth = _Auth.model_validate(frame)
            except ValidationError as exc:
                raise ApiError(
                    401,
                    "authentication_error",
                    'authenticate first: send {"type": "auth", "api_key": "<key>"} or '
                    "the header 'Authorization: Bearer <key>'",
                ) from exc
            principal = await parts.auth.authenticate(f"Bearer {auth.api_key}")
        else:
            principal = await parts.auth.authenticate(header)
        if principal.is_admin:
            raise ApiError(403, "permission_error", "chat with a user's key, not the admin key")
    except TimeoutError:
        await websocket.close(CLOSE_UNAUTHENTICATED, "no authentication")
        return None
    except ApiError as exc:
        await socket.error(exc)
        await websocket.close(CLOSE_UNAUTHENTICATED, exc.type)
        return None
    await socket.send({"type": "ready", "user_id": principal.user_id})
    return principal


async def _start(parts: Parts, principal: Principal, message: _Message) -> Turn:
    settings = parts.settings
    options, tool_results = chat_tools(message, settings.max_message_chars)
    if message.max_tokens is not None and message.max_tokens > settings.max_tokens_limit:
        raise ApiError(422, "invalid_request", f"max_tokens: at most {settings.max_tokens_limit}")
    if message.chat_id is not None and not is_id(message.chat_id):
        raise ApiError(404, "not_found", f"chat {message.chat_id[:64]!r} not found")
    await admit(parts, principal)
    return await parts.turns.start(
        principal,
        chat_id=message.chat_id or "",
        message=message.message,
        request_id=message.request_id,
        max_tokens=message.max_tokens,
        bot_id=message.bot_id,
        no_cache=message.no_cache,
        sampling=Sampling(
            temperature=message.temperature,
            top_p=message.top_p,
            stop=tuple(message.stop or ()),
            seed=message.seed,
        ),
        tool_results=tool_results,
        options=options,
        attachment_ids=message.attachment_ids,
    )


async def _relay(socket: _Socket, turn: Turn) -> None:
    try:
        async for event in turn.events():
            if isinstance(event, TextChunk):
                if event.text:
                    await socket.send(
                        {"type": "chunk", "request_id": turn.request_id, "text": event.text}
                    )
            elif isinstance(event, Reset):
                await socket.send(
                    {"type": "reset", "request_id": turn.request_id, "message": RESET_MESSAGE}
                )
            else:
                await socket.send(
                    {
                        "type": "done",
                        "request_id": turn.request_id,
                        "chat_id": turn.chat_id,
                        "answer": event.model_dump(mode="json"),
                    }
                )
    except ApiError as exc:
        await socket.error(exc, turn.request_id)
    finally:
        await turn.close()


@router.websocket("/chat/ws")
async def chat_ws(websocket: WebSocket) -> None:
    """One socket's life, top to bottom (auth, the frame loop, one turn at a time); longer than
    a screen because splitting it would scatter the socket's states over several functions."""
    parts: Parts = websocket.app.state.parts
    socket = _Socket(websocket)
    await websocket.accept()
    principal = await _authenticate(socket, parts)
    if principal is None:
        return
    relay: asyncio.Task[None] | None = None
    current: Turn | None = None
    try:
        while True:
            frame = await _receive(websocket)
            if isinstance(frame, ApiError):
                await socket.error(frame)
                continue
            kind = frame.get("type")
            if kind == "message":
                if relay is not None and not relay.done():
                    await socket.error(
                        ApiError(409, "busy", "a turn is being answered; wait for done, or stop it")
                    )
                    continue
                try:
                    current = await _start(parts, principal, _Message.model_validate(frame))
                except ValidationError as exc:
                    details = "; ".join(
                        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                    )
                    await socket.error(ApiError(422, "invalid_request", details))
                    continue
                except ApiError as exc:
                    await socket.error(exc)
                    continue
                await socket.send(
                    {
                        "type": "chat",
                        "chat_id": current.chat_id,
                        "request_id": current.request_id,
                        "message_id": current.message_id,
                        "context_notice": current.context_notice or None,
                    }
                )
                relay = asyncio.create_task(_relay(socket, current))
            elif kind == "stop":
                if relay is None or relay.done() or current is None:
                    await socket.error(ApiError(409, "nothing_to_stop", "no turn is running"))
                    continue
                await parts.turns.cancel(current.request_id, "stopped by its user")
            elif kind == "ping":
                await socket.send({"type": "pong"})
            else:
                await socket.error(
                    ApiError(
                        422,
                        "invalid_request",
                        f"type: unknown frame type {str(kind)[:40]!r}; expected message, stop "
                        "or ping",
                    )
                )
    except WebSocketDisconnect:
        pass
    finally:
        if relay is not None:
            # A turn still running stops: its relay closes it, which tells the workers.
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay
