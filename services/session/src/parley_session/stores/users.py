"""Users and their API keys (`users`, `api_keys`; `key_hash` unique: authentication). A user with
an account also has an `email` (unique, stored lower-case) and an Argon2id `password_hash`. A
user disabled by an admin has `disabled_at`: their keys stop working."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_common.ids import new_id
from parley_session.domain import InvalidArgumentError
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, insert_new, key_pattern, now, retried

__all__ = [
    "API_KEY_PREFIX",
    "ApiKey",
    "ApiKeyInfo",
    "EmailTakenError",
    "UserDoc",
    "UserPage",
    "UserStore",
    "hash_api_key",
    "hash_token",
]

API_KEY_PREFIX = "pk-"


def hash_token(token: str) -> str:
    # Keys, session tokens and invite codes are 256-bit random strings, so a fast hash is
    # enough (no dictionary to guess from).
    return hashlib.sha256(token.encode()).hexdigest()


hash_api_key = hash_token


class EmailTakenError(Exception):
    """Another account has this e-mail address."""


@dataclass(frozen=True, slots=True)
class UserDoc:
    user_id: str
    name: str
    tenant_id: str
    email: str = ""
    role: str = "member"
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class UserPage:
    users: list[UserDoc]
    total: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    api_key: str


def _user(doc: Doc) -> UserDoc:
    return UserDoc(
        doc["_id"],
        doc.get("name", ""),
        doc.get("tenant_id", ""),
        doc.get("email", ""),
        doc.get("role", "member"),
        doc.get("disabled_at") is not None,
    )


def _identity(issuer: str, subject: str) -> str:
    """A single sign-on identity: the ID token's issuer and subject, together unique."""
    return f"{issuer} {subject}"


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    key_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class UserStore:
    """Who may call the platform: users, and the hashed API keys they authenticate with."""

    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._users = db["users"]
        self._keys = db["api_keys"]

    async def ensure_indexes(self) -> None:
        await self._keys.create_index("key_hash", unique=True)
        await self._keys.create_index("user_id")
        await self._users.create_index(
            "email", unique=True, partialFilterExpression={"email": {"$type": "string"}}
        )
        await self._users.create_index(
            "identities", unique=True, partialFilterExpression={"identities": {"$type": "string"}}
        )
        await self._users.create_index([("tenant_id", 1), ("created_at", 1)])

    async def create_user(
        self,
        name: str,
        tenant_id: str = "",
        *,
        email: str = "",
        password_hash: str = "",
        user_id: str = "",
        role: str = "member",
    ) -> UserDoc:
        """A new user; with `email` and `password_hash`, one who can sign in. Raises
        EmailTakenError when another account has the address."""
        user = UserDoc(
            user_id=user_id or new_id(), name=name, tenant_id=tenant_id, email=email, role=role
        )
        doc = {
            "_id": user.user_id,
            "name": name,
            "tenant_id": tenant_id,
            "role": role,
            "created_at": now(),
        }
        if email:
            doc |= {"email": email, "password_hash": password_hash}
        try:
            await self._insert(self._users, doc)
        except DuplicateKeyError as exc:
            if key_pattern(exc) == {"email": 1}:
                raise EmailTakenError(email) from exc
            raise
        return user

    @retried
    async def find_by_identity(self, issuer: str, subject: str) -> UserDoc | None:
        doc = await self._users.find_one({"identities": _identity(issuer, subject)})
        return None if doc is None else _user(doc)

    @retried
    async def link_identity(self, user_id: str, issuer: str, subject: str) -> None:
        await self._users.update_one(
            {"_id": user_id}, {"$addToSet": {"identities": _identity(issuer, subject)}}
        )

    @retried
    async def find_account(self, email: str) -> tuple[UserDoc, str] | None:
        """The user with this e-mail address and their password hash."""
        doc = await self._users.find_one({"email": email})
        return None if doc is None else (_user(doc), doc.get("password_hash", ""))

    @retried
    async def password_hash(self, user_id: str) -> str | None:
        doc = await self._users.find_one({"_id": user_id}, {"password_hash": 1})
        return None if doc is None else str(doc.get("password_hash", ""))

    @retried
    async def set_password_hash(self, user_id: str, password_hash: str) -> bool:
        result = await self._users.update_one(
            {"_id": user_id}, {"$set": {"password_hash": password_hash, "password_set_at": now()}}
        )
        return result.matched_count == 1

    @retried
    async def get_user(self, user_id: str, *, tenant_id: str | None = None) -> UserDoc | None:
        """The user; None when there is none (in `tenant_id`, when given)."""
        query: Doc = {"_id": user_id}
        if tenant_id is not None:
            query["tenant_id"] = tenant_id
        doc = await self._users.find_one(query)
        return None if doc is None else _user(doc)

    @retried
    async def list_users(
        self,
        *,
        tenant_id: str | None,
        role: str = "",
        query: str = "",
        disabled: bool | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> UserPage:
        """Users (of `tenant_id`, when given), oldest first; `query`: the start of their
        e-mail address or name, in any case."""
        match: Doc = {}
        if tenant_id is not None:
            match["tenant_id"] = tenant_id
        if role:
            match["role"] = role
        if query:
            start = re.compile("^" + re.escape(query), re.IGNORECASE)
            match["$or"] = [{"email": start}, {"name": start}]
        if disabled is not None:
            match["disabled_at"] = {"$ne": None} if disabled else None
        total = await self._users.count_documents(match)
        cursor = self._users.find(match).sort([("created_at", 1), ("_id", 1)])
        docs = await cursor.skip(offset).limit(limit).to_list()
        return UserPage([_user(d) for d in docs], total)

    @retried
    async def set_disabled(
        self, user_id: str, disabled: bool, *, tenant_id: str | None
    ) -> UserDoc | None:
        """Disable or enable the user; None when there is no such user (in `tenant_id`)."""
        query: Doc = {"_id": user_id}
        if tenant_id is not None:
            query["tenant_id"] = tenant_id
        update: Doc = (
            {"$set": {"disabled_at": now()}} if disabled else {"$unset": {"disabled_at": ""}}
        )
        doc = await self._users.find_one_and_update(
            query, update, return_document=ReturnDocument.AFTER
        )
        return None if doc is None else _user(doc)

    @retried
    async def delete_user(self, user_id: str) -> int:
        """Delete the user and their API keys; how many keys there were."""
        keys = await self._keys.delete_many({"user_id": user_id})
        await self._users.delete_one({"_id": user_id})
        return keys.deleted_count

    async def create_api_key(self, user_id: str, name: str) -> ApiKey:
        if await self.get_user(user_id) is None:
            raise InvalidArgumentError("user_id", f"no user {user_id}")
        key = ApiKey(key_id=new_id(), api_key=API_KEY_PREFIX + secrets.token_urlsafe(32))
        doc = {
            "_id": key.key_id,
            "user_id": user_id,
            "name": name,
            "key_hash": hash_api_key(key.api_key),
            "created_at": now(),
            "revoked_at": None,
        }
        await self._insert(self._keys, doc)
        return key

    @retried
    async def set_role(self, user_id: str, role: str, *, tenant_id: str | None) -> UserDoc | None:
        """Set the user's role; None when there is no such user (in `tenant_id`, when given)."""
        query: Doc = {"_id": user_id}
        if tenant_id is not None:
            query["tenant_id"] = tenant_id
        doc = await self._users.find_one_and_update(
            query, {"$set": {"role": role}}, return_document=ReturnDocument.AFTER
        )
        return None if doc is None else _user(doc)

    @retried
    async def list_api_keys(self, user_id: str) -> list[ApiKeyInfo]:
        cursor = self._keys.find({"user_id": user_id}).sort("created_at", -1).limit(1000)
        return [
            ApiKeyInfo(d["_id"], d.get("name", ""), d["created_at"], d.get("revoked_at"))
            async for d in cursor
        ]

    @retried
    async def revoke_api_key(self, key_id: str, *, user_id: str = "") -> str | None:
        # A tenant's admin names the key's user (checked to be in their tenant first).
        """Revoke an active key (of `user_id`, when given); returns its user, None when there
        is no such active key."""
        query: Doc = {"_id": key_id, "revoked_at": None}
        if user_id:
            query["user_id"] = user_id
        doc = await self._keys.find_one_and_update(query, {"$set": {"revoked_at": now()}})
        return None if doc is None else str(doc["user_id"])

    @retried
    async def authenticate(self, api_key: str) -> UserDoc | None:
        doc = await self._keys.find_one({"key_hash": hash_api_key(api_key), "revoked_at": None})
        if doc is None:
            return None
        user = await self._users.find_one({"_id": doc["user_id"]})
        return None if user is None else _user(user)

    @retried
    async def _insert(self, collection: AsyncCollection[Doc], doc: Doc) -> None:
        await insert_new(collection, doc)
