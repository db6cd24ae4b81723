"""User and API-key management, with the admin key."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from parley.v1 import session_pb2
from parley_common.vocabulary import AccountRole
from parley_gateway.auth import Principal
from parley_gateway.deps import Admin, Caller, PartsDep
from parley_gateway.errors import ApiError
from parley_gateway.schemas import (
    ApiKeyCreated,
    AuditEventOut,
    AuditPage,
    CreateInviteBody,
    CreateKeyBody,
    CreateUserBody,
    ErrorBody,
    InviteCreated,
    SetPasswordBody,
    SetRoleBody,
    UserOut,
)

router = APIRouter(prefix="/admin", tags=["admin"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid key"},
    403: {"model": ErrorBody, "description": "not the admin key"},
    404: {"model": ErrorBody, "description": "no such user or key"},
    422: {"model": ErrorBody, "description": "invalid field"},
}


@router.post("/users", response_model=UserOut, status_code=201, responses=_ERRORS)
async def create_user(body: CreateUserBody, _: Admin, parts: PartsDep) -> UserOut:
    """A user; with `email` and `password`, an account that can sign in on the web page."""
    user = await parts.session.create_user(
        session_pb2.CreateUserRequest(
            name=body.name,
            tenant_id=body.tenant_id,
            email=body.email,
            password=body.password.get_secret_value(),
            role=body.role,
        )
    )
    return _user_out(user)


def _user_out(user: session_pb2.User) -> UserOut:
    return UserOut(
        user_id=user.user_id,
        name=user.name,
        tenant_id=user.tenant_id,
        email=user.email,
        role=user.role,
    )


def _tenant_scope(caller: Principal) -> str | None:
    """The tenant whose users `caller` manages: any with the admin key (None), their own as a
    tenant's admin; anyone else is refused."""
    if caller.is_admin:
        return None
    if caller.role is AccountRole.ADMIN and caller.tenant_id:
        return caller.tenant_id
    raise ApiError(403, "permission_error", "this needs the admin key or a tenant's admin role")


@router.put("/users/{user_id}/role", response_model=UserOut, responses=_ERRORS)
async def set_role(
    user_id: Annotated[str, Path(max_length=64)],
    body: SetRoleBody,
    caller: Caller,
    parts: PartsDep,
) -> UserOut:
    """Set a user's role in their tenant (admin, member, viewer): with the admin key, or as an
    admin of the user's tenant (a user of another tenant is not found)."""
    tenant = _tenant_scope(caller)
    user = await parts.session.set_role(
        session_pb2.SetRoleRequest(
            user_id=user_id, role=body.role, tenant_id=tenant or "", changed_by=caller.user_id
        )
    )
    return _user_out(user)


@router.get("/audit", response_model=AuditPage, responses=_ERRORS)
async def list_audit_events(
    _: Admin,
    parts: PartsDep,
    user_id: Annotated[str, Query(max_length=64)] = "",
    type: Annotated[str, Query(max_length=64, description="e.g. sign_in_failed")] = "",
    since: Annotated[datetime | None, Query(description="at or after: ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="and before: ISO 8601")] = None,
    cursor: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> AuditPage:
    """Security events, newest first: sign-in, failed and locked sign-ins, sign-out, keys
    created and revoked, passwords changed and reset, roles changed."""
    page = await parts.session.list_audit_events(
        session_pb2.ListAuditEventsRequest(
            user_id=user_id,
            type=type,
            since_unix_ms=int(since.timestamp() * 1000) if since else 0,
            until_unix_ms=int(until.timestamp() * 1000) if until else 0,
            cursor=cursor,
            limit=limit,
        )
    )
    return AuditPage(
        events=[
            AuditEventOut(
                event_id=e.event_id,
                at=e.at_unix_ms,
                type=e.type,
                user_id=e.user_id,
                email=e.email,
                client_address=e.client_address,
                detail=e.detail,
            )
            for e in page.events
        ],
        next_cursor=page.next_cursor or None,
    )


@router.post("/users/{user_id}/password", status_code=204, responses=_ERRORS)
async def reset_password(
    user_id: Annotated[str, Path(max_length=64)], body: SetPasswordBody, _: Admin, parts: PartsDep
) -> Response:
    """Set a user's password (a reset): every browser session of the user ends."""
    await parts.session.set_password(
        session_pb2.SetPasswordRequest(
            user_id=user_id, new_password=body.new_password.get_secret_value()
        )
    )
    return Response(status_code=204)


@router.post("/invites", response_model=InviteCreated, status_code=201, responses=_ERRORS)
async def create_invite(body: CreateInviteBody, _: Admin, parts: PartsDep) -> InviteCreated:
    """An invite code for one sign-up (SIGN_UP_MODE=invite), into `tenant_id`."""
    invite = await parts.session.create_invite(
        session_pb2.CreateInviteRequest(tenant_id=body.tenant_id, valid_for_s=body.valid_for_s)
    )
    return InviteCreated(invite_code=invite.invite_code, expires_at=invite.expires_at_ms)


@router.post(
    "/users/{user_id}/keys", response_model=ApiKeyCreated, status_code=201, responses=_ERRORS
)
async def create_key(
    user_id: Annotated[str, Path(max_length=64)], body: CreateKeyBody, _: Admin, parts: PartsDep
) -> ApiKeyCreated:
    key = await parts.session.create_api_key(
        session_pb2.CreateApiKeyRequest(user_id=user_id, name=body.name)
    )
    return ApiKeyCreated(key_id=key.key_id, api_key=key.api_key)


@router.delete("/keys/{key_id}", status_code=204, responses=_ERRORS)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], _: Admin, parts: PartsDep
) -> Response:
    await parts.session.revoke_api_key(session_pb2.RevokeApiKeyRequest(key_id=key_id))
    return Response(status_code=204)
