"""Qdrant adapter: one collection per embedding model, entries filtered by scope and context."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from parley_cache.keying import CacheKey

__all__ = ["CacheStore", "Candidate", "collection_name"]


def collection_name(embedding_model: str) -> str:
    return "parley_cache_" + re.sub(r"[^A-Za-z0-9]+", "_", embedding_model).strip("_").lower()


@dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    key: CacheKey
    answer: str
    score: float


class CacheStore:
    def __init__(self, client: AsyncQdrantClient, *, embedding_model: str, dimension: int) -> None:
        self._client = client
        self.collection = collection_name(embedding_model)
        self._dimension = dimension

    async def ensure_collection(self) -> None:
        if not await self._client.collection_exists(self.collection):
            await self._client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=self._dimension, distance=models.Distance.COSINE
                ),
                # Lookups are always filtered by scope, so HNSW links are also built per scope
                # value (payload_m): a filtered search stays a graph walk, not a brute-force scan.
                hnsw_config=models.HnswConfigDiff(m=16, ef_construct=128, payload_m=16),
            )
        for field, schema in (
            ("scope_key", models.PayloadSchemaType.KEYWORD),
            ("scope_fingerprint", models.PayloadSchemaType.KEYWORD),
            ("context_fingerprint", models.PayloadSchemaType.KEYWORD),
            ("bot_id", models.PayloadSchemaType.KEYWORD),
            ("request_id", models.PayloadSchemaType.KEYWORD),
            ("expires_at", models.PayloadSchemaType.INTEGER),
            ("complete", models.PayloadSchemaType.BOOL),
            ("max_tokens", models.PayloadSchemaType.INTEGER),
        ):
            await self._client.create_payload_index(self.collection, field, field_schema=schema)

    async def search(
        self, vector: list[float], *, scope_key: str, key: CacheKey, max_tokens: int, limit: int
    ) -> list[Candidate]:
        now = int(time.time())
        query_filter = models.Filter(
            must=[
                models.FieldCondition(key="scope_key", match=models.MatchValue(value=scope_key)),
                models.FieldCondition(
                    key="scope_fingerprint", match=models.MatchValue(value=key.scope_fingerprint)
                ),
                models.FieldCondition(
                    key="context_fingerprint",
                    match=models.MatchValue(value=key.context_fingerprint),
                ),
                models.FieldCondition(key="expires_at", range=models.Range(gt=now)),
            ],
            # A complete answer serves any budget; one cut at max_tokens only the same budget.
            should=[
                models.FieldCondition(key="complete", match=models.MatchValue(value=True)),
                models.FieldCondition(key="max_tokens", match=models.MatchValue(value=max_tokens)),
            ],
        )
        found = await self._client.query_points(
            self.collection, query=vector, query_filter=query_filter, limit=limit, with_payload=True
        )
        out: list[Candidate] = []
        for point in found.points:
            payload: dict[str, Any] = point.payload or {}
            out.append(
                Candidate(
                    entry_id=str(point.id),
                    key=CacheKey.from_payload(payload),
                    answer=str(payload.get("answer", "")),
                    score=float(point.score),
                )
            )
        return out

    async def put(
        self,
        *,
        request_id: str,
        vector: list[float],
        scope_key: str,
        key: CacheKey,
        answer: str,
        ttl_s: int,
        complete: bool,
        max_tokens: int,
    ) -> str:
        """Store an answer; the entry id derives from the request id, so a redelivery overwrites."""
        entry_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{request_id}"))
        now = int(time.time())
        payload = {
            **key.payload(),
            "scope_key": scope_key,
            "answer": answer,
            "request_id": request_id,
            "created_at": now,
            "expires_at": now + ttl_s,
            "complete": complete,
            "max_tokens": max_tokens,
        }
        await self._client.upsert(
            self.collection,
            points=[models.PointStruct(id=entry_id, vector=vector, payload=payload)],
        )
        return entry_id
