"""Qdrant adapter: one collection per embedding model, entries filtered by scope and context.

Layout of a collection (``collection_name(model)``), chosen for how the cache is queried:

- two named vectors of the model's dimension, cosine: ``question`` (every entry) and
  ``context`` (entries stored in ContextMode.SEMANTIC that have prior turns);
- ``question`` has an HNSW graph with m=16, ef_construct=128, payload_m=16. Every search is
  filtered by scope, bot and context, and Qdrant's planner answers a filter matching fewer points
  than ``full_scan_threshold`` (10 000 KB: about 6 600 vectors of 384 floats) by an exact scan
  of the payload index's points: a user's own entries never touch the graph, so their lookups are
  exact. The graph serves the large scopes (a tenant, "global"): m=16 (Qdrant's default) keeps it
  small, ef_construct=128 instead of 100 buys link quality once at insert time rather than at each
  lookup, and payload_m=16 adds links inside each block of points sharing a payload value between
  that threshold and a quarter of the collection, so a filtered walk through a mid-sized tenant
  stays connected instead of falling back to a scan;
- ``context`` has no graph (m=0): it is never searched on its own, only scored against the
  question search's candidates (a prefetch), which is exact;
- ``scope_key`` is a keyword index marked ``is_tenant``, so that Qdrant stores each scope's points
  together; the other filtered fields have keyword, integer or bool indexes, ``created_at`` and
  ``expires_at`` with range support for the periodic purge and trimming;
- ``rejected_by`` lists the users who gave a thumbs-down to a shared (tenant or global) entry:
  every lookup leaves out the entries its user rejected (``must_not``, a keyword index, so the
  check is one index probe per visited point), and the list is short, since the entry is deleted
  once ``delete_shared_after`` distinct users are on it.

Transport: given a :class:`~parley_cache.qdrant_grpc.PointsClient`, searches and upserts (the
calls every lookup and every stored answer make) go over Qdrant's gRPC API, else over
qdrant-client's HTTP API: both behind ``parley_cache.points.Points``, built from the same
``Conditions``, so that ``search`` has one path and the two transports find the same entries.
Everything else (collection, counts, deletes, ``rejections``) goes over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from parley_cache.keying import KEY_VERSION, CacheKey, ContextMode
from parley_cache.points import (
    CONTEXT_VECTOR,
    QUESTION_VECTOR,
    After,
    Conditions,
    GrpcPoints,
    HttpPoints,
    Point,
    Points,
    match,
)
from parley_cache.qdrant_grpc import PointsClient
from parley_cache.rejections import Eviction, Rejections

__all__ = [
    "CONTEXT_VECTOR",
    "QUESTION_VECTOR",
    "STORE_ERRORS",
    "CacheStore",
    "Candidate",
    "Eviction",
    "NewEntry",
    "collection_name",
]

log = logging.getLogger(__name__)


HNSW: Final = models.HnswConfigDiff(m=16, ef_construct=128, payload_m=16)
# Enough question-similar entries to rank by context: a follow-up such as "and in Java?" is asked
# after many different conversations, and the one with the right context must be among them.
_SEMANTIC_PREFETCH_FACTOR: Final = 8
# Points deleted per request when trimming: bounded so one request never holds Qdrant long.
_TRIM_BATCH: Final = 5_000

_KEYWORD: Final = models.PayloadSchemaType.KEYWORD
_INDEXES: Final[tuple[tuple[str, models.PayloadSchemaType | models.PayloadSchemaParams], ...]] = (
    ("scope_key", models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)),
    ("scope_fingerprint", _KEYWORD),
    ("context_fingerprint", _KEYWORD),
    ("context_shape", _KEYWORD),
    ("key_version", models.PayloadSchemaType.INTEGER),
    ("bot_id", _KEYWORD),
    ("model", _KEYWORD),
    ("request_id", _KEYWORD),
    ("created_at", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, range=True)),
    ("expires_at", models.IntegerIndexParams(type=models.IntegerIndexType.INTEGER, range=True)),
    ("complete", models.PayloadSchemaType.BOOL),
    ("max_tokens", models.PayloadSchemaType.INTEGER),
    ("rejected_by", _KEYWORD),
)


# What a call to Qdrant raises when Qdrant is down, slow or refuses it, over either transport.
STORE_ERRORS: Final[tuple[type[Exception], ...]] = (
    ResponseHandlingException,
    UnexpectedResponse,
    grpc.aio.AioRpcError,
)


def collection_name(embedding_model: str) -> str:
    return "parley_cache_" + re.sub(r"[^A-Za-z0-9]+", "_", embedding_model).strip("_").lower()


@dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    key: CacheKey
    answer: str
    score: float  # cosine of the question vectors
    context_score: float | None = None  # cosine of the context vectors (semantic mode)
    complete: bool = True  # False: the answer was cut at its max_tokens
    scope_key: str = ""  # where it is stored: a hit counts against this scope (``tuning``)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEntry:
    """An answer to store, with the key its lookup returned."""

    request_id: str
    vector: list[float]
    scope_key: str
    key: CacheKey
    answer: str
    ttl_s: int
    complete: bool
    max_tokens: int
    context_vector: list[float] | None = None

    @property
    def entry_id(self) -> str:
        """Derived from the request id: a redelivered result overwrites its own entry."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"parley:{self.request_id}"))


class CacheStore:
    """The cache's entries in Qdrant.

    ``points`` (Qdrant's gRPC API) carries searches and upserts; without it they go over
    ``client``'s HTTP API like every other call.
    ``clock`` gives the time in seconds (``time.time``); entries expire against it.
    """

    def __init__(
        self,
        client: AsyncQdrantClient,
        *,
        embedding_model: str,
        dimension: int,
        collection: str | None = None,
        clock: Callable[[], float] = time.time,
        points: PointsClient | None = None,
    ) -> None:
        self._client = client
        self._points: Points = GrpcPoints(points) if points is not None else HttpPoints(client)
        self.collection = collection or collection_name(embedding_model)
        self._rejections = Rejections(client, self.collection)
        self._dimension = dimension
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    async def ensure_collection(self) -> None:
        """Create the collection and its payload indexes; replace one of an older layout."""
        if await self._client.collection_exists(self.collection):
            info = await self._client.get_collection(self.collection)
            vectors = info.config.params.vectors
            if isinstance(vectors, dict) and QUESTION_VECTOR in vectors:
                await self._create_indexes()
                return
            # Entries of an older layout (one unnamed vector) cannot be searched by name; the
            # cache only loses answers it would have had to recompute anyway.
            log.warning(
                "replacing a cache collection of an older layout",
                extra={"collection": self.collection},
            )
            await self._client.delete_collection(self.collection)
        vector = models.VectorParams(size=self._dimension, distance=models.Distance.COSINE)
        try:
            await self._client.create_collection(
                self.collection,
                vectors_config={
                    QUESTION_VECTOR: vector,
                    CONTEXT_VECTOR: vector.model_copy(
                        update={"hnsw_config": models.HnswConfigDiff(m=0)}
                    ),
                },
                hnsw_config=HNSW,
            )
        except UnexpectedResponse as exc:
            if exc.status_code != 409:  # another replica created it first
                raise
        await self._create_indexes()

    async def _create_indexes(self) -> None:
        # Creating an index that exists is a no-op; all at once, so that a start stays short.
        await asyncio.gather(
            *(
                self._client.create_payload_index(self.collection, field, field_schema=schema)
                for field, schema in _INDEXES
            )
        )

    def _filter(
        self,
        *,
        scopes: Sequence[str],
        key: CacheKey,
        max_tokens: int,
        mode: ContextMode,
        user_id: str,
    ) -> Conditions:
        context = (
            ("context_fingerprint", key.context_fingerprint)
            if mode is ContextMode.EXACT
            else ("context_shape", key.context_shape)
        )
        return Conditions(
            must=(
                ("scope_key", tuple(scopes)),
                ("key_version", KEY_VERSION),
                ("scope_fingerprint", key.scope_fingerprint),
                context,
                ("expires_at", After(self._now())),
            ),
            # A complete answer serves any budget; one cut at max_tokens only the same budget.
            should=(("complete", True), ("max_tokens", max_tokens)),
            # Left out before the limit applies, so the next-best entry is still a candidate.
            must_not=(("rejected_by", user_id),) if user_id else (),
        )

    async def search(
        self,
        vector: list[float],
        *,
        scopes: Sequence[str],
        key: CacheKey,
        max_tokens: int,
        limit: int,
        score_threshold: float,
        mode: ContextMode = ContextMode.EXACT,
        context_vector: list[float] | None = None,
        user_id: str = "",
    ) -> list[Candidate]:
        """Entries in any of ``scopes`` for the same bot, model, system prompt and context whose
        question is at least ``score_threshold`` similar, most similar first; none that
        ``user_id`` rejected.

        In ``ContextMode.SEMANTIC`` with prior turns (``context_vector`` given), the entries with
        the same turn shape whose question passes the threshold are ranked by context instead,
        and each candidate carries both similarities.
        """
        conditions = self._filter(
            scopes=scopes, key=key, max_tokens=max_tokens, mode=mode, user_id=user_id
        )
        if mode is ContextMode.SEMANTIC and key.has_context and context_vector is not None:
            found = await self._points.by_context(
                self.collection,
                vector,
                context_vector,
                conditions,
                limit=limit,
                prefetch=limit * _SEMANTIC_PREFETCH_FACTOR,
                score_threshold=score_threshold,
            )
        else:
            found = await self._points.nearest(
                self.collection, vector, conditions, limit=limit, score_threshold=score_threshold
            )
        return [
            self._candidate(f.entry_id, f.payload, score=f.score, context_score=f.context_score)
            for f in found
        ]

    @staticmethod
    def _candidate(
        entry_id: str,
        payload: dict[str, Any],
        *,
        score: float,
        context_score: float | None = None,
    ) -> Candidate:
        return Candidate(
            entry_id=entry_id,
            key=CacheKey.from_payload(payload),
            answer=str(payload.get("answer", "")),
            score=score,
            context_score=context_score,
            complete=bool(payload.get("complete", True)),
            scope_key=str(payload.get("scope_key", "")),
        )

    async def evict(
        self,
        *,
        user_id: str,
        request_id: str = "",
        entry_id: str = "",
        delete_shared_after: int,
    ) -> Eviction:
        """A thumbs-down on an entry: see `Rejections.evict`."""
        return await self._rejections.evict(
            user_id=user_id,
            request_id=request_id,
            entry_id=entry_id,
            delete_shared_after=delete_shared_after,
        )

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
        context_vector: list[float] | None = None,
    ) -> str:
        """Store an answer; the entry id derives from the request id, so a redelivery overwrites.

        ``context_vector`` (the embedded prior turns) makes the entry findable in
        ContextMode.SEMANTIC; without it only exact-context lookups find it.
        """
        entry = NewEntry(
            request_id=request_id,
            vector=vector,
            context_vector=context_vector,
            scope_key=scope_key,
            key=key,
            answer=answer,
            ttl_s=ttl_s,
            complete=complete,
            max_tokens=max_tokens,
        )
        return (await self.put_many([entry]))[0]

    async def put_many(self, entries: Sequence[NewEntry], *, wait: bool = True) -> list[str]:
        """Store several answers in one request (bulk loads); returns their entry ids."""
        if not entries:
            return []
        now = self._now()
        await self._points.upsert(
            self.collection,
            [Point(e.entry_id, self._vectors(e), self._payload(e, now)) for e in entries],
            wait=wait,
        )
        return [entry.entry_id for entry in entries]

    @staticmethod
    def _payload(entry: NewEntry, now: int) -> dict[str, object]:
        return {
            **entry.key.payload(),
            "scope_key": entry.scope_key,
            "answer": entry.answer,
            "request_id": entry.request_id,
            "created_at": now,
            "expires_at": now + entry.ttl_s,
            "complete": entry.complete,
            "max_tokens": entry.max_tokens,
        }

    @staticmethod
    def _vectors(entry: NewEntry) -> dict[str, list[float]]:
        vectors = {QUESTION_VECTOR: entry.vector}
        if entry.context_vector and entry.key.has_context:
            vectors[CONTEXT_VECTOR] = entry.context_vector
        return vectors

    async def served_answer(self, entry_id: str) -> tuple[str, str] | None:
        """(scope, answer) of an entry, or None when it is gone."""
        points = await self._client.retrieve(
            self.collection,
            ids=[entry_id],
            with_payload=["scope_key", "answer"],
            with_vectors=False,
        )
        if not points:
            return None
        payload = points[0].payload or {}
        return str(payload.get("scope_key", "")), str(payload.get("answer", ""))

    async def count(self) -> int:
        """How many entries the collection holds (expired ones not yet purged included)."""
        return (await self._client.count(self.collection, exact=True)).count

    async def _delete(self, selector: models.Filter) -> int:
        found = await self._client.count(self.collection, count_filter=selector, exact=True)
        if found.count:
            await self._client.delete(
                self.collection, points_selector=models.FilterSelector(filter=selector), wait=True
            )
        return found.count

    async def invalidate(self, *, bot_id: str = "", model: str = "") -> int:
        """Delete every entry of bot profile ``bot_id`` and/or ``model`` (both: matching both)."""
        must = [
            match(field, value) for field, value in (("bot_id", bot_id), ("model", model)) if value
        ]
        if not must:
            raise ValueError("invalidate needs a bot_id or a model")
        return await self._delete(models.Filter(must=must))

    async def purge_expired(self) -> int:
        """Delete the entries whose TTL has passed (lookups already skip them)."""
        expired = models.FieldCondition(key="expires_at", range=models.Range(lte=self._now()))
        return await self._delete(models.Filter(must=[expired]))

    async def trim(self, max_entries: int) -> int:
        """Delete the oldest entries (by ``created_at``) until at most ``max_entries`` remain."""
        deleted = 0
        while (excess := await self.count() - max_entries) > 0:
            oldest = await self._client.scroll(
                self.collection,
                limit=min(excess, _TRIM_BATCH),
                order_by=models.OrderBy(key="created_at", direction=models.Direction.ASC),
                with_payload=False,
                with_vectors=False,
            )
            ids = [point.id for point in oldest[0]]
            if not ids:
                break
            await self._client.delete(
                self.collection, points_selector=models.PointIdsList(points=ids), wait=True
            )
            deleted += len(ids)
        return deleted
