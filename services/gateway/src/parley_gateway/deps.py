"""FastAPI dependencies: the wired parts of the gateway and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from parley.v1 import session_pb2_grpc
from parley_gateway.auth import Authenticator, Principal
from parley_gateway.config import Settings
from parley_gateway.errors import ApiError
from parley_gateway.turns import TurnService

__all__ = ["Admin", "Parts", "PartsDep", "User"]


@dataclass
class Parts:
    settings: Settings
    session: session_pb2_grpc.SessionServiceAsyncStub
    auth: Authenticator
    turns: TurnService
    ready: bool = False


def _parts(request: Request) -> Parts:
    parts: Parts = request.app.state.parts
    return parts


PartsDep = Annotated[Parts, Depends(_parts)]


async def _user(
    parts: PartsDep,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
) -> Principal:
    principal = await parts.auth.authenticate(authorization)
    if principal.is_admin:
        raise ApiError(
            403, "permission_error", "the admin key manages users and keys; chat with a user's key"
        )
    return principal


async def _admin(
    parts: PartsDep,
    authorization: Annotated[str | None, Header(description="Bearer <admin API key>")] = None,
) -> Principal:
    principal = await parts.auth.authenticate(authorization)
    if not principal.is_admin:
        raise ApiError(403, "permission_error", "this needs the admin API key")
    return principal


User = Annotated[Principal, Depends(_user)]
Admin = Annotated[Principal, Depends(_admin)]
