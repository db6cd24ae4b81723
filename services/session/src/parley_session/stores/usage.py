"""Usage per bot profile and per day, computed by one MongoDB aggregation over `messages` (the
answers and the questions, their chat's bot joined) and `feedback` (`$unionWith`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, retried

__all__ = ["UsageRow", "UsageStore"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    bot_id: str
    day: str
    turns: int
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    thumbs_up: int
    thumbs_down: int

    @property
    def cache_hit_ratio(self) -> float:
        return self.cache_hits / self.turns if self.turns else 0.0


def _day(field: str) -> Doc:
    return {"$dateToString": {"format": "%Y-%m-%d", "date": field, "timezone": "UTC"}}


def _count_if(condition: Doc) -> Doc:
    return {"$sum": {"$cond": [condition, 1, 0]}}


class UsageStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._messages = db["messages"]

    @retried
    async def usage(
        self, *, since: datetime | None, until: datetime | None, bot_id: str
    ) -> list[UsageRow]:
        times: Doc = {}
        if since is not None:
            times["$gte"] = since
        if until is not None:
            times["$lte"] = until
        messages: Doc = {"role": {"$in": ["user", "assistant"]}}
        feedback: Doc = {}
        if times:
            messages["created_at"] = times
            feedback["created_at"] = times
        if bot_id:
            feedback["bot_id"] = bot_id
        zero = {"turns": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_hits": 0}
        pipeline: list[Doc] = [
            {"$match": messages},
            {
                "$lookup": {
                    "from": "chats",
                    "localField": "chat_id",
                    "foreignField": "_id",
                    "pipeline": [{"$project": {"bot_id": 1}}],
                    "as": "chat",
                }
            },
            {"$set": {"bot_id": {"$ifNull": [{"$first": "$chat.bot_id"}, ""]}}},
            *([{"$match": {"bot_id": bot_id}}] if bot_id else []),
            {
                "$group": {
                    "_id": {"bot_id": "$bot_id", "day": _day("$created_at")},
                    "turns": _count_if({"$eq": ["$role", "assistant"]}),
                    "prompt_tokens": {
                        "$sum": {"$cond": [{"$eq": ["$role", "user"]}, "$token_count", 0]}
                    },
                    "completion_tokens": {
                        "$sum": {"$cond": [{"$eq": ["$role", "assistant"]}, "$token_count", 0]}
                    },
                    "cache_hits": _count_if(
                        {"$gt": [{"$strLenCP": {"$ifNull": ["$cache_entry_id", ""]}}, 0]}
                    ),
                    "thumbs_up": {"$sum": 0},
                    "thumbs_down": {"$sum": 0},
                }
            },
            {
                "$unionWith": {
                    "coll": "feedback",
                    "pipeline": [
                        {"$match": feedback},
                        {
                            "$group": {
                                "_id": {
                                    "bot_id": {"$ifNull": ["$bot_id", ""]},
                                    "day": _day("$created_at"),
                                },
                                **{k: {"$sum": v} for k, v in zero.items()},
                                "thumbs_up": _count_if({"$eq": ["$rating", "up"]}),
                                "thumbs_down": _count_if({"$eq": ["$rating", "down"]}),
                            }
                        },
                    ],
                }
            },
            {
                "$group": {
                    "_id": "$_id",
                    **{k: {"$sum": f"${k}"} for k in [*zero, "thumbs_up", "thumbs_down"]},
                }
            },
            {"$sort": {"_id.day": 1, "_id.bot_id": 1}},
        ]
        rows = []
        async for d in await self._messages.aggregate(pipeline):
            rows.append(
                UsageRow(
                    bot_id=d["_id"]["bot_id"],
                    day=d["_id"]["day"],
                    turns=d["turns"],
                    prompt_tokens=d["prompt_tokens"],
                    completion_tokens=d["completion_tokens"],
                    cache_hits=d["cache_hits"],
                    thumbs_up=d["thumbs_up"],
                    thumbs_down=d["thumbs_down"],
                )
            )
        return rows
