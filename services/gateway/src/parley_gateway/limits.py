"""Refuse request bodies that cannot be read, with a precise error: over the size limit (413,
before they are read into memory), JSON that is not UTF-8 or is nested too deep (400)."""

from __future__ import annotations

import re
from email.message import Message as _ContentType

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley_gateway.errors import ApiError, is_openai_path

__all__ = ["MAX_JSON_DEPTH", "BodySizeLimit", "JsonBodyCheck", "json_too_deep"]

# No request of this API nests deeper than a few levels; the parser itself gives up at about a
# thousand (with a RecursionError, which FastAPI answers with a vague 400).
MAX_JSON_DEPTH = 64

# A JSON string (one left open runs to the end): brackets inside it are text.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit` (cheap when it cannot)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class _TooLargeError(HTTPException):
    """Raised while the body is read: FastAPI re-raises an HTTPException met there (any other
    error becomes its generic 400), so the error handlers answer 413."""


class BodySizeLimit:
    """Bodies of at most `max_bytes`, or (`larger`) of at most its limit on the paths its pattern
    matches in full (uploads). Counted while they are read: nothing unbounded is held."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, larger: tuple[re.Pattern[str], int] | None = None
    ) -> None:
        self._app = app
        self._max = max_bytes
        self._larger = larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        limit = self._max
        if self._larger is not None and self._larger[0].fullmatch(scope.get("path", "")):
            limit = self._larger[1]
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, send, limit)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLargeError(413, f"the request body is over {limit} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, limited_receive, tracking_send)
        except _TooLargeError:
            if not started:
                await self._refuse(scope, send, limit)

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        error = ApiError(413, "body_too_large", f"the request body is over {limit} bytes")
        response = error.response(openai=is_openai_path(scope.get("path", "")))
        await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class JsonBodyCheck:
    """Refuses a JSON body that is not UTF-8, or nests deeper than `max_depth`, with a 400 that
    says so (FastAPI answers both with "There was an error parsing the body")."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_JSON_DEPTH) -> None:
        self._app = app
        self._max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_json(scope):
            await self._app(scope, receive, send)
            return
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                await self._app(scope, _replay([message], receive), send)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        if error := self._problem(body):
            response = error.response(openai=is_openai_path(scope.get("path", "")))
            await response(scope, _no_receive, send)
            return
        replayed: Message = {"type": "http.request", "body": body, "more_body": False}
        await self._app(scope, _replay([replayed], receive), send)

    def _problem(self, body: bytes) -> ApiError | None:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return ApiError(
                400,
                "invalid_json",
                f"the request body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at position "
                f"{exc.start}); send JSON encoded as UTF-8",
            )
        if json_too_deep(body, self._max_depth):
            return ApiError(
                400,
                "invalid_json",
                f"the request body's JSON is nested deeper than {self._max_depth} levels",
            )
        return None


def _is_json(scope: Scope) -> bool:
    """The content types that FastAPI parses as JSON: application/json and application/*+json."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            content_type = _ContentType()
            content_type["content-type"] = value.decode("latin-1")
            subtype = content_type.get_content_subtype()
            return content_type.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            )
    return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`messages` first, then what `receive` gets (a disconnect, for a streamed response)."""

    async def replayed() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replayed
