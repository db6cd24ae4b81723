"""A chat's branches (`messages` as a tree, `regenerations`): siblings, the choice of the active
branch, deleting a branch, regenerations' slots, and the move of chats stored as a line.

Every change of the chat's active path is one atomic update of the chat (`active_leaf`): see
`stores/chats.py` for why that keeps the tree whole under concurrent turns.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from parley_session.domain import ChatNotFoundError, MessageNotFoundError
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, now, retried
from parley_session.stores.attachments import AttachmentStore
from parley_session.stores.chats import GAP, ChatDoc, MessageDoc

__all__ = ["BranchStore", "Regeneration"]


@dataclass(frozen=True, slots=True)
class Regeneration:
    """A new answer asked for the question `parent_id`: stored after `slot` (a fresh ordinal)."""

    chat_id: str
    request_id: str
    parent_id: str
    slot: int
    created: bool  # False: this request id asked for it before (a retry)


def _summary_kept(fork_ordinal: int) -> Doc:
    return {
        "$cond": [
            {"$gt": [{"$ifNull": ["$summary.through_ordinal", -1]}, fork_ordinal]},
            "$$REMOVE",
            "$summary",
        ]
    }


class BranchStore:
    def __init__(
        self, db: AsyncDatabase[Doc], attachments: AttachmentStore, *, retry: RetryPolicy
    ) -> None:
        self.retry = retry
        self._attachments = attachments
        self._chats = db["chats"]
        self._messages = db["messages"]
        self._regenerations = db["regenerations"]
        self._feedback = db["feedback"]

    async def ensure_indexes(self) -> None:
        await self._regenerations.create_index(
            [("chat_id", ASCENDING), ("request_id", ASCENDING)], unique=True
        )
        await self._regenerations.create_index([("chat_id", ASCENDING), ("slot", ASCENDING)])

    @retried
    async def migrate_owners(self) -> int:
        """Messages stored before search carry no `user_id`: they get their chat's owner's.
        Safe to run again; returns the chats moved."""
        moved = 0
        async for chat in self._chats.find({"messages_owned": {"$ne": True}}, {"user_id": 1}):
            await self._messages.update_many(
                {"chat_id": chat["_id"]}, {"$set": {"user_id": chat["user_id"]}}
            )
            await self._chats.update_one({"_id": chat["_id"]}, {"$set": {"messages_owned": True}})
            moved += 1
        return moved

    @retried
    async def migrate_linear_chats(self) -> int:
        """Chats stored before branches (no `active_leaf`) become a chain in ordinal order: each
        message follows the one before it. Safe to run again; returns the chats moved."""
        moved = 0
        async for chat in self._chats.find({"active_leaf": {"$exists": False}}, {"_id": 1}):
            previous: Doc | None = None
            updates = []
            cursor = self._messages.find(
                {"chat_id": chat["_id"]}, {"_id": 1, "role": 1, "ordinal": 1, "parent_id": 1}
            ).sort("ordinal", ASCENDING)
            async for message in cursor:
                if "parent_id" not in message:
                    parent = None if previous is None else previous["_id"]
                    updates.append(
                        UpdateOne({"_id": message["_id"]}, {"$set": {"parent_id": parent}})
                    )
                previous = message
            if updates:
                await self._messages.bulk_write(updates, ordered=False)
            leaf: Doc = {"active_leaf": None if previous is None else previous["_id"]}
            if previous is not None and previous["role"] == "user":
                leaf["leaf_slot"] = previous["ordinal"]
            await self._chats.update_one(
                {"_id": chat["_id"], "active_leaf": {"$exists": False}}, {"$set": leaf}
            )
            moved += 1
        return moved

    # reads

    @retried
    async def message(self, chat_id: str, message_id: str) -> MessageDoc:
        doc = await self._messages.find_one(
            {"_id": message_id, "chat_id": chat_id, "role": {"$ne": GAP}}
        )
        if doc is None:
            raise MessageNotFoundError(message_id)
        return MessageDoc.from_doc(doc)

    @retried
    async def active_path(self, chat: ChatDoc) -> list[MessageDoc]:
        """The chat's conversation as it stands: its active path, oldest first."""
        if not chat.active_leaf:
            return []
        docs = await self._path_docs(chat.chat_id, chat.active_leaf)
        return [MessageDoc.from_doc(d) for d in docs if d["role"] != GAP]

    async def _path_docs(self, chat_id: str, leaf_id: str) -> list[Doc]:
        pipeline: list[Doc] = [
            {"$match": {"_id": leaf_id, "chat_id": chat_id}},
            {
                "$graphLookup": {
                    "from": "messages",
                    "startWith": "$parent_id",
                    "connectFromField": "parent_id",
                    "connectToField": "_id",
                    "as": "up",
                    "restrictSearchWithMatch": {"chat_id": chat_id},
                }
            },
        ]
        found = [d async for d in await self._messages.aggregate(pipeline)]
        if not found:
            return []
        leaf = found[0]
        up = leaf.pop("up")
        return sorted([*up, leaf], key=lambda d: d["ordinal"])

    @retried
    async def sibling_counts(
        self, chat_id: str, messages: list[MessageDoc]
    ) -> dict[str, tuple[int, int]]:
        """For each message: (how many share its parent and role, its index among them)."""
        parents = list({m.parent_id or None for m in messages})
        cursor = self._messages.find(
            {
                "chat_id": chat_id,
                "parent_id": {"$in": parents},
                "role": {"$in": ["user", "assistant"]},
            },
            {"_id": 1, "parent_id": 1, "role": 1, "ordinal": 1},
        ).sort("ordinal", ASCENDING)
        groups: dict[tuple[str, str], list[str]] = {}
        async for d in cursor:
            groups.setdefault((d.get("parent_id") or "", d["role"]), []).append(d["_id"])
        counts: dict[str, tuple[int, int]] = {}
        for m in messages:
            group = groups.get((m.parent_id, m.role), [m.message_id])
            index = group.index(m.message_id) if m.message_id in group else 0
            counts[m.message_id] = (len(group), index)
        return counts

    @retried
    async def siblings(self, chat_id: str, message: MessageDoc) -> list[MessageDoc]:
        cursor = self._messages.find(
            {"chat_id": chat_id, "parent_id": message.parent_id or None, "role": message.role}
        ).sort("ordinal", ASCENDING)
        return [MessageDoc.from_doc(d) async for d in cursor]

    async def _subtree(self, chat_id: str, root_id: str) -> list[Doc]:
        """The message `root_id` and every message that follows it, on any branch."""
        pipeline: list[Doc] = [
            {"$match": {"_id": root_id, "chat_id": chat_id}},
            {
                "$graphLookup": {
                    "from": "messages",
                    "startWith": "$_id",
                    "connectFromField": "_id",
                    "connectToField": "parent_id",
                    "as": "down",
                    "restrictSearchWithMatch": {"chat_id": chat_id},
                }
            },
            {
                "$project": {
                    "ordinal": 1,
                    "role": 1,
                    "attachments.id": 1,
                    "down._id": 1,
                    "down.ordinal": 1,
                    "down.role": 1,
                    "down.attachments.id": 1,
                }
            },
        ]
        found = [d async for d in await self._messages.aggregate(pipeline)]
        if not found:
            return []
        root = found[0]
        return [
            {k: root[k] for k in ("_id", "ordinal", "role", "attachments") if k in root},
            *root["down"],
        ]

    # changes of the active path

    @retried
    async def select(self, user_id: str, chat_id: str, message: MessageDoc) -> None:
        """Make the active path go through `message`, to its newest descendant."""
        subtree = [d for d in await self._subtree(chat_id, message.message_id) if d["role"] != GAP]
        leaf = max(subtree, key=lambda d: d["ordinal"]) if subtree else None
        if leaf is None:
            raise MessageNotFoundError(message.message_id)
        await self._move_leaf(user_id, chat_id, leaf, fork_ordinal=await self._fork(message))

    async def _fork(self, message: MessageDoc) -> int:
        if not message.parent_id:
            return -1
        parent = await self._messages.find_one({"_id": message.parent_id}, {"ordinal": 1})
        return -1 if parent is None else int(parent["ordinal"])

    async def _move_leaf(
        self, user_id: str, chat_id: str, leaf: Doc | None, *, fork_ordinal: int
    ) -> None:
        change: Doc = {
            "active_leaf": None if leaf is None else leaf["_id"],
            "leaf_slot": leaf["ordinal"]
            if leaf is not None and leaf["role"] == "user"
            else "$$REMOVE",
            "summary": _summary_kept(fork_ordinal),
            "updated_at": now(),
        }
        done = await self._chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id}, [{"$set": change}], projection={"_id": 1}
        )
        if done is None:
            raise ChatNotFoundError(chat_id)

    @retried
    async def delete(self, user_id: str, chat: ChatDoc, message: MessageDoc) -> int:
        """Delete `message` and every message after it on any branch (and their feedback and
        regenerations); when the active path went through it, the path moves to the newest
        remaining branch of its parent. Returns how many messages went."""
        chat_id = chat.chat_id
        subtree = await self._subtree(chat_id, message.message_id)
        ids = [d["_id"] for d in subtree]
        if chat.active_leaf in ids:
            parent = await self.message(chat_id, message.parent_id)
            rest = [
                d
                for d in await self._subtree(chat_id, parent.message_id)
                if d["_id"] not in set(ids) and d["role"] != GAP
            ]
            leaf = max(rest, key=lambda d: d["ordinal"])  # the parent itself at least
            await self._move_leaf(user_id, chat_id, leaf, fork_ordinal=parent.ordinal)
        deleted = await self._messages.delete_many({"chat_id": chat_id, "_id": {"$in": ids}})
        await self._feedback.delete_many({"chat_id": chat_id, "message_id": {"$in": ids}})
        await self._regenerations.delete_many({"chat_id": chat_id, "parent_id": {"$in": ids}})
        counted = sum(1 for d in subtree if d["role"] != GAP)
        await self._chats.update_one(
            {"_id": chat_id}, {"$inc": {"message_count": -min(counted, chat.message_count)}}
        )
        # The files those messages were sent with go too, unless another branch still has them.
        sent = {a["id"] for d in subtree for a in d.get("attachments", ())}
        if sent:
            kept = await self._messages.distinct(
                "attachments.id", {"chat_id": chat_id, "attachments.id": {"$in": list(sent)}}
            )
            await self._attachments.delete_ids(sent - set(kept))
        return int(deleted.deleted_count)

    # regenerations

    @retried
    async def reserve_regeneration(
        self, user_id: str, chat_id: str, *, question: MessageDoc, request_id: str
    ) -> tuple[Regeneration, ChatDoc]:
        """A fresh slot for a new answer to `question`, once per request id; the chat's active
        path ends at the question until that answer is stored."""
        found = await self._regenerations.find_one({"chat_id": chat_id, "request_id": request_id})
        if found is not None:
            return self._regeneration(found, created=False), await self._chat(user_id, chat_id)
        chat = await self._chats.find_one_and_update(
            {"_id": chat_id, "user_id": user_id},
            [
                {
                    "$set": {
                        "active_leaf": question.message_id,
                        "leaf_slot": {"$ifNull": ["$next_ordinal", 0]},
                        "next_ordinal": {"$add": [{"$ifNull": ["$next_ordinal", 0]}, 2]},
                        "summary": _summary_kept(question.ordinal),
                        "updated_at": now(),
                    }
                }
            ],
            projection={"summary_job": 0},
            return_document=ReturnDocument.AFTER,
        )
        if chat is None:
            raise ChatNotFoundError(chat_id)
        doc = {
            "chat_id": chat_id,
            "request_id": request_id,
            "parent_id": question.message_id,
            "slot": chat["leaf_slot"],
            "created_at": now(),
        }
        try:
            await self._regenerations.insert_one(doc)
        except DuplicateKeyError:
            # A concurrent delivery of this request won: its slot is the one (this one stays
            # unused; nothing follows an empty slot).
            winner = await self._regenerations.find_one(
                {"chat_id": chat_id, "request_id": request_id}
            )
            assert winner is not None
            return self._regeneration(winner, created=False), ChatDoc.from_doc(chat)
        return self._regeneration(doc, created=True), ChatDoc.from_doc(chat)

    async def _chat(self, user_id: str, chat_id: str) -> ChatDoc:
        doc = await self._chats.find_one({"_id": chat_id, "user_id": user_id}, {"summary_job": 0})
        if doc is None:
            raise ChatNotFoundError(chat_id)
        return ChatDoc.from_doc(doc)

    @staticmethod
    def _regeneration(doc: Doc, *, created: bool) -> Regeneration:
        return Regeneration(
            doc["chat_id"], doc["request_id"], doc["parent_id"], doc["slot"], created
        )
