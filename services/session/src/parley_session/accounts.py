"""Accounts and browser sessions, the use-cases behind sign-up, sign-in and sign-out: plain
values in and out; the stores hold MongoDB.

Sign-in counts an attempt against the account and the client address *before* it checks the
password, so that concurrent guesses cannot all slip under the limit; a success takes its
attempt back (the account's window is cleared), a failure leaves it counted. The limits and the
sessions' lifetimes come from the caller (the gateway's settings), as the rate limits do.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from parley_common.ids import new_id
from parley_session.domain import (
    AlreadyExistsError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UserNotFoundError,
)
from parley_session.passwords import Passwords, check_password
from parley_session.stores import AuditEvent, BrowserSession, EmailTakenError, Stores, UserDoc

__all__ = [
    "AccountDeleted",
    "Accounts",
    "ExternalIdentity",
    "SessionPolicy",
    "SignInOutcome",
    "SignInPolicy",
    "SignInResult",
    "normalize_email",
]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
MAX_EMAIL_CHARS = 254


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(email):
        raise InvalidArgumentError("email", "must be an e-mail address (name@example.com)")
    return email


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    issuer: str
    subject: str
    email: str = ""
    email_verified: bool = False
    name: str = ""
    role: str = ""  # from the groups claim; "" leaves the user's
    tenant_id: str = ""
    client_address: str = ""


@dataclass(frozen=True, slots=True)
class SignInPolicy:
    max_failures_per_account: int  # 0: no limit
    max_failures_per_address: int
    window_s: int
    session: SessionPolicy


class SignInOutcome(StrEnum):
    SIGNED_IN = "signed_in"
    INVALID_CREDENTIALS = "invalid_credentials"
    ACCOUNT_LOCKED = "account_locked"
    ADDRESS_LOCKED = "address_locked"


@dataclass(frozen=True, slots=True)
class SignInResult:
    outcome: SignInOutcome
    user: UserDoc | None = None
    session: BrowserSession | None = None
    retry_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AccountDeleted:
    chats: int
    keys: int
    sessions: int


DataDeleter = Callable[[str], Awaitable[int]]  # a user's stored data deleted; how many chats


_DISABLED = "this account is disabled; ask an admin of your tenant"


class Accounts:
    def __init__(self, store: Stores, passwords: Passwords | None = None) -> None:
        self._store = store
        self._passwords = passwords or Passwords()

    async def create(
        self,
        *,
        email: str,
        password: str,
        name: str,
        tenant_id: str = "",
        user_id: str = "",
        role: str = "member",
    ) -> UserDoc:
        email = normalize_email(email)
        check_password(password)
        try:
            user = await self._store.users.create_user(
                name or email.split("@", 1)[0],
                tenant_id,
                email=email,
                password_hash=await self._passwords.hash(password),
                user_id=user_id,
                role=role,
            )
        except EmailTakenError:
            raise AlreadyExistsError(
                f"an account with the e-mail address {email} exists; sign in instead"
            ) from None
        await self._audit("user_created", user.user_id, email, detail=f"tenant={tenant_id}")
        return user

    async def _audit(
        self, type_: str, user_id: str, email: str = "", address: str = "", detail: str = ""
    ) -> None:
        await self._store.audit.record(
            AuditEvent(type_, user_id, email=email, client_address=address, detail=detail)
        )

    async def sign_up(
        self, *, email: str, password: str, name: str, invite_code: str, require_invite: bool
    ) -> UserDoc:
        email = normalize_email(email)
        check_password(password)
        if not require_invite:
            return await self.create(email=email, password=password, name=name)
        if not invite_code:
            raise PermissionDeniedError("sign-up needs an invite code from an administrator")
        user_id = new_id()
        invite = await self._store.sign_in.redeem_invite(invite_code, user_id)
        if invite is None:
            raise PermissionDeniedError("the invite code is unknown, used or expired")
        try:
            return await self.create(
                email=email,
                password=password,
                name=name,
                tenant_id=str(invite.get("tenant_id", "")),
                user_id=user_id,
            )
        except BaseException:
            await self._store.sign_in.release_invite(invite_code, user_id)
            raise

    async def sign_in(
        self,
        *,
        email: str,
        password: str,
        client_address: str,
        policy: SignInPolicy,
        replaces_token: str = "",
    ) -> SignInResult:
        email = normalize_email(email)
        if len(password) > 1024:
            return SignInResult(SignInOutcome.INVALID_CREDENTIALS)
        attempts = self._store.sign_in
        account, address = f"account:{email}", f"address:{client_address}"
        if policy.max_failures_per_address and client_address:
            counted = await attempts.count_attempt(address, policy.window_s)
            if counted.count > policy.max_failures_per_address:
                await self._audit("sign_in_locked", "", email, client_address, "address")
                return SignInResult(
                    SignInOutcome.ADDRESS_LOCKED, retry_after_s=counted.retry_after_s
                )
        if policy.max_failures_per_account:
            counted = await attempts.count_attempt(account, policy.window_s)
            if counted.count > policy.max_failures_per_account:
                await self._audit("sign_in_locked", "", email, client_address, "account")
                return SignInResult(
                    SignInOutcome.ACCOUNT_LOCKED, retry_after_s=counted.retry_after_s
                )
        found = await self._store.users.find_account(email)
        ok = await self._passwords.verify(found[1] if found else None, password)
        if found is None or not ok:
            user_id = found[0].user_id if found else ""
            reason = "wrong password" if found else "unknown e-mail address"
            await self._audit("sign_in_failed", user_id, email, client_address, reason)
            return SignInResult(SignInOutcome.INVALID_CREDENTIALS)
        if policy.max_failures_per_account:
            await attempts.clear(account, policy.window_s)
        if policy.max_failures_per_address and client_address:
            await attempts.forgive_attempt(address, policy.window_s)
        if found[0].disabled:
            await self._audit("sign_in_failed", found[0].user_id, email, client_address, "disabled")
            raise PermissionDeniedError(_DISABLED)
        if replaces_token:
            await self._store.browser_sessions.revoke(replaces_token)
        session = await self._store.browser_sessions.create(
            found[0].user_id, idle=policy.session.idle, absolute=policy.session.absolute
        )
        await self._audit("sign_in", found[0].user_id, email, client_address)
        return SignInResult(SignInOutcome.SIGNED_IN, user=found[0], session=session)

    async def sign_in_with_identity(
        self, identity: ExternalIdentity, *, policy: SessionPolicy, replaces_token: str = ""
    ) -> SignInResult:
        """A user checked by an OpenID Provider: matched by issuer and subject, else linked by
        a verified e-mail address, else created. An unverified address is not trusted to
        name an account."""
        users = self._store.users
        user = await users.find_by_identity(identity.issuer, identity.subject)
        email = normalize_email(identity.email) if identity.email else ""
        if user is None and email and identity.email_verified:
            found = await users.find_account(email)
            if found is not None:
                user = found[0]
                await users.link_identity(user.user_id, identity.issuer, identity.subject)
        if user is None:
            try:
                user = await users.create_user(
                    identity.name or (email.split("@", 1)[0] if email else identity.subject),
                    identity.tenant_id,
                    email=email if identity.email_verified else "",
                    role=identity.role or "member",
                )
            except EmailTakenError:
                user = await users.create_user(
                    identity.name or identity.subject, identity.tenant_id
                )
            await users.link_identity(user.user_id, identity.issuer, identity.subject)
            await self._audit("user_created", user.user_id, email, detail=f"oidc {identity.issuer}")
        if user.disabled:
            await self._audit(
                "sign_in_failed", user.user_id, email, identity.client_address, "disabled"
            )
            raise PermissionDeniedError(_DISABLED)
        if identity.role and identity.role != user.role:
            changed = await users.set_role(user.user_id, identity.role, tenant_id=None)
            user = changed or user
            await self._audit("role_changed", user.user_id, detail=f"{identity.role} by groups")
        if replaces_token:
            await self._store.browser_sessions.revoke(replaces_token)
        session = await self._store.browser_sessions.create(
            user.user_id, idle=policy.idle, absolute=policy.absolute
        )
        await self._audit(
            "sign_in", user.user_id, email, identity.client_address, f"oidc {identity.issuer}"
        )
        return SignInResult(SignInOutcome.SIGNED_IN, user=user, session=session)

    async def authenticate(self, token: str, policy: SessionPolicy) -> UserDoc:
        user_id = await self._store.browser_sessions.user_of(token, idle=policy.idle)
        user = None if user_id is None else await self._store.users.get_user(user_id)
        if user is None or user.disabled:
            raise UnauthenticatedError("the session has ended (signed out or expired); sign in")
        return user

    async def sign_out(self, token: str, *, everywhere: bool) -> None:
        user_id = await self._store.browser_sessions.revoke(token)
        if user_id is None:
            return
        if everywhere:
            ended = await self._store.browser_sessions.revoke_all(user_id)
            await self._audit("sign_out_everywhere", user_id, detail=f"{ended + 1} sessions")
        else:
            await self._audit("sign_out", user_id)

    async def change_password(
        self, user_id: str, *, current: str, new: str, keep_token: str
    ) -> None:
        check_password(new, "new_password")
        stored = await self._store.users.password_hash(user_id)
        if not stored or not await self._passwords.verify(stored, current):
            raise PermissionDeniedError("current_password is not this account's password")
        await self._store.users.set_password_hash(user_id, await self._passwords.hash(new))
        await self._store.browser_sessions.revoke_all(user_id, keep_token=keep_token)
        await self._audit("password_changed", user_id)

    async def set_password(
        self, user_id: str, new: str, *, tenant_id: str | None = None, by: str = ""
    ) -> None:
        """An administrator's reset (of a user in `tenant_id`, when given): every session of
        the user ends."""
        check_password(new, "new_password")
        if await self._store.users.get_user(user_id, tenant_id=tenant_id) is None:
            raise UserNotFoundError(user_id)
        if not await self._store.users.set_password_hash(user_id, await self._passwords.hash(new)):
            raise UserNotFoundError(user_id)
        await self._store.browser_sessions.revoke_all(user_id)
        await self._audit("password_reset", user_id, detail=f"by {by}" if by else "")

    async def set_disabled(
        self, user_id: str, disabled: bool, *, tenant_id: str | None, by: str
    ) -> UserDoc:
        """Disable a user (every session ends; their keys are refused) or enable them again."""
        user = await self._store.users.set_disabled(user_id, disabled, tenant_id=tenant_id)
        if user is None:
            raise UserNotFoundError(user_id)
        if disabled:
            await self._store.browser_sessions.revoke_all(user_id)
        await self._audit(
            "user_disabled" if disabled else "user_enabled", user_id, detail=f"by {by}"
        )
        return user

    async def delete_account(
        self, user_id: str, *, password: str, confirmed: bool, delete_data: DataDeleter
    ) -> AccountDeleted:
        """A user deletes their account: confirmed by its password (an account with one) or
        explicitly; `delete_data` deletes what they stored (chats, messages, feedback), then
        their keys, sessions and the user go. The audit event keeps no personal data (the
        user's id and tenant only), and the user's earlier events lose their e-mail address and
        client addresses."""
        user = await self._store.users.get_user(user_id)
        if user is None:
            raise UserNotFoundError(user_id)
        stored = await self._store.users.password_hash(user_id)
        if stored:
            if not password:
                raise InvalidArgumentError("password", "required: this account's password")
            if not await self._passwords.verify(stored, password):
                raise PermissionDeniedError("password is not this account's password")
        elif not confirmed:
            raise InvalidArgumentError("confirm", "required: true, to delete this account")
        chats = await delete_data(user_id)
        sessions = await self._store.browser_sessions.revoke_all(user_id)
        keys = await self._store.users.delete_user(user_id)
        await self._store.audit.forget_personal_data(user_id)
        await self._store.audit.record(
            AuditEvent("account_deleted", user_id, tenant_id=user.tenant_id)
        )
        return AccountDeleted(chats=chats, keys=keys, sessions=sessions)
