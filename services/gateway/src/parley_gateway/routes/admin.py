"""User and API-key management, with the admin key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from parley.v1 import session_pb2
from parley_gateway.deps import Admin, PartsDep
from parley_gateway.schemas import (
    ApiKeyCreated,
    CreateInviteBody,
    CreateKeyBody,
    CreateUserBody,
    ErrorBody,
    InviteCreated,
    SetPasswordBody,
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
        )
    )
    return UserOut(user_id=user.user_id, name=user.name, tenant_id=user.tenant_id, email=user.email)


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
