"""A user's own API keys, for programmatic use: list, create (shown once), revoke."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from parley.v1 import session_pb2
from parley_gateway.deps import PartsDep, User
from parley_gateway.schemas import ApiKeyCreated, CreateKeyBody, ErrorBody, KeyList, KeyOut

__all__ = ["key_list", "router"]

router = APIRouter(prefix="/keys", tags=["keys"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid key or session"},
    404: {"model": ErrorBody, "description": "no such active key of yours"},
    422: {"model": ErrorBody, "description": "invalid field"},
}


@router.get("", response_model=KeyList, responses=_ERRORS)
async def list_keys(user: User, parts: PartsDep) -> KeyList:
    """Your API keys, newest first (their secrets are never shown again)."""
    listed = await parts.session.list_api_keys(session_pb2.ListApiKeysRequest(user_id=user.user_id))
    return key_list(listed)


def key_list(listed: session_pb2.ListApiKeysResponse) -> KeyList:
    return KeyList(
        keys=[
            KeyOut(
                key_id=k.key_id,
                name=k.name,
                created_at=k.created_unix_ms,
                revoked_at=k.revoked_unix_ms or None,
            )
            for k in listed.keys
        ]
    )


@router.post("", response_model=ApiKeyCreated, status_code=201, responses=_ERRORS)
async def create_key(body: CreateKeyBody, user: User, parts: PartsDep) -> ApiKeyCreated:
    """A new API key of yours, shown once; only its hash is stored."""
    key = await parts.session.create_api_key(
        session_pb2.CreateApiKeyRequest(user_id=user.user_id, name=body.name)
    )
    return ApiKeyCreated(key_id=key.key_id, api_key=key.api_key)


@router.delete("/{key_id}", status_code=204, responses=_ERRORS)
async def revoke_key(
    key_id: Annotated[str, Path(max_length=64)], user: User, parts: PartsDep
) -> Response:
    await parts.session.revoke_api_key(
        session_pb2.RevokeApiKeyRequest(key_id=key_id, user_id=user.user_id)
    )
    return Response(status_code=204)
