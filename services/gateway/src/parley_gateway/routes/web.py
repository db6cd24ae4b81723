"""The web chat page: static HTML, CSS and JavaScript, and under static/vendor/ the libraries it
renders with (markdown-it, DOMPurify, highlight.js, KaTeX), put there at build time by
scripts/build-web.sh from the npm registry with web/package-lock.json. Nothing is fetched from
elsewhere at run time, and the page talks only to this origin, with the session cookie."""

from __future__ import annotations

import logging
import re
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, RedirectResponse, Response

from parley_gateway.errors import ApiError

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

_STATIC = files("parley_gateway") / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}
# The page loads only its own files and talks only to this origin: no inline script or style,
# no eval (KaTeX sets its inline sizes through the DOM, which the policy allows).
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The libraries' file names: letters, digits, `-`, `_`, `.`, one folder deep (fonts/).
_VENDOR_PATH = re.compile(r"(?:[A-Za-z0-9_-]+/)?[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# What the page needs from the build; the page says so when they are missing.
VENDOR_FILES = ("markdown-it.min.js", "purify.min.js", "highlight.min.js", "katex.min.js")


def vendor_built() -> bool:
    vendor = _STATIC / "vendor"
    return all((vendor / name).is_file() for name in VENDOR_FILES)


def warn_if_not_built() -> None:
    """The gateway serves its API without the page's libraries; the page then says it was not
    built, and so does this line in the log."""
    if not vendor_built():
        log.warning(
            "the web page's libraries are missing from parley_gateway/static/vendor/: run "
            "scripts/build-web.sh (make install does); the page shows answers as plain text"
        )


def _file(name: str, folder: str = "") -> Response:
    path = _STATIC / folder / name if folder else _STATIC / name
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in _TYPES or name.startswith(".") or not path.is_file():
        raise ApiError(404, "not_found", f"no file {name[:100]!r}")
    return FileResponse(str(path), media_type=_TYPES[suffix], headers=_HEADERS)


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/chat/")
async def chat_page() -> Response:
    return RedirectResponse("/")


@router.get("/static/vendor/{name:path}")
async def vendor(name: Annotated[str, Path(max_length=100)]) -> Response:
    if not _VENDOR_PATH.fullmatch(name):
        raise ApiError(404, "not_found", f"no file {name[:100]!r}")
    return _file(name, "vendor")


@router.get("/static/{name}")
async def static(name: Annotated[str, Path(max_length=100)]) -> Response:
    if "/" in name:
        raise ApiError(404, "not_found", f"no file {name[:100]!r}")
    return _file(name)
