"""Qdrant's two transports behind one interface: what a search and an upsert need of Qdrant.

:class:`GrpcPoints` speaks Qdrant's gRPC API with protobuf built directly (about a quarter of the
client CPU of the HTTP/JSON path: every lookup and every stored answer makes these calls);
:class:`HttpPoints` speaks qdrant-client's HTTP API, the fallback without a gRPC channel. Both
take the same :class:`Conditions` and return the same :class:`Found` points, so the store has one
search path and the two transports find the same entries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from qdrant_client import AsyncQdrantClient, models
from qdrant_client import grpc as qgrpc

from parley_cache.qdrant_grpc import PointsClient, from_payload, to_payload

__all__ = [
    "CONTEXT_VECTOR",
    "QUESTION_VECTOR",
    "After",
    "Conditions",
    "Found",
    "GrpcPoints",
    "HttpPoints",
    "Points",
    "match",
]

QUESTION_VECTOR: Final = "question"
CONTEXT_VECTOR: Final = "context"
# What a search reads of an entry: its key (for the verifier), its answer and whether that answer
# is whole, not the rest.
_CANDIDATE_FIELDS: Final = (
    "bot_id",
    "model",
    "scope_fingerprint",
    "earlier_fingerprint",
    "question",
    "context",
    "answer",
    "complete",
    "scope_key",
)
_GRPC_CANDIDATE_PAYLOAD: Final = qgrpc.WithPayloadSelector(
    include=qgrpc.PayloadIncludeSelector(fields=list(_CANDIDATE_FIELDS))
)


def match(field: str, value: str | int | bool) -> models.FieldCondition:
    return models.FieldCondition(key=field, match=models.MatchValue(value=value))


@dataclass(frozen=True, slots=True)
class After:
    """A range condition: the field's value is greater than ``value``."""

    value: int


_Value = str | int | bool | tuple[str, ...] | After


@dataclass(frozen=True, slots=True)
class Conditions:
    """A search filter, rendered for either transport: every ``must`` and one ``should`` hold,
    no ``must_not`` does. A value matches exactly; a tuple of strings matches any of them;
    ``After`` is a range."""

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
        if isinstance(value, After):
            return models.FieldCondition(key=field, range=models.Range(gt=value.value))
        if isinstance(value, tuple):
            return models.FieldCondition(key=field, match=models.MatchAny(any=list(value)))
        return match(field, value)

    @staticmethod
    def _grpc(field: str, value: _Value) -> qgrpc.Condition:
        if isinstance(value, After):
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


@dataclass(frozen=True, slots=True)
class Found:
    entry_id: str
    payload: dict[str, Any]
    score: float  # cosine of the question vectors
    context_score: float | None = None  # cosine of the context vectors (by_context only)


@dataclass(frozen=True, slots=True)
class Point:
    """An entry to write: its id, named vectors and payload."""

    entry_id: str
    vectors: dict[str, list[float]]
    payload: dict[str, object]


class Points(Protocol):
    async def nearest(
        self,
        collection: str,
        vector: list[float],
        conditions: Conditions,
        *,
        limit: int,
        score_threshold: float,
    ) -> list[Found]:
        """Entries by question similarity, most similar first."""

    async def by_context(
        self,
        collection: str,
        vector: list[float],
        context_vector: list[float],
        conditions: Conditions,
        *,
        limit: int,
        prefetch: int,
        score_threshold: float,
    ) -> list[Found]:
        """The ``prefetch`` entries nearest by question, ranked by context; each with both
        cosines, most similar question first."""

    async def upsert(self, collection: str, points: Sequence[Point], *, wait: bool) -> None: ...


def _point_id(point_id: qgrpc.PointId) -> str:
    return point_id.uuid if point_id.WhichOneof("point_id_options") == "uuid" else str(point_id.num)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


class GrpcPoints:
    def __init__(self, client: PointsClient) -> None:
        self._client = client

    async def nearest(
        self,
        collection: str,
        vector: list[float],
        conditions: Conditions,
        *,
        limit: int,
        score_threshold: float,
    ) -> list[Found]:
        found = await self._client.query(
            qgrpc.QueryPoints(
                collection_name=collection,
                query=_nearest(vector),
                using=QUESTION_VECTOR,
                filter=conditions.grpc(),
                score_threshold=score_threshold,
                limit=limit,
                with_payload=_GRPC_CANDIDATE_PAYLOAD,
            ),
        )
        return [
            Found(_point_id(p.id), from_payload(p.payload), score=p.score) for p in found.result
        ]

    async def by_context(
        self,
        collection: str,
        vector: list[float],
        context_vector: list[float],
        conditions: Conditions,
        *,
        limit: int,
        prefetch: int,
        score_threshold: float,
    ) -> list[Found]:
        found = await self._client.query(
            qgrpc.QueryPoints(
                collection_name=collection,
                prefetch=[
                    qgrpc.PrefetchQuery(
                        query=_nearest(vector),
                        using=QUESTION_VECTOR,
                        filter=conditions.grpc(),
                        score_threshold=score_threshold,
                        limit=prefetch,
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
                Found(
                    _point_id(point.id),
                    from_payload(point.payload),
                    score=_dot(vector, question),
                    context_score=float(point.score),
                )
            )
        return sorted(out, key=lambda f: f.score, reverse=True)

    async def upsert(self, collection: str, points: Sequence[Point], *, wait: bool) -> None:
        await self._client.upsert(
            qgrpc.UpsertPoints(
                collection_name=collection,
                wait=wait,
                points=[
                    qgrpc.PointStruct(
                        id=qgrpc.PointId(uuid=point.entry_id),
                        vectors=qgrpc.Vectors(
                            vectors=qgrpc.NamedVectors(
                                vectors={
                                    name: qgrpc.Vector(dense=qgrpc.DenseVector(data=vector))
                                    for name, vector in point.vectors.items()
                                }
                            )
                        ),
                        payload=to_payload(point.payload),
                    )
                    for point in points
                ],
            ),
        )


class HttpPoints:
    def __init__(self, client: AsyncQdrantClient) -> None:
        self._client = client

    async def nearest(
        self,
        collection: str,
        vector: list[float],
        conditions: Conditions,
        *,
        limit: int,
        score_threshold: float,
    ) -> list[Found]:
        found = await self._client.query_points(
            collection,
            query=vector,
            using=QUESTION_VECTOR,
            query_filter=conditions.rest(),
            score_threshold=score_threshold,
            limit=limit,
            with_payload=list(_CANDIDATE_FIELDS),
        )
        return [
            Found(str(point.id), point.payload or {}, score=float(point.score))
            for point in found.points
        ]

    async def by_context(
        self,
        collection: str,
        vector: list[float],
        context_vector: list[float],
        conditions: Conditions,
        *,
        limit: int,
        prefetch: int,
        score_threshold: float,
    ) -> list[Found]:
        found = await self._client.query_points(
            collection,
            prefetch=models.Prefetch(
                query=vector,
                using=QUESTION_VECTOR,
                filter=conditions.rest(),
                score_threshold=score_threshold,
                limit=prefetch,
            ),
            query=context_vector,
            using=CONTEXT_VECTOR,
            limit=limit,
            with_payload=list(_CANDIDATE_FIELDS),
            with_vectors=[QUESTION_VECTOR],
        )
        out = []
        for point in found.points:
            stored = point.vector
            question = stored.get(QUESTION_VECTOR) if isinstance(stored, dict) else None
            if not isinstance(question, list) or not question or isinstance(question[0], list):
                continue
            out.append(
                Found(
                    str(point.id),
                    point.payload or {},
                    score=_dot(vector, question),
                    context_score=float(point.score),
                )
            )
        return sorted(out, key=lambda f: f.score, reverse=True)

    async def upsert(self, collection: str, points: Sequence[Point], *, wait: bool) -> None:
        await self._client.upsert(
            collection,
            points=[
                models.PointStruct(id=p.entry_id, vector=dict(p.vectors), payload=p.payload)
                for p in points
            ],
            wait=wait,
        )
