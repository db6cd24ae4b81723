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
calls every lookup and every stored answer make) go over Qdrant's gRPC API; everything else, and
both of those without one, over qdrant-client's HTTP API. Both build their filters from the same
:class:`_Conditions`, so the two transports find the same entries.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from qdrant_client import AsyncQdrantClient, models
from qdrant_client import grpc as qgrpc
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from parley_cache.keying import KEY_VERSION, CacheKey, ContextMode
from parley_cache.privacy import is_shared_scope, user_scope
from parley_cache.qdrant_grpc import PointsClient, from_payload, to_payload

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

QUESTION_VECTOR: Final = "question"
CONTEXT_VECTOR: Final = "context"

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
# How many entries one rejection can name: the entry an answer was served from (entry_id) and
# the one stored from the request it answered (request_id); the ids are unique.
_EVICT_MATCHES: Final = 4
# Compare-and-set rounds beyond the threshold for one rejection: each lost round means another
# user's rejection landed, so ``delete_shared_after`` rounds always reach the deletion.
_EXTRA_REJECT_ROUNDS: Final = 3


# What a call to Qdrant raises when Qdrant is down, slow or refuses it, over either transport.
STORE_ERRORS: Final[tuple[type[Exception], ...]] = (
    ResponseHandlingException,
    UnexpectedResponse,
    grpc.aio.AioRpcError,
)
# What a search reads of an entry: its key (for the verifier), its answer and whether that answer
# is whole, not the rest.
_CANDIDATE_FIELDS: Final = (
    "bot_id",
    "model",
    "scope_fingerprint",
    "question",
    "context",
    "answer",
    "complete",
)
_GRPC_CANDIDATE_PAYLOAD: Final = qgrpc.WithPayloadSelector(
    include=qgrpc.PayloadIncludeSelector(fields=list(_CANDIDATE_FIELDS))
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


@dataclass(frozen=True, slots=True)
class Eviction:
    """What one user's thumbs-down did.

    ``deleted``: entries of the user's own scope, deleted. ``hidden``: entries of a shared scope
    (a tenant, global) newly hidden from this user, of which ``deleted_shared`` were then
    rejected by enough distinct users to be deleted for everyone.
    """

    deleted: int = 0
    hidden: int = 0
    deleted_shared: int = 0

    @property
    def evicted(self) -> int:
        """Entries this user is no longer served because of this call (0 when repeated)."""
        return self.deleted + self.hidden


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


def _match(field: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))


@dataclass(frozen=True, slots=True)
class _After:
    """A range condition: the field's value is greater than ``value``."""

    value: int


_Value = str | int | bool | tuple[str, ...] | _After


@dataclass(frozen=True, slots=True)
class _Conditions:
    """A search filter, rendered for either transport: every ``must`` and one ``should`` hold,
    no ``must_not`` does. A value matches exactly; a tuple of strings matches any of them;
    ``_After`` is a range."""

    must: tuple[tuple[str, _Value], ...]
    should: tuple[tuple[str, _Value], ...]
    must_not: tuple[tuple[str, _Value], ...] = ()

    def rest(self) -> models.Filter:
        return models.Filter(
            must=[self._rest(field, value) for field, value in self.must],
            should=[self._rest(field, value) for field, value in self.should],
            must_not=[self._rest(field, value) for field, value in self.must_not] or None,
        )

    def grpc(self) -> qgrpc.Filter:
        return qgrpc.Filter(
            must=[self._grpc(field, value) for field, value in self.must],
            should=[self._grpc(field, value) for field, value in self.should],
            must_not=[self._grpc(field, value) for field, value in self.must_not],
        )

    @staticmethod
    def _rest(field: str, value: _Value) -> models.FieldCondition:
        if isinstance(value, _After):
            return models.FieldCondition(key=field, range=models.Range(gt=value.value))
        if isinstance(value, tuple):
            return models.FieldCondition(key=field, match=models.MatchAny(any=list(value)))
        return _match(field, value)

    @staticmethod
    def _grpc(field: str, value: _Value) -> qgrpc.Condition:
        if isinstance(value, _After):
            condition = qgrpc.FieldCondition(key=field, range=qgrpc.Range(gt=value.value))
        elif isinstance(value, tuple):
            strings = qgrpc.RepeatedStrings(strings=list(value))
            condition = qgrpc.FieldCondition(key=field, match=qgrpc.Match(keywords=strings))
        elif isinstance(value, bool):  # before int: True is an int too
            condition = qgrpc.FieldCondition(key=field, match=qgrpc.Match(boolean=value))
        elif isinstance(value, int):
            condition = qgrpc.FieldCondition(key=field, match=qgrpc.Match(integer=value))
        else:
            condition = qgrpc.FieldCondition(key=field, match=qgrpc.Match(keyword=value))
        return qgrpc.Condition(field=condition)


def _nearest(vector: Sequence[float]) -> qgrpc.Query:
    return qgrpc.Query(nearest=qgrpc.VectorInput(dense=qgrpc.DenseVector(data=vector)))


def _dense(vectors: qgrpc.VectorsOutput, name: str) -> Sequence[float]:
    """The named dense vector of a search result; empty when it has none."""
    if vectors.WhichOneof("vectors_options") != "vectors" or name not in vectors.vectors.vectors:
        return ()
    vector = vectors.vectors.vectors[name]
    # Qdrant before 1.12 sends the values in the deprecated `data` field, not in `dense`.
    return vector.dense.data if vector.WhichOneof("vector") == "dense" else vector.data


class _Rejection(enum.Enum):
    UNCHANGED = "unchanged"  # already rejected by this user, or gone
    HIDDEN = "hidden"  # this user is now on its rejected_by
    DELETED = "deleted"  # this user's rejection reached the threshold


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _point_id(point_id: qgrpc.PointId) -> str:
    return point_id.uuid if point_id.WhichOneof("point_id_options") == "uuid" else str(point_id.num)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


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
        self._points = points
        self.collection = collection or collection_name(embedding_model)
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
    ) -> _Conditions:
        context = (
            ("context_fingerprint", key.context_fingerprint)
            if mode is ContextMode.EXACT
            else ("context_shape", key.context_shape)
        )
        return _Conditions(
            must=(
                ("scope_key", tuple(scopes)),
                ("key_version", KEY_VERSION),
                ("scope_fingerprint", key.scope_fingerprint),
                context,
                ("expires_at", _After(self._now())),
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
        semantic = mode is ContextMode.SEMANTIC and key.has_context and context_vector is not None
        if self._points is not None:
            if semantic:
                assert context_vector is not None
                return await self._search_context_grpc(
                    vector, context_vector, conditions, limit, score_threshold
                )
            found = await self._points.query(
                qgrpc.QueryPoints(
                    collection_name=self.collection,
                    query=_nearest(vector),
                    using=QUESTION_VECTOR,
                    filter=conditions.grpc(),
                    score_threshold=score_threshold,
                    limit=limit,
                    with_payload=_GRPC_CANDIDATE_PAYLOAD,
                ),
            )
            return [
                self._candidate(_point_id(p.id), from_payload(p.payload), score=p.score)
                for p in found.result
            ]
        query_filter = conditions.rest()
        if semantic:
            found_rest = await self._client.query_points(
                self.collection,
                prefetch=models.Prefetch(
                    query=vector,
                    using=QUESTION_VECTOR,
                    filter=query_filter,
                    score_threshold=score_threshold,
                    limit=limit * _SEMANTIC_PREFETCH_FACTOR,
                ),
                query=context_vector,
                using=CONTEXT_VECTOR,
                limit=limit,
                with_payload=True,
                with_vectors=[QUESTION_VECTOR],
            )
            out = []
            for point in found_rest.points:
                stored = point.vector
                question = stored.get(QUESTION_VECTOR) if isinstance(stored, dict) else None
                if not isinstance(question, list) or not question or isinstance(question[0], list):
                    continue
                out.append(
                    self._candidate(
                        str(point.id),
                        point.payload or {},
                        score=_dot(vector, question),
                        context_score=float(point.score),
                    )
                )
            return sorted(out, key=lambda c: c.score, reverse=True)
        found_rest = await self._client.query_points(
            self.collection,
            query=vector,
            using=QUESTION_VECTOR,
            query_filter=query_filter,
            score_threshold=score_threshold,
            limit=limit,
            with_payload=True,
        )
        return [
            self._candidate(str(point.id), point.payload or {}, score=float(point.score))
            for point in found_rest.points
        ]

    async def _search_context_grpc(
        self,
        vector: list[float],
        context_vector: list[float],
        conditions: _Conditions,
        limit: int,
        score_threshold: float,
    ) -> list[Candidate]:
        assert self._points is not None
        found = await self._points.query(
            qgrpc.QueryPoints(
                collection_name=self.collection,
                prefetch=[
                    qgrpc.PrefetchQuery(
                        query=_nearest(vector),
                        using=QUESTION_VECTOR,
                        filter=conditions.grpc(),
                        score_threshold=score_threshold,
                        limit=limit * _SEMANTIC_PREFETCH_FACTOR,
                    )
                ],
                query=_nearest(context_vector),
                using=CONTEXT_VECTOR,
                limit=limit,
                with_payload=_GRPC_CANDIDATE_PAYLOAD,
                with_vectors=qgrpc.WithVectorsSelector(
                    include=qgrpc.VectorsSelector(names=[QUESTION_VECTOR])
                ),
            ),
        )
        out = []
        for point in found.result:
            question = _dense(point.vectors, QUESTION_VECTOR)
            if len(question) != len(vector):
                continue
            out.append(
                self._candidate(
                    _point_id(point.id),
                    from_payload(point.payload),
                    score=_dot(vector, question),
                    context_score=float(point.score),
                )
            )
        return sorted(out, key=lambda c: c.score, reverse=True)

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
        )

    async def evict(
        self,
        *,
        user_id: str,
        request_id: str = "",
        entry_id: str = "",
        delete_shared_after: int,
    ) -> Eviction:
        """A thumbs-down by ``user_id`` on the entry stored from ``request_id`` or with id
        ``entry_id``: deleted when it is the user's own, hidden from that user when it is shared
        (a tenant's, global) and deleted for everyone once ``delete_shared_after`` distinct users
        rejected it. Entries of other users' own scopes are never touched.

        The caller vouches that the entry is one this user was served or asked for: the gateway
        takes both ids from the user's own stored message, never from the client.
        """
        if delete_shared_after < 1:
            raise ValueError(f"delete_shared_after must be >= 1, got {delete_shared_after}")
        which: list[models.Condition] = []
        if request_id:
            which.append(_match("request_id", request_id))
        if entry_id:
            which.append(models.HasIdCondition(has_id=[entry_id]))
        if not which:
            return Eviction()
        found, _ = await self._client.scroll(
            self.collection,
            scroll_filter=models.Filter(should=which),
            limit=_EVICT_MATCHES,
            with_payload=["scope_key"],
            with_vectors=False,
        )
        own, shared = [], []
        for point in found:
            scope = str((point.payload or {}).get("scope_key", ""))
            if scope == user_scope(user_id):
                own.append(point.id)
            elif scope and is_shared_scope(scope):
                shared.append(str(point.id))
        if own:
            await self._client.delete(
                self.collection, points_selector=models.PointIdsList(points=own), wait=True
            )
        hidden = deleted_shared = 0
        for shared_id in shared:
            outcome = await self._reject(shared_id, user_id, delete_after=delete_shared_after)
            hidden += outcome is not _Rejection.UNCHANGED
            deleted_shared += outcome is _Rejection.DELETED
        return Eviction(deleted=len(own), hidden=hidden, deleted_shared=deleted_shared)

    async def _reject(self, entry_id: str, user_id: str, *, delete_after: int) -> _Rejection:
        """Add ``user_id`` to the entry's ``rejected_by``, or delete the entry when that makes
        ``delete_after`` users.

        Qdrant cannot append to a list, so this reads the list and writes it back longer, on
        the condition that it still has the length read (compare-and-set): Qdrant applies a
        shard's updates one at a time, filter included, so of two concurrent rejections that
        read the same list one write matches and the other matches nothing; the loser reads
        again and retries. The list only grows while the entry lives, so its length is a
        version. ``STRONG`` ordering sends the writes through one replica, so that replicas
        apply them in the same order.
        """
        wrote = False
        for _ in range(delete_after + _EXTRA_REJECT_ROUNDS):
            points = await self._client.retrieve(
                self.collection, ids=[entry_id], with_payload=["rejected_by"], with_vectors=False
            )
            if not points:  # deleted meanwhile (other users' rejections, TTL, invalidation)
                return _Rejection.HIDDEN if wrote else _Rejection.UNCHANGED
            seen = _strings((points[0].payload or {}).get("rejected_by"))
            if user_id in seen:
                return _Rejection.HIDDEN if wrote else _Rejection.UNCHANGED
            if len(seen) + 1 >= delete_after:
                await self._client.delete(
                    self.collection,
                    points_selector=models.PointIdsList(points=[entry_id]),
                    wait=True,
                    ordering=models.WriteOrdering.STRONG,
                )
                return _Rejection.DELETED
            unchanged: models.Condition = (
                models.IsEmptyCondition(is_empty=models.PayloadField(key="rejected_by"))
                if not seen
                else models.FieldCondition(
                    key="rejected_by",
                    values_count=models.ValuesCount(gte=len(seen), lte=len(seen)),
                )
            )
            await self._client.set_payload(
                self.collection,
                payload={"rejected_by": [*seen, user_id]},
                points=models.Filter(must=[models.HasIdCondition(has_id=[entry_id]), unchanged]),
                wait=True,
                ordering=models.WriteOrdering.STRONG,
            )
            wrote = True
        log.warning(
            "a rejection of a shared cache entry lost every round to concurrent ones; not recorded",
            extra={"entry_id": entry_id},
        )
        return _Rejection.UNCHANGED

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
        if self._points is not None:
            await self._points.upsert(
                qgrpc.UpsertPoints(
                    collection_name=self.collection,
                    wait=wait,
                    points=[
                        qgrpc.PointStruct(
                            id=qgrpc.PointId(uuid=entry.entry_id),
                            vectors=qgrpc.Vectors(
                                vectors=qgrpc.NamedVectors(
                                    vectors={
                                        name: qgrpc.Vector(dense=qgrpc.DenseVector(data=vector))
                                        for name, vector in self._vectors(entry).items()
                                    }
                                )
                            ),
                            payload=to_payload(self._payload(entry, now)),
                        )
                        for entry in entries
                    ],
                ),
            )
        else:
            points = [
                models.PointStruct(
                    id=entry.entry_id,
                    vector=dict(self._vectors(entry)),
                    payload=self._payload(entry, now),
                )
                for entry in entries
            ]
            await self._client.upsert(self.collection, points=points, wait=wait)
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
            _match(field, value) for field, value in (("bot_id", bot_id), ("model", model)) if value
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
