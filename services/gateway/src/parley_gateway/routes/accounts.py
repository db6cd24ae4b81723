"""Accounts and browser sessions: sign-up, sign-in with e-mail and password (a session cookie:
`HttpOnly`, `SameSite=Lax`, `Secure` on HTTPS), sign-out (here or everywhere), password change.

The cookie's value is an opaque token the page never sees; the session service keeps only its
hash. Signing in always starts a new session and ends the one the browser had (no fixation).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse

from parley.v1 import session_pb2
from parley_gateway.auth import SESSION_COOKIE
from parley_gateway.config import Settings, SignUpMode
from parley_gateway.csrf import check_same_origin
from parley_gateway.deps import Caller, PartsDep, SessionToken, SignedIn
from parley_gateway.errors import ApiError
from parley_gateway.schemas import (
    AccountDeleted,
    ChangePasswordBody,
    DeleteAccountBody,
    ErrorBody,
    SignInBody,
    SignInMethods,
    SignOutBody,
    SignUpBody,
    UserOut,
)
from parley_gateway.schemas import (
    SignedIn as SignedInOut,
)

__all__ = ["account_router", "router", "safe_next", "session_cookie", "session_policy"]

router = APIRouter(prefix="/auth", tags=["accounts"])
account_router = APIRouter(prefix="/account", tags=["accounts"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "`next` is not a path on this site"},
    401: {"model": ErrorBody, "description": "wrong e-mail address or password, or signed out"},
    403: {"model": ErrorBody, "description": "sign-up closed, bad invite, or a cross-site request"},
    409: {"model": ErrorBody, "description": "an account with this e-mail address exists"},
    422: {"model": ErrorBody, "description": "invalid field"},
    429: {"model": ErrorBody, "description": "too many failed sign-ins: locked until Retry-After"},
}


def safe_next(target: str) -> str:
    """`target` when it is a path on this site, else 400: a sign-in link must not send the
    browser to another site afterwards (an open redirect that phishing pages use)."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or "\\" in target
        or any(ord(c) < 0x20 or c == "\x7f" for c in target)
    ):
        raise ApiError(
            400,
            "invalid_request",
            "next must be a path on this site (starting with a single '/'), not another address",
            param="next",
        )
    return target


def session_policy(settings: Settings) -> session_pb2.SessionPolicy:
    return session_pb2.SessionPolicy(
        idle_timeout_s=settings.session_idle_timeout_s,
        absolute_timeout_s=settings.session_absolute_timeout_s,
    )


def session_cookie(response: Response, request: Request, settings: Settings, token: str) -> None:
    """Set the session cookie: HttpOnly (no script reads it), SameSite=Lax (other sites'
    pages do not send it with their POSTs), Secure on HTTPS or when configured."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_absolute_timeout_s,
        path="/",
        secure=settings.session_cookie_secure or request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )
    response.headers["Cache-Control"] = "no-store"


def _check_origin_if_sent(request: Request) -> None:
    """Sign-up and sign-in need no cookie, but a page of another site must not sign a browser
    in to an account of its choosing (login CSRF): refused when its Origin is another site's."""
    if request.headers.get("origin") or request.headers.get("referer"):
        check_same_origin(request, request.method)


def _user_out(user: session_pb2.User) -> UserOut:
    return UserOut(user_id=user.user_id, name=user.name, tenant_id=user.tenant_id, email=user.email)


async def _sign_in(
    parts: PartsDep, request: Request, response: Response, email: str, password: str, next_: str
) -> SignedInOut:
    settings = parts.settings
    result = await parts.session.sign_in(
        session_pb2.SignInRequest(
            email=email,
            password=password,
            client_address=request.client.host if request.client else "",
            max_failures_per_account=settings.sign_in_max_failures_per_account,
            max_failures_per_address=settings.sign_in_max_failures_per_address,
            failure_window_s=settings.sign_in_failure_window_s,
            session=session_policy(settings),
            replaces_session_token=request.cookies.get(SESSION_COOKIE, "")[:256],
        )
    )
    outcome = session_pb2.SignInResponse
    if result.outcome in (outcome.OUTCOME_ACCOUNT_LOCKED, outcome.OUTCOME_ADDRESS_LOCKED):
        retry_after = max(1, math.ceil(result.retry_after_ms / 1000))
        whose = (
            "this account" if result.outcome == outcome.OUTCOME_ACCOUNT_LOCKED else ("this address")
        )
        raise ApiError(
            429,
            "rate_limited",
            f"too many failed sign-ins for {whose}; try again in {retry_after} s",
            retry_after_s=retry_after,
            code="account_locked"
            if result.outcome == outcome.OUTCOME_ACCOUNT_LOCKED
            else "address_locked",
        )
    if result.outcome != outcome.OUTCOME_SIGNED_IN:
        raise ApiError(401, "authentication_error", "wrong e-mail address or password")
    session_cookie(response, request, settings, result.session_token)
    return SignedInOut(user=_user_out(result.user), next=next_, expires_at=result.expires_at_ms)


@router.post("/sign-up", response_model=SignedInOut, status_code=201, responses=_ERRORS)
async def sign_up(
    body: SignUpBody, request: Request, response: Response, parts: PartsDep
) -> SignedInOut:
    """Create an account (as `SIGN_UP_MODE` allows) and sign in to it."""
    _check_origin_if_sent(request)
    mode = parts.settings.sign_up_mode
    if mode == SignUpMode.CLOSED:
        raise ApiError(403, "permission_error", "sign-up is closed; ask an administrator")
    password = body.password.get_secret_value()
    await parts.session.sign_up(
        session_pb2.SignUpRequest(
            email=body.email,
            password=password,
            name=body.name,
            invite_code=body.invite_code,
            require_invite=mode == SignUpMode.INVITE,
        )
    )
    return await _sign_in(parts, request, response, body.email, password, "/")


@router.post("/sign-in", response_model=SignedInOut, responses=_ERRORS)
async def sign_in(
    body: SignInBody, request: Request, response: Response, parts: PartsDep
) -> SignedInOut:
    """Sign in with e-mail and password: sets the session cookie, ending the browser's previous
    session. Failures are counted per account and per client address (429 past the limit)."""
    _check_origin_if_sent(request)
    next_ = safe_next(body.next)
    return await _sign_in(
        parts, request, response, body.email, body.password.get_secret_value(), next_
    )


@router.post("/sign-out", status_code=204, responses=_ERRORS)
async def sign_out(
    request: Request,
    parts: PartsDep,
    cookie: SessionToken,
    body: Annotated[SignOutBody | None, Body()] = None,
) -> Response:
    """End this browser's session, or with `everywhere` every session of the account."""
    token = cookie or ""
    response = Response(status_code=204)
    if token:
        check_same_origin(request, request.method)
        await parts.session.sign_out(
            session_pb2.SignOutRequest(
                session_token=token[:256], everywhere=bool(body and body.everywhere)
            )
        )
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@router.get("/methods", response_model=SignInMethods)
async def methods(parts: PartsDep) -> SignInMethods:
    """How one may sign in here (the page shows the single sign-on button when there is one)."""
    return SignInMethods(
        password=True,
        oidc=parts.oidc is not None,
        sign_up=parts.settings.sign_up_mode.value,
    )


@router.get("/me", response_model=UserOut, responses=_ERRORS)
async def me(caller: Caller) -> UserOut:
    """Who this request is from (the page asks it to learn whether it is signed in)."""
    return UserOut(
        user_id=caller.user_id,
        name=caller.name,
        tenant_id=caller.tenant_id,
        email=caller.email,
        role=caller.role,
    )


@router.post("/password", status_code=204, responses=_ERRORS)
async def change_password(
    body: ChangePasswordBody, request: Request, user: SignedIn, parts: PartsDep
) -> Response:
    """Change the password: every other session of the account ends."""
    await parts.session.change_password(
        session_pb2.ChangePasswordRequest(
            user_id=user.user_id,
            current_password=body.current_password.get_secret_value(),
            new_password=body.new_password.get_secret_value(),
            keep_session_token=request.cookies.get(SESSION_COOKIE, ""),
        )
    )
    return Response(status_code=204)


@account_router.delete("", response_model=AccountDeleted, responses=_ERRORS)
async def delete_account(body: DeleteAccountBody, caller: Caller, parts: PartsDep) -> Response:
    """Delete your account: your chats, messages and feedback (what `DELETE /chats` deletes),
    your API keys and sessions, and the account. Confirm with your `password`, or for an
    account without one (single sign-on) with `confirm: true`. The browser is signed out; the
    audit log keeps that an account was deleted, not who it was."""
    if caller.is_admin:
        raise ApiError(403, "permission_error", "the admin key has no account to delete")
    deleted = await parts.session.delete_account(
        session_pb2.DeleteAccountRequest(
            user_id=caller.user_id,
            password=body.password.get_secret_value(),
            confirmed=body.confirm,
        )
    )
    parts.auth.forget_user(caller.user_id)
    response = JSONResponse(
        AccountDeleted(
            chats_deleted=deleted.chats_deleted,
            keys_deleted=deleted.keys_deleted,
            sessions_ended=deleted.sessions_ended,
        ).model_dump()
    )
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response
