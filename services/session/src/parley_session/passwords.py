"""Passwords hashed with Argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile), off
the event loop: one hash takes tens of milliseconds of CPU and 64 MiB, by design."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from parley_session.domain import InvalidArgumentError

__all__ = ["MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "Passwords", "check_password"]

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024


def check_password(password: str, field: str = "password") -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidArgumentError(
            field, f"must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )


class Passwords:
    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        # Verified against when the e-mail address is unknown, so that the answer takes as long
        # as for a known one (no account discovery by timing).
        self._dummy = self._hasher.hash("no account has this password")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored_hash or self._dummy, password)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False
