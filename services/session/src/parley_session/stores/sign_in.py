"""What sign-in shares between gateway replicas: failed-attempt counts (`sign_in_attempts`, one
document per account or client address and window, expiring after it) and invites (`invites`,
keyed by the hash of the code, used once)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, insert_new, now, retried
from parley_session.stores.users import hash_token

__all__ = ["Attempts", "Invite", "SignInStore"]


@dataclass(frozen=True, slots=True)
class Attempts:
    count: int  # attempts in this window, the current one included
    retry_after_s: float  # until the window ends


@dataclass(frozen=True, slots=True)
class Invite:
    code: str
    expires_at: datetime


class SignInStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._attempts = db["sign_in_attempts"]
        self._invites = db["invites"]

    @retried
    async def ensure_indexes(self) -> None:
        await self._attempts.create_index("expires_at", expireAfterSeconds=0)
        await self._invites.create_index("expires_at", expireAfterSeconds=0)

    @staticmethod
    def _window(subject: str, window_s: int) -> tuple[str, float]:
        at = time.time()
        index = int(at // window_s)
        return f"{subject}:{index}", (index + 1) * window_s - at

    async def count_attempt(self, subject: str, window_s: int) -> Attempts:
        """Count one attempt of `subject` ("account:<email>", "address:<ip>") before it is
        checked, so that concurrent guesses cannot all pass. Not retried: a lost reply of an
        $inc that landed would count twice."""
        key, left = self._window(subject, window_s)
        expires = datetime.fromtimestamp(time.time() + left, UTC) + timedelta(minutes=1)
        doc = await self._attempts.find_one_and_update(
            {"_id": key},
            {"$inc": {"count": 1}, "$setOnInsert": {"expires_at": expires}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return Attempts(int(doc["count"]) if doc else 1, left)

    async def forgive_attempt(self, subject: str, window_s: int) -> None:
        """A successful attempt does not count towards a lock-out."""
        key, _ = self._window(subject, window_s)
        await self._attempts.update_one({"_id": key, "count": {"$gt": 0}}, {"$inc": {"count": -1}})

    async def clear(self, subject: str, window_s: int) -> None:
        key, _ = self._window(subject, window_s)
        await self._attempts.delete_one({"_id": key})

    async def create_invite(self, tenant_id: str, valid_for: timedelta) -> Invite:
        invite = Invite(code="pi-" + secrets.token_urlsafe(24), expires_at=now() + valid_for)
        doc = {
            "_id": hash_token(invite.code),
            "tenant_id": tenant_id,
            "expires_at": invite.expires_at,
            "used_by": None,
        }
        await self._insert_invite(doc)
        return invite

    @retried
    async def _insert_invite(self, doc: Doc) -> None:
        await insert_new(self._invites, doc)

    @retried
    async def redeem_invite(self, code: str, user_id: str) -> Doc | None:
        """Mark an unused, unexpired invite used by `user_id`; None when there is none. Run
        again by the same user, it finds the invite already theirs."""
        return await self._invites.find_one_and_update(
            {
                "_id": hash_token(code),
                "expires_at": {"$gt": now()},
                "used_by": {"$in": [None, user_id]},
            },
            {"$set": {"used_by": user_id}},
            return_document=ReturnDocument.AFTER,
        )

    @retried
    async def release_invite(self, code: str, user_id: str) -> None:
        await self._invites.update_one(
            {"_id": hash_token(code), "used_by": user_id}, {"$set": {"used_by": None}}
        )
