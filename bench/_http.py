"""A small HTTP/1.1 client on raw asyncio streams, for load generation.

httpx costs about a millisecond of CPU a request; on a 2-core machine shared with the services
that would be measured as platform latency. This client does only what the benchmarks need:
one keep-alive connection per simulated client, JSON bodies, Content-Length or chunked
responses, and Server-Sent Events read as they arrive::

    async with Connection("127.0.0.1", 8080) as conn:
        reply = await conn.request("POST", "/chat", {"message": "hi"}, key)
        async for event, data, at in conn.events("POST", "/chat", {"message": "hi", "stream": True}, key):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["Connection", "HttpError", "Reply"]


class HttpError(Exception):
    """A status that is not 2xx, or a connection that broke mid-response."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, *, timeout: float = 180.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def request(self, method: str, path: str, body: Any = None, key: str = "") -> Reply:
        """Send a request and read the whole response."""
        async with asyncio.timeout(self.timeout):
            reader = await self._send(method, path, body, key)
            status, headers = await _read_head(reader)
            chunks = [piece async for piece in _body(reader, headers)]
            if headers.get("connection", "").lower() == "close":
                await self.close()
            return Reply(status, headers, b"".join(chunks))

    async def events(
        self, method: str, path: str, body: Any = None, key: str = ""
    ) -> AsyncIterator[tuple[str, Any, float]]:
        """Send a request answered by an event stream; yield (event, data, perf_counter) as
        each event arrives. A non-2xx status raises HttpError."""
        async with asyncio.timeout(self.timeout):
            reader = await self._send(method, path, body, key)
            status, headers = await _read_head(reader)
            if not 200 <= status < 300:
                rest = b"".join([piece async for piece in _body(reader, headers)])
                raise HttpError(status, rest.decode(errors="replace"))
            buffer = ""
            async for piece in _body(reader, headers):
                at = time.perf_counter()
                buffer += piece.decode()
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    event, data = "message", ""
                    for line in block.splitlines():
                        name, _, value = line.partition(": ")
                        if name == "event":
                            event = value
                        elif name == "data":
                            data = value
                    yield event, json.loads(data) if data else None, at

    async def _send(self, method: str, path: str, body: Any, key: str) -> asyncio.StreamReader:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=2**20
            )
        assert self._reader is not None
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if key:
            head.append(f"Authorization: Bearer {key}")
        if body is not None:
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}")
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        return self._reader


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise HttpError(0, "the server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length:
            yield await reader.readexactly(length)
    else:
        yield await reader.read()
