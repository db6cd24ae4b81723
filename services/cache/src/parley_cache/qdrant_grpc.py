"""Qdrant's gRPC API for the cache's hot path: the channel, and payloads to and from its values.

Lookups search and results store over gRPC: protobuf messages built directly cost the cache a
fraction of the CPU that qdrant-client's HTTP/JSON path (pydantic models, httpx) does per call,
and the calls share the gRPC core that already serves CacheService. Everything else (creating
the collection, counting, deleting) stays on qdrant-client's HTTP API: it is rare.

::

    channel = connect("qdrant:6334")
    points = PointsClient(channel, api_key="", timeout_s=5)
    found = await points.query(qgrpc.QueryPoints(...))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import grpc
from qdrant_client import grpc as qgrpc

__all__ = [
    "PointsClient",
    "connect",
    "from_payload",
    "to_payload",
]

# After Qdrant restarts, the channel reconnects within a couple of seconds (gRPC's own backoff
# grows to two minutes); meanwhile calls fail at once and lookups answer a miss.
_CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


def connect(addr: str) -> grpc.aio.Channel:
    """An insecure channel to Qdrant's gRPC port (as the HTTP client, without TLS)."""
    return grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS)


class PointsClient:
    """The calls the hot path makes, each bounded by ``timeout_s``, with the API key in its
    metadata."""

    def __init__(
        self, channel: grpc.aio.Channel, *, api_key: str = "", timeout_s: float = 5.0
    ) -> None:
        self._timeout_s = timeout_s
        self._metadata: tuple[tuple[str, str], ...] = (("api-key", api_key),) if api_key else ()
        self._query = channel.unary_unary(
            "/qdrant.Points/Query",
            request_serializer=qgrpc.QueryPoints.SerializeToString,
            response_deserializer=qgrpc.QueryResponse.FromString,
        )
        self._upsert = channel.unary_unary(
            "/qdrant.Points/Upsert",
            request_serializer=qgrpc.UpsertPoints.SerializeToString,
            response_deserializer=qgrpc.PointsOperationResponse.FromString,
        )
        self._health = channel.unary_unary(
            "/qdrant.Qdrant/HealthCheck",
            request_serializer=qgrpc.HealthCheckRequest.SerializeToString,
            response_deserializer=qgrpc.HealthCheckReply.FromString,
        )

    async def query(self, request: qgrpc.QueryPoints) -> qgrpc.QueryResponse:
        response: qgrpc.QueryResponse = await self._query(
            request, timeout=self._timeout_s, metadata=self._metadata
        )
        return response

    async def upsert(self, request: qgrpc.UpsertPoints) -> None:
        await self._upsert(request, timeout=self._timeout_s, metadata=self._metadata)

    async def check(self) -> str:
        """Qdrant's version, from its gRPC health check: fails when nothing answers there, or
        something that is not Qdrant's gRPC API."""
        reply: qgrpc.HealthCheckReply = await self._health(
            qgrpc.HealthCheckRequest(), timeout=self._timeout_s, metadata=self._metadata
        )
        return reply.version


def _value(obj: object) -> qgrpc.Value:
    # bool before int: True is an int too.
    if isinstance(obj, bool):
        return qgrpc.Value(bool_value=obj)
    if isinstance(obj, int):
        return qgrpc.Value(integer_value=obj)
    if isinstance(obj, float):
        return qgrpc.Value(double_value=obj)
    if isinstance(obj, str):
        return qgrpc.Value(string_value=obj)
    if obj is None:
        return qgrpc.Value(null_value=qgrpc.NullValue.NULL_VALUE)
    if isinstance(obj, list | tuple):
        return qgrpc.Value(list_value=qgrpc.ListValue(values=[_value(item) for item in obj]))
    if isinstance(obj, Mapping):
        return qgrpc.Value(
            struct_value=qgrpc.Struct(fields={str(k): _value(v) for k, v in obj.items()})
        )
    raise TypeError(f"a payload holds JSON values, not {type(obj).__name__}")


def to_payload(payload: Mapping[str, object]) -> dict[str, qgrpc.Value]:
    return {key: _value(value) for key, value in payload.items()}


def _python(value: qgrpc.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "integer_value":
        return value.integer_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "double_value":
        return value.double_value
    if kind == "list_value":
        return [_python(item) for item in value.list_value.values]
    if kind == "struct_value":
        return {key: _python(item) for key, item in value.struct_value.fields.items()}
    return None


def from_payload(payload: Mapping[str, qgrpc.Value]) -> dict[str, object]:
    return {key: _python(value) for key, value in payload.items()}
