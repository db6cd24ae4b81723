"""Single sign-on with OpenID Connect: the authorization code flow with PKCE, through Authlib's
OAuth 2 client, and the ID token checked with joserfc against the provider's JWKS.

- Discovery: the provider's `/.well-known/openid-configuration`, read once and kept.
- JWKS: kept; a token signed with a key id it does not have makes it read the JWKS again once
  (the provider rotated its keys), a token whose key is still unknown is refused.
- `state` (against CSRF on the callback) and `nonce` (against a replayed ID token) are random,
  kept with the PKCE verifier in a short-lived HttpOnly cookie of this site, and used once.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from parley_common.vocabulary import AccountRole
from parley_gateway.errors import ApiError

__all__ = ["Identity", "LoginRequest", "OidcClient", "group_roles"]

_ROLE_RANK = {AccountRole.VIEWER: 0, AccountRole.MEMBER: 1, AccountRole.ADMIN: 2}


def group_roles(value: str) -> dict[str, AccountRole]:
    """`"parley-admins=admin, readers=viewer"` -> {group: role}."""
    roles: dict[str, AccountRole] = {}
    for pair in filter(None, (p.strip() for p in value.split(","))):
        group, _, role_name = pair.partition("=")
        role = AccountRole.parse(role_name.strip())
        if not group.strip() or role is None:
            raise ValueError(
                f"OIDC_GROUP_ROLES: {pair!r} is not group=role (role: admin, member or viewer)"
            )
        roles[group.strip()] = role
    return roles


@dataclass(frozen=True, slots=True)
class LoginRequest:
    url: str  # where to send the browser
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True, slots=True)
class Identity:
    issuer: str
    subject: str
    email: str
    email_verified: bool
    name: str
    role: AccountRole | None


class OidcClient:
    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        scopes: str,
        groups_claim: str,
        roles: dict[str, AccountRole],
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self._scopes = scopes
        self._groups_claim = groups_claim
        self._roles = roles
        self._http = http or httpx.AsyncClient(timeout=10)
        self._metadata: dict[str, Any] | None = None
        self._jwks: KeySet | None = None
        self._refreshed_at = -math.inf

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _discover(self) -> dict[str, Any]:
        if self._metadata is None:
            try:
                response = await self._http.get(f"{self.issuer}/.well-known/openid-configuration")
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise _unavailable(f"its discovery document could not be read ({exc})") from exc
            metadata: dict[str, Any] = response.json()
            if metadata.get("issuer", "").rstrip("/") != self.issuer:
                raise _unavailable("its discovery document names another issuer")
            self._metadata = metadata
        return self._metadata

    def _oauth(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self._client_id,
            client_secret=self._client_secret,
            scope=self._scopes,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            timeout=10,
        )

    async def login(self) -> LoginRequest:
        metadata = await self._discover()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        async with self._oauth() as oauth:
            url, _ = oauth.create_authorization_url(
                metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
            )
        return LoginRequest(url=url, state=state, nonce=nonce, code_verifier=verifier)

    async def finish(self, *, code: str, code_verifier: str, nonce: str) -> Identity:
        """Exchange the code for tokens and check the ID token: signature (JWKS), issuer,
        audience, expiry and nonce."""
        metadata = await self._discover()
        try:
            async with self._oauth() as oauth:
                token = await oauth.fetch_token(
                    metadata["token_endpoint"], code=code, code_verifier=code_verifier
                )
        except Exception as exc:  # Authlib raises its OAuthError and httpx's errors
            raise ApiError(
                401, "authentication_error", f"the identity provider refused the sign-in: {exc}"
            ) from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise ApiError(401, "authentication_error", "the identity provider sent no ID token")
        claims = await self.check_id_token(id_token, nonce=nonce)
        return self._identity(claims)

    async def check_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        keys = await self._keys(refresh=False)
        try:
            decoded = jwt.decode(id_token, keys, algorithms=["RS256", "ES256", "PS256"])
        except (JoseError, ValueError):
            # Perhaps signed with a key the provider has rotated in since the JWKS was read.
            keys = await self._keys(refresh=True)
            try:
                decoded = jwt.decode(id_token, keys, algorithms=["RS256", "ES256", "PS256"])
            except (JoseError, ValueError) as exc:
                raise ApiError(
                    401, "authentication_error", f"the ID token's signature does not check: {exc}"
                ) from exc
        registry = jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self._client_id},
            sub={"essential": True},
            exp={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise ApiError(
                401, "authentication_error", f"the ID token is not valid here: {exc}"
            ) from exc
        return dict(decoded.claims)

    async def _keys(self, *, refresh: bool) -> KeySet:
        # At most one refresh every few seconds: tokens with made-up key ids must not make us
        # hammer the provider.
        if refresh and time.monotonic() - self._refreshed_at < 5:
            refresh = False
        if self._jwks is None or refresh:
            metadata = await self._discover()
            try:
                response = await self._http.get(metadata["jwks_uri"])
                response.raise_for_status()
                self._jwks = KeySet.import_key_set(response.json())
            except (httpx.HTTPError, ValueError, JoseError) as exc:
                raise _unavailable(f"its JWKS could not be read ({exc})") from exc
            if refresh:
                self._refreshed_at = time.monotonic()
        return self._jwks

    def _identity(self, claims: dict[str, Any]) -> Identity:
        groups = claims.get(self._groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        matched = [self._roles[g] for g in groups if isinstance(g, str) and g in self._roles]
        return Identity(
            issuer=self.issuer,
            subject=str(claims["sub"]),
            email=str(claims.get("email") or ""),
            email_verified=claims.get("email_verified") is True,
            name=str(claims.get("name") or ""),
            role=max(matched, key=_ROLE_RANK.__getitem__) if matched else None,
        )


def _unavailable(why: str) -> ApiError:
    return ApiError(
        503,
        "service_unavailable",
        f"the identity provider is unavailable: {why}; retry shortly",
        retry_after_s=5,
    )
