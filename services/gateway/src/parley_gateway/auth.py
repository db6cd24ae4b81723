"""Who is calling: an API key (`Authorization: Bearer <key>`) or a browser session (the
`parley_session` cookie), each mapped to a user by the session service."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from enum import StrEnum

from parley.v1 import session_pb2
from parley_common.vocabulary import AccountRole
from parley_gateway.errors import ApiError
from parley_gateway.session_client import SessionClient

__all__ = ["SESSION_COOKIE", "Authenticator", "Credential", "Principal"]

SESSION_COOKIE = "parley_session"


class Credential(StrEnum):
    API_KEY = "api_key"
    ADMIN_KEY = "admin_key"
    SESSION = "session"  # a cookie, which a browser sends by itself: CSRF applies


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    tenant_id: str = ""
    is_admin: bool = False
    email: str = ""
    name: str = ""
    via: Credential = Credential.API_KEY
    role: AccountRole = AccountRole.MEMBER

    @property
    def read_only(self) -> bool:
        return self.role is AccountRole.VIEWER


def _role(user: session_pb2.User) -> AccountRole:
    return AccountRole.parse(user.role) or AccountRole.MEMBER


class Authenticator:
    """Checks keys with the session service and remembers the answer for a few seconds."""

    def __init__(
        self,
        session: SessionClient,
        *,
        admin_key: str,
        ttl_s: float,
        session_policy: session_pb2.SessionPolicy | None = None,
    ) -> None:
        self._session = session
        self._admin_key = admin_key
        self._ttl_s = ttl_s
        self._session_policy = session_policy or session_pb2.SessionPolicy()
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def authenticate_session(self, token: str) -> Principal:
        """The user of a browser session. Not cached: a signed-out session must end at once,
        on every replica."""
        if not token or len(token) > 256 or not token.isascii():
            raise ApiError(401, "authentication_error", "malformed session cookie; sign in again")
        user = await self._session.authenticate_session(
            session_pb2.AuthenticateSessionRequest(
                session_token=token, session=self._session_policy
            )
        )
        return Principal(
            user_id=user.user_id,
            tenant_id=user.tenant_id,
            email=user.email,
            name=user.name,
            via=Credential.SESSION,
            role=_role(user),
        )

    def forget_user(self, user_id: str) -> None:
        """Drop this replica's remembered keys of a user (disabled or deleted here): they are
        checked again at once; other replicas within the cache's few seconds."""
        for key in [k for k, (_, p) in self._cache.items() if p.user_id == user_id]:
            del self._cache[key]

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise ApiError(
                401, "authentication_error", "missing API key: send 'Authorization: Bearer <key>'"
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key or len(key) > 256 or not key.isascii():
            raise ApiError(
                401,
                "authentication_error",
                "malformed Authorization header: expected 'Bearer <key>'",
            )
        if self._admin_key and hmac.compare_digest(key.encode(), self._admin_key.encode()):
            return Principal(user_id="admin", is_admin=True, via=Credential.ADMIN_KEY)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await self._session.authenticate_key(key)
        principal = Principal(
            user_id=user.user_id,
            tenant_id=user.tenant_id,
            email=user.email,
            name=user.name,
            role=_role(user),
        )
        if self._ttl_s:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now + self._ttl_s, principal)
        return principal
