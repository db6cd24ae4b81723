"""A chat's attached files in GridFS (bucket `attachments`): the bytes in `attachments.chunks`,
one `attachments.files` document a file with what the service knows of it in `metadata`
(owner, chat, detected kind and media type, tokens of its text)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gridfs import AsyncGridFSBucket
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from parley_session.domain import AttachmentNotFoundError
from parley_session.retry import RetryPolicy
from parley_session.stores._mongo import Doc, ms, retried

__all__ = ["AttachmentDoc", "AttachmentStore", "ChatAttachmentUsage"]

BUCKET = "attachments"
_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AttachmentDoc:
    attachment_id: str
    chat_id: str
    user_id: str
    name: str
    media_type: str
    kind: str
    size: int
    tokens: int | None
    created_ms: int

    @classmethod
    def from_file(cls, doc: Doc) -> AttachmentDoc:
        meta = doc["metadata"]
        return cls(
            attachment_id=doc["_id"],
            chat_id=meta["chat_id"],
            user_id=meta["user_id"],
            name=doc["filename"],
            media_type=meta["media_type"],
            kind=meta["kind"],
            size=doc["length"],
            tokens=meta.get("tokens"),
            created_ms=ms(doc["uploadDate"]),
        )

    def ref(self) -> Doc:
        """What a message stores of the attachments sent with it."""
        return {
            "id": self.attachment_id,
            "name": self.name,
            "media_type": self.media_type,
            "kind": self.kind,
            "size": self.size,
            "tokens": self.tokens,
        }


@dataclass(frozen=True, slots=True)
class ChatAttachmentUsage:
    count: int
    bytes: int


class AttachmentStore:
    def __init__(self, db: AsyncDatabase[Doc], *, retry: RetryPolicy) -> None:
        self.retry = retry
        self._bucket = AsyncGridFSBucket(db, bucket_name=BUCKET)
        self._files = db[f"{BUCKET}.files"]
        self._chunks = db[f"{BUCKET}.chunks"]

    async def ensure_indexes(self) -> None:
        # GridFS's own indexes (filename/uploadDate, files_id/n) are made on its first upload.
        # Every query names the owner: one index serves a user's files and a chat's.
        await self._files.create_index(
            [("metadata.user_id", ASCENDING), ("metadata.chat_id", ASCENDING)]
        )

    @retried
    async def usage(self, user_id: str, chat_id: str) -> ChatAttachmentUsage:
        found = [
            d
            async for d in await self._files.aggregate(
                [
                    {"$match": {"metadata.user_id": user_id, "metadata.chat_id": chat_id}},
                    {"$group": {"_id": None, "count": {"$sum": 1}, "bytes": {"$sum": "$length"}}},
                ]
            )
        ]
        if not found:
            return ChatAttachmentUsage(0, 0)
        return ChatAttachmentUsage(found[0]["count"], found[0]["bytes"])

    @retried
    async def add(
        self,
        *,
        attachment_id: str,
        user_id: str,
        chat_id: str,
        name: str,
        media_type: str,
        kind: str,
        tokens: int | None,
        data: bytes,
    ) -> AttachmentDoc:
        # An earlier attempt may have written some chunks, or all of the file: start over.
        await self._chunks.delete_many({"files_id": attachment_id})
        await self._files.delete_one({"_id": attachment_id})
        metadata: Doc = {
            "user_id": user_id,
            "chat_id": chat_id,
            "media_type": media_type,
            "kind": kind,
            "tokens": tokens,
        }
        await self._bucket.upload_from_stream_with_id(attachment_id, name, data, metadata=metadata)
        doc = await self._files.find_one({"_id": attachment_id})
        assert doc is not None
        return AttachmentDoc.from_file(doc)

    @retried
    async def list_for_chat(self, user_id: str, chat_id: str) -> list[AttachmentDoc]:
        cursor = self._files.find({"metadata.chat_id": chat_id, "metadata.user_id": user_id})
        return [AttachmentDoc.from_file(d) async for d in cursor.sort("uploadDate", ASCENDING)]

    @retried
    async def get(self, user_id: str, chat_id: str, attachment_id: str) -> AttachmentDoc:
        doc = await self._files.find_one(
            {"_id": attachment_id, "metadata.chat_id": chat_id, "metadata.user_id": user_id}
        )
        if doc is None:
            raise AttachmentNotFoundError(attachment_id)
        return AttachmentDoc.from_file(doc)

    @retried
    async def read(self, attachment_id: str) -> bytes:
        stream = await self._bucket.open_download_stream(attachment_id)
        data: bytes = await stream.read()
        return data

    async def delete(self, user_id: str, chat_id: str, attachment_id: str) -> None:
        await self.get(user_id, chat_id, attachment_id)  # NOT_FOUND for another user's
        await self.delete_ids([attachment_id])

    @retried
    async def delete_ids(self, attachment_ids: Iterable[str]) -> None:
        await self._delete_ids(list(attachment_ids))

    async def _delete_ids(self, ids: list[str]) -> None:
        """Chunks first, then the files: a delete cut short and run again finds what is left."""
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            await self._chunks.delete_many({"files_id": {"$in": batch}})
            await self._files.delete_many({"_id": {"$in": batch}})

    @retried
    async def delete_for_chat(self, user_id: str, chat_id: str) -> None:
        query = {"metadata.user_id": user_id, "metadata.chat_id": chat_id}
        await self._delete_ids([d["_id"] async for d in self._files.find(query, {"_id": 1})])

    @retried
    async def delete_for_user(self, user_id: str) -> None:
        found = self._files.find({"metadata.user_id": user_id}, {"_id": 1})
        await self._delete_ids([d["_id"] async for d in found])
