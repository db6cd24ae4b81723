"""User and API-key management: with the admin key, of every tenant; as a tenant's admin (the
admin role), of their own tenant only, where a user of another tenant is not found (404). The
changes are in the audit log, with who made them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from parley.v1 import session_pb2
from parley_common.vocabulary import AccountRole
from parley_gateway.auth import Principal
from parley_gateway.deps import Admin, Caller, Parts, PartsDep
from parley_gateway.errors import ApiError
from parley_gateway.routes.keys import key_list
from parley_gateway.schemas import (
    ApiKeyCreated,
    AuditEventOut,
    AuditPage,
    CreateInviteBody,
    CreateKeyBody,
    CreateUserBody,
    ErrorBody,
    InviteCreated,
    KeyList,
    SetPasswordBody,
    SetRoleBody,
    UserOut,
    UserPage,
)

router = APIRouter(prefix="/admin", tags=["admin"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid key"},
    403: {"model": ErrorBody, "description": "not the admin key, nor a tenant's admin"},
    404: {"model": ErrorBody, "description": "no such user or key"},
    422: {"model": ErrorBody, "description": "invalid field"},
}


@router.get("/users", response_model=UserPage, responses=_ERRORS)
async def list_users(
    caller: Caller,
    parts: PartsDep,
    tenant_id: Annotated[
        str | None, Query(max_length=64, description="the admin key's filter; a tenant admin's own")
    ] = None,
    role: Annotated[AccountRole | None, Query()] = None,
    q: Annotated[str, Query(max_length=200, description="start of the e-mail or name")] = "",
    state: Annotated[Literal["active", "disabled"] | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> UserPage:
    """Users, oldest first: every tenant's with the admin key (or `tenant_id`'s), a tenant
    admin's own tenant's."""
    scope = _tenant_scope(caller)
    if scope is not None and tenant_id not in (None, scope):
        raise ApiError(404, "not_found", f"no tenant {tenant_id} of yours")
    tenant = scope if scope is not None else tenant_id
    page = await parts.session.list_tenant_users(
        session_pb2.ListTenantUsersRequest(
            tenant_id=tenant or "",
            any_tenant=tenant is None,
            role=role or "",
            query=q,
            state=state or "",
            offset=offset,
            limit=limit,
        )
    )
    return UserPage(
        users=[_user_out(u) for u in page.users], total=page.total, offset=offset, limit=limit
    )


@router.post("/users", response_model=UserOut, status_code=201, responses=_ERRORS)
async def create_user(body: CreateUserBody, caller: Caller, parts: PartsDep) -> UserOut:
    """A user; with `email` and `password`, an account that can sign in on the web page. A
    tenant's admin creates users in their own tenant (`tenant_id` empty or theirs)."""
    tenant = _own_tenant(caller, body.tenant_id)
    user = await parts.session.create_user(
        session_pb2.CreateUserRequest(
            name=body.name,
            tenant_id=tenant,
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
        disabled=user.disabled,
    )


def _own_tenant(caller: Principal, asked: str) -> str:
    """The tenant a new user or invite goes to: any with the admin key, a tenant admin's own."""
    scope = _tenant_scope(caller)
    if scope is None:
        return asked
    if asked and asked != scope:
        raise ApiError(
            403, "permission_error", f"a tenant's admin adds users to their own tenant ({scope})"
        )
    return scope


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
    caller: Caller,
    parts: PartsDep,
    user_id: Annotated[str, Query(max_length=64)] = "",
    type: Annotated[str, Query(max_length=64, description="e.g. sign_in_failed")] = "",
    since: Annotated[datetime | None, Query(description="at or after: ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="and before: ISO 8601")] = None,
    cursor: Annotated[str, Query(max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> AuditPage:
    """Security events, newest first: sign-in, failed and locked sign-ins, sign-out, keys
    created and revoked, passwords changed and reset, roles changed, users created, disabled,
    enabled and deleted. A tenant's admin reads their tenant's events only."""
    page = await parts.session.list_audit_events(
        session_pb2.ListAuditEventsRequest(
            tenant_id=_tenant_scope(caller) or "",
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
                tenant_id=e.tenant_id,
            )
            for e in page.events
        ],
        next_cursor=page.next_cursor or None,
    )


@router.post("/users/{user_id}/password", status_code=204, responses=_ERRORS)
async def reset_password(
    user_id: Annotated[str, Path(max_length=64)],
    body: SetPasswordBody,
    caller: Caller,
    parts: PartsDep,
) -> Response:
    """Set a user's password (a reset): every browser session of the user ends."""
    await parts.session.set_password(
        session_pb2.SetPasswordRequest(
            user_id=user_id,
            new_password=body.new_password.get_secret_value(),
            tenant_id=_tenant_scope(caller) or "",
            changed_by=caller.user_id,
        )
    )
    return Response(status_code=204)


@router.post("/users/{user_id}/disable", response_model=UserOut, responses=_ERRORS)
async def disable_user(
    user_id: Annotated[str, Path(max_length=64)], caller: Caller, parts: PartsDep
) -> UserOut:
    """Disable a user: their browser sessions end, they cannot sign in, and their API keys are
    refused (within the gateway's AUTH_CACHE_TTL_S) until they are enabled again."""
    return await _set_disabled(user_id, True, caller, parts)


@router.post("/users/{user_id}/enable", response_model=UserOut, responses=_ERRORS)
async def enable_user(
    user_id: Annotated[str, Path(max_length=64)], caller: Caller, parts: PartsDep
) -> UserOut:
    """Enable a disabled user again (their keys work again; they sign in anew)."""
    return await _set_disabled(user_id, False, caller, parts)


async def _set_disabled(user_id: str, disabled: bool, caller: Principal, parts: Parts) -> UserOut:
    if user_id == caller.user_id and disabled:
        raise ApiError(422, "invalid_request", "an admin cannot disable their own account")
    user = await parts.session.set_user_disabled(
        session_pb2.SetUserDisabledRequest(
            user_id=user_id,
            disabled=disabled,
            tenant_id=_tenant_scope(caller) or "",
            changed_by=caller.user_id,
        )
    )
    parts.auth.forget_user(user_id)
    return _user_out(user)


@router.post("/invites", response_model=InviteCreated, status_code=201, responses=_ERRORS)
async def create_invite(body: CreateInviteBody, caller: Caller, parts: PartsDep) -> InviteCreated:
    """An invite code for one sign-up (SIGN_UP_MODE=invite), into `tenant_id` (a tenant
    admin's own tenant)."""
    invite = await parts.session.create_invite(
        session_pb2.CreateInviteRequest(
            tenant_id=_own_tenant(caller, body.tenant_id), valid_for_s=body.valid_for_s
        )
    )
    return InviteCreated(invite_code=invite.invite_code, expires_at=invite.expires_at_ms)


@router.get("/users/{user_id}/keys", response_model=KeyList, responses=_ERRORS)
async def list_user_keys(
    user_id: Annotated[str, Path(max_length=64)], caller: Caller, parts: PartsDep
) -> KeyList:
    """A user's API keys, newest first (their secrets are never shown again)."""
    listed = await parts.session.list_api_keys(
        session_pb2.ListApiKeysRequest(user_id=user_id, tenant_id=_tenant_scope(caller) or "")
    )
    return key_list(listed)


@router.post(
    "/users/{user_id}/keys", response_model=ApiKeyCreated, status_code=201, responses=_ERRORS
)
async def create_key(
    user_id: Annotated[str, Path(max_length=64)],
    body: CreateKeyBody,
    caller: Caller,
    parts: PartsDep,
) -> ApiKeyCreated:
    key = await parts.session.create_api_key(
        session_pb2.CreateApiKeyRequest(
            user_id=user_id, name=body.name, tenant_id=_tenant_scope(caller) or ""
        )
    )
    return ApiKeyCreated(key_id=key.key_id, api_key=key.api_key)


@router.delete("/users/{user_id}/keys/{key_id}", status_code=204, responses=_ERRORS)
async def revoke_user_key(
    user_id: Annotated[str, Path(max_length=64)],
    key_id: Annotated[str, Path(max_length=64)],
    caller: Caller,
    parts: PartsDep,
) -> Response:
    """Revoke one of a user's keys."""
    await parts.session.revoke_api_key(
        session_pb2.RevokeApiKeyRequest(
            key_id=key_id,
            user_id=user_id,
            tenant_id=_tenant_scope(caller) or "",
            revoked_by=caller.user_id,
        )
    )
    return Response(status_code=204)


@router.delete("/keys/{key_id}", status_code=204, responses=_ERRORS)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], _: Admin, parts: PartsDep
) -> Response:
    await parts.session.revoke_api_key(session_pb2.RevokeApiKeyRequest(key_id=key_id))
    return Response(status_code=204)
