"""Bot profiles (`bots`: the profiles a user sees, `owner_user_id, deleted_at, created_at`)."""

from __future__ import annotations

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from parley_common.ids import new_id
from parley_session.domain import BotNotFoundError, BotProfile, HistoryParams, HistoryPolicy
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, insert_new, ms, now, retried

__all__ = ["BotStore", "bot_fields", "bot_from_doc"]


def bot_from_doc(doc: Doc) -> BotProfile:
    sampling = doc.get("sampling", {})
    history = doc.get("history", {})
    return BotProfile(
        bot_id=doc["_id"],
        name=doc["name"],
        system_prompt=doc.get("system_prompt", ""),
        model=doc.get("model", ""),
        history_policy=HistoryPolicy(doc.get("history_policy", HistoryPolicy.TRUNCATE.value)),
        max_tokens=sampling.get("max_tokens", 0),
        temperature=sampling.get("temperature"),
        top_p=sampling.get("top_p"),
        cache_scope=doc.get("cache_scope", "user"),
        cache_max_error_rate=doc.get("cache_max_error_rate", 0.0),
        avatar=doc.get("avatar", ""),
        description=doc.get("description", ""),
        history=HistoryParams(**history),
        owner_user_id=doc.get("owner_user_id", ""),
        created_ms=ms(doc["created_at"]),
        updated_ms=ms(doc["updated_at"]),
    )


def bot_fields(bot: BotProfile) -> Doc:
    """The stored form of a profile's editable fields."""
    sampling: Doc = {"max_tokens": bot.max_tokens}
    if bot.temperature is not None:
        sampling["temperature"] = bot.temperature
    if bot.top_p is not None:
        sampling["top_p"] = bot.top_p
    return {
        "name": bot.name,
        "avatar": bot.avatar,
        "description": bot.description,
        "system_prompt": bot.system_prompt,
        "model": bot.model,
        "sampling": sampling,
        "history_policy": bot.history_policy.value,
        "history": {
            "summarize_at": bot.history.summarize_at,
            "keep_recent": bot.history.keep_recent,
            "summary_max_tokens": bot.history.summary_max_tokens,
        },
        "cache_scope": bot.cache_scope,
        "cache_max_error_rate": bot.cache_max_error_rate,
    }


class BotStore:
    """Shared profiles (no owner) and users' own; deleting one is a soft delete."""

    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._bots = db["bots"]

    async def ensure_indexes(self) -> None:
        await self._bots.create_index(
            [("owner_user_id", ASCENDING), ("deleted_at", ASCENDING), ("created_at", ASCENDING)]
        )

    @retried
    async def list_bots(self, user_id: str | None) -> list[BotProfile]:
        """Shared profiles, then the user's own (None: shared ones only)."""
        owners = [""] if user_id is None else ["", user_id]
        cursor = self._bots.find({"owner_user_id": {"$in": owners}, "deleted_at": None}).sort(
            [("owner_user_id", ASCENDING), ("created_at", ASCENDING)]
        )
        return [bot_from_doc(d) async for d in cursor]

    @retried
    async def count_bots(self, user_id: str) -> int:
        return await self._bots.count_documents({"owner_user_id": user_id, "deleted_at": None})

    @retried
    async def get_bot(
        self, bot_id: str, *, visible_to: str | None, include_deleted: bool
    ) -> BotProfile:
        """A profile by id. `visible_to`: only one shared or owned by this user (None: any)."""
        query: Doc = {"_id": bot_id}
        if visible_to is not None:
            query["owner_user_id"] = {"$in": ["", visible_to]}
        if not include_deleted:
            query["deleted_at"] = None
        doc = await self._bots.find_one(query)
        if doc is None:
            raise BotNotFoundError(bot_id)
        return bot_from_doc(doc)

    async def create_bot(self, bot: BotProfile) -> BotProfile:
        at = now()
        doc = {
            "_id": new_id(),
            "owner_user_id": bot.owner_user_id,
            **bot_fields(bot),
            "created_at": at,
            "updated_at": at,
            "deleted_at": None,
        }
        await self._insert(doc)
        return bot_from_doc(doc)

    @retried
    async def replace_bot(self, bot: BotProfile) -> BotProfile:
        doc = await self._bots.find_one_and_update(
            {"_id": bot.bot_id, "owner_user_id": bot.owner_user_id, "deleted_at": None},
            {"$set": {**bot_fields(bot), "updated_at": now()}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise BotNotFoundError(bot.bot_id)
        return bot_from_doc(doc)

    @retried
    async def delete_bot(self, bot_id: str, owner_user_id: str) -> None:
        """Soft delete: chats started with the profile keep using it; nobody can pick it again."""
        result = await self._bots.update_one(
            {"_id": bot_id, "owner_user_id": owner_user_id, "deleted_at": None},
            {"$set": {"deleted_at": now()}},
        )
        if result.matched_count == 0:
            raise BotNotFoundError(bot_id)

    @retried
    async def _insert(self, doc: Doc) -> None:
        await insert_new(self._bots, doc)
