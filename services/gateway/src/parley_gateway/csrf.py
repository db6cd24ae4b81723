"""CSRF protection for requests authenticated by the session cookie: a state-changing request
(anything but GET, HEAD, OPTIONS) must come from a page of this site, which its `Origin` header
(or, where a browser leaves that out, its `Referer`) proves.

Why an origin check and not a double-submit token: the cookie is `SameSite=Lax`, so other sites
cannot make a browser send it with a POST at all; what is left are sibling sites (another
subdomain of the same site, which Lax lets through) and old browsers, and against both the
`Origin` header does the job: browsers set it on every cross-origin request and on same-origin
`fetch` with a method other than GET or HEAD, and no page can forge it. It needs no token in the
page (nothing for a script to read, nothing to keep in step across tabs), and API clients, which
authenticate with `Authorization` and are not exposed to CSRF, are not affected. A request
without either header is refused: it did not come from a page of ours.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import HTTPConnection

from parley_gateway.errors import ApiError

__all__ = ["SAFE_METHODS", "check_same_origin", "same_origin"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).netloc.lower()
    except ValueError:
        return ""


def same_origin(connection: HTTPConnection) -> bool:
    """Whether the request's Origin (or Referer) names this site: the host it was sent to. The
    scheme is not compared: a TLS-terminating proxy in front of the gateway changes it."""
    host = connection.headers.get("host", "").lower()
    origin = connection.headers.get("origin") or connection.headers.get("referer") or ""
    return bool(host) and origin != "null" and _host_of(origin) == host


def check_same_origin(connection: HTTPConnection, method: str) -> None:
    if method.upper() in SAFE_METHODS or same_origin(connection):
        return
    raise ApiError(
        403,
        "csrf_refused",
        "a request made with the session cookie must come from this site's own page (its "
        "Origin header names another site, or none); API clients send "
        "'Authorization: Bearer <key>' instead",
    )
