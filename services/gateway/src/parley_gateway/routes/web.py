"""The web chat page: static HTML, CSS and JavaScript, no build step and nothing fetched from
elsewhere. The page talks to the same API as every other client, with the key its user enters."""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, RedirectResponse, Response

from parley_gateway.errors import ApiError

router = APIRouter(include_in_schema=False)

_STATIC = files("parley_gateway") / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to this origin.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    path = _STATIC / name
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in _TYPES or "/" in name or name.startswith(".") or not path.is_file():
        raise ApiError(404, "not_found", f"no file {name[:100]!r}")
    return FileResponse(str(path), media_type=_TYPES[suffix], headers=_HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/chat/")
async def chat_page() -> Response:
    return RedirectResponse("/")


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=100)]) -> Response:
    return _file(name)
