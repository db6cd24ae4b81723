"""Single sign-on: `GET /auth/oidc/login` sends the browser to the OpenID Provider, which sends
it back to `GET /auth/oidc/callback`; that checks `state`, exchanges the code (with its PKCE
verifier), checks the ID token (`oidc.py`) and signs the user in with a session cookie, as the
password sign-in does. Configured with OIDC_ISSUER and its client; 404 without."""

from __future__ import annotations

import base64
import hmac
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse

from parley.v1 import session_pb2
from parley_gateway.auth import SESSION_COOKIE
from parley_gateway.deps import PartsDep
from parley_gateway.errors import ApiError
from parley_gateway.oidc import OidcClient
from parley_gateway.routes.accounts import safe_next, session_cookie, session_policy
from parley_gateway.schemas import ErrorBody

__all__ = ["FLOW_COOKIE", "router"]

router = APIRouter(prefix="/auth/oidc", tags=["accounts"])

FLOW_COOKIE = "parley_oidc"
_FLOW_PATH = "/auth/oidc"
_FLOW_MAX_AGE_S = 600

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "no sign-in under way, or its state does not match"},
    401: {"model": ErrorBody, "description": "the provider or its ID token refused"},
    404: {"model": ErrorBody, "description": "single sign-on is not configured"},
    422: {"model": ErrorBody, "description": "invalid parameter"},
    503: {"model": ErrorBody, "description": "the identity provider is unreachable"},
}


def _client(parts: PartsDep) -> OidcClient:
    if parts.oidc is None:
        raise ApiError(404, "not_found", "single sign-on is not configured (OIDC_ISSUER)")
    return parts.oidc


@router.get("/login", status_code=302, responses=_ERRORS)
async def login(
    parts: PartsDep,
    request: Request,
    next: Annotated[str, Query(max_length=2048)] = "/",
) -> RedirectResponse:
    """Start single sign-on: a redirect to the provider's authorization endpoint."""
    target = safe_next(next)
    started = await _client(parts).login()
    flow = {
        "state": started.state,
        "nonce": started.nonce,
        "verifier": started.code_verifier,
        "next": target,
    }
    response = RedirectResponse(started.url, status_code=302)
    response.set_cookie(
        FLOW_COOKIE,
        base64.urlsafe_b64encode(json.dumps(flow).encode()).decode(),
        max_age=_FLOW_MAX_AGE_S,
        path=_FLOW_PATH,
        secure=parts.settings.session_cookie_secure or request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _flow(request: Request) -> dict[str, str]:
    raw = request.cookies.get(FLOW_COOKIE, "")
    try:
        flow = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except ValueError:
        flow = None
    if (
        not raw
        or not isinstance(flow, dict)
        or not all(isinstance(flow.get(k), str) for k in ("state", "nonce", "verifier", "next"))
    ):
        raise ApiError(
            400,
            "invalid_request",
            "no single sign-on is under way in this browser (or it took over 10 minutes); "
            "start again at /auth/oidc/login",
        )
    return flow


@router.get("/callback", status_code=303, responses=_ERRORS)
async def callback(
    parts: PartsDep,
    request: Request,
    state: Annotated[str, Query(max_length=512)] = "",
    code: Annotated[str, Query(max_length=2048)] = "",
    error: Annotated[str, Query(max_length=256)] = "",
) -> RedirectResponse:
    """Where the provider sends the browser back: signs in and redirects to `next`."""
    client = _client(parts)
    flow = _flow(request)
    if error:
        raise ApiError(401, "authentication_error", f"the identity provider answered {error!r}")
    if not state or not hmac.compare_digest(state.encode(), flow["state"].encode()):
        raise ApiError(
            400,
            "invalid_request",
            "the sign-in's state does not match this browser's (a forged or replayed callback)",
        )
    if not code:
        raise ApiError(400, "invalid_request", "the callback carries no authorization code")
    identity = await client.finish(code=code, code_verifier=flow["verifier"], nonce=flow["nonce"])
    settings = parts.settings
    result = await parts.session.sign_in_with_identity(
        session_pb2.SignInWithIdentityRequest(
            issuer=identity.issuer,
            subject=identity.subject,
            email=identity.email,
            email_verified=identity.email_verified,
            name=identity.name,
            role=identity.role or "",
            tenant_id=settings.oidc_tenant_id,
            client_address=request.client.host if request.client else "",
            session=session_policy(settings),
            replaces_session_token=request.cookies.get(SESSION_COOKIE, "")[:256],
        )
    )
    response = RedirectResponse(safe_next(flow["next"]), status_code=303)
    session_cookie(response, request, settings, result.session_token)
    response.delete_cookie(FLOW_COOKIE, path=_FLOW_PATH, httponly=True, samesite="lax")
    return response
