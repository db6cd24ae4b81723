"""FastAPI dependencies: the wired parts of the gateway and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from parley.v1 import cache_pb2_grpc
from parley_gateway.admission import QueueMonitor, RateLimiter
from parley_gateway.async_completions import AsyncCompletions
from parley_gateway.auth import SESSION_COOKIE, Authenticator, Principal
from parley_gateway.config import Settings
from parley_gateway.csrf import SAFE_METHODS, check_same_origin
from parley_gateway.errors import ApiError
from parley_gateway.metrics import GatewayMetrics
from parley_gateway.oidc import OidcClient
from parley_gateway.session_client import SessionClient
from parley_gateway.turns import TurnService

__all__ = [
    "Admin",
    "Admitted",
    "CacheControl",
    "Caller",
    "Parts",
    "PartsDep",
    "SessionToken",
    "SignedIn",
    "User",
    "admit",
    "asks_no_cache",
    "authenticate",
]


@dataclass
class Parts:
    settings: Settings
    session: SessionClient
    auth: Authenticator
    turns: TurnService
    limiter: RateLimiter
    queue: QueueMonitor
    async_completions: AsyncCompletions
    metrics: GatewayMetrics
    ready: bool = False
    cache: cache_pb2_grpc.CacheServiceAsyncStub | None = None  # feedback evicts answers
    oidc: OidcClient | None = None  # single sign-on, when configured


async def _parts(request: Request) -> Parts:
    # A coroutine, though it awaits nothing: FastAPI runs a plain function dependency in its
    # thread pool, a hop to another thread and back on every request.
    parts: Parts = request.app.state.parts
    return parts


PartsDep = Annotated[Parts, Depends(_parts)]

CacheControl = Annotated[
    str | None,
    Header(max_length=200, description="`no-cache`: the same as `no_cache: true` in the body"),
]


def asks_no_cache(cache_control: str | None) -> bool:
    """Whether a `Cache-Control` header asks not to be answered from the cache."""
    return "no-cache" in {part.strip().lower() for part in (cache_control or "").split(",")}


# These declare the security schemes in the OpenAPI schema; the header itself is checked by the
# Authenticator, which tells a missing key from a malformed or a revoked one.
_user_key = HTTPBearer(
    scheme_name="ApiKey",
    description="a user's API key (`pk-...`), created with the admin key",
    auto_error=False,
)
_admin_key = HTTPBearer(
    scheme_name="AdminKey", description="the platform's admin key (ADMIN_API_KEY)", auto_error=False
)
_session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="SessionCookie",
    description="a browser session, set by `POST /auth/sign-in`; state-changing requests with "
    "it must come from this site (Origin header)",
    auto_error=False,
)


# The session cookie's value, where an operation reads it itself (sign-out).
SessionToken = Annotated[str | None, Security(_session_cookie)]


async def authenticate(parts: Parts, connection: HTTPConnection, method: str) -> Principal:
    """The caller of an HTTP request or WebSocket: `Authorization` when it is sent, else the
    session cookie, whose state-changing requests must come from this site (`csrf`)."""
    authorization = connection.headers.get("authorization")
    token = connection.cookies.get(SESSION_COOKIE)
    if authorization or not token:
        return await parts.auth.authenticate(authorization)
    check_same_origin(connection, method)
    return await parts.auth.authenticate_session(token)


async def _user(
    parts: PartsDep,
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_user_key)],
    _c: Annotated[str | None, Security(_session_cookie)],
) -> Principal:
    principal = await authenticate(parts, request, request.method)
    _check_writable(principal, request)
    if principal.is_admin:
        raise ApiError(
            403, "permission_error", "the admin key manages users and keys; chat with a user's key"
        )
    return principal


def _check_writable(principal: Principal, request: Request) -> None:
    """A viewer reads; only their own account (sign-out, password, keys) is theirs to change."""
    if (
        principal.read_only
        and request.method not in SAFE_METHODS
        and not request.url.path.startswith(("/auth/", "/keys", "/account"))
    ):
        raise ApiError(
            403,
            "permission_error",
            "a viewer has read-only access; ask an admin for the member role",
        )


async def _admin(
    parts: PartsDep,
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_admin_key)],
) -> Principal:
    principal = await parts.auth.authenticate(request.headers.get("authorization"))
    if not principal.is_admin:
        raise ApiError(403, "permission_error", "this needs the admin API key")
    return principal


async def _caller(
    parts: PartsDep,
    request: Request,
    _u: Annotated[HTTPAuthorizationCredentials | None, Security(_user_key)],
    _a: Annotated[HTTPAuthorizationCredentials | None, Security(_admin_key)],
    _c: Annotated[str | None, Security(_session_cookie)],
) -> Principal:
    principal = await authenticate(parts, request, request.method)
    _check_writable(principal, request)
    return principal


async def _signed_in(
    parts: PartsDep, request: Request, _c: Annotated[str | None, Security(_session_cookie)]
) -> Principal:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise ApiError(401, "authentication_error", "not signed in: POST /auth/sign-in first")
    check_same_origin(request, request.method)
    return await parts.auth.authenticate_session(token)


User = Annotated[Principal, Depends(_user)]
Admin = Annotated[Principal, Depends(_admin)]
# A user or the admin (operations that serve both, each with its own rights).
Caller = Annotated[Principal, Depends(_caller)]
# A user by their browser session (password change, sign-out everywhere).
SignedIn = Annotated[Principal, Depends(_signed_in)]


async def admit(parts: Parts, user: Principal, *, uses_workers: bool = True) -> None:
    """Let `user` start a generation now, or refuse: the workers' queue is full (503) or the
    user is over a rate limit (429). Checked in this order, so a 503 costs no quota. A request
    that no worker serves (`uses_workers=False`: embeddings) is checked against the limits only,
    and counts in the request budgets here; a turn's budgets are reserved with its tokens once
    its prompt is known (`TurnService`)."""
    if user.read_only:
        raise ApiError(403, "permission_error", "a viewer has read-only access and cannot chat")
    try:
        if uses_workers:
            parts.queue.check()
    except ApiError:
        parts.metrics.admission_refusals.labels("queue_full").inc()
        raise
    try:
        await parts.limiter.admit(user, budgets=not uses_workers)
    except ApiError as exc:
        if exc.status == 429:
            parts.metrics.admission_refusals.labels(exc.code or "requests_per_minute").inc()
        raise


async def _admitted(user: User, parts: PartsDep) -> Principal:
    await admit(parts, user)
    return user


Admitted = Annotated[Principal, Depends(_admitted)]
