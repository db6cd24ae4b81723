"""Tracing, request ids and metrics across a real grpc.aio call and through Kafka headers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from aiokafka import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from parley.v1 import cache_pb2
from parley_common.grpc_server import GrpcServer
from parley_common.grpc_telemetry import ServerTelemetry, client_interceptors
from parley_common.kafka import consume_span, context_from_headers, kafka_headers
from parley_common.logs import JsonFormatter, bind_log_fields, log_fields
from parley_common.metrics import GrpcServerMetrics
from parley_common.telemetry import TracingConfigError, setup_tracing, tracer


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this process ends, from now on (the global provider can be set only once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the JSON formatter writes for the gRPC call log lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("parley_common.grpc")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(previous)


async def _lookup(
    request: cache_pb2.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> cache_pb2.LookupResponse:
    return cache_pb2.LookupResponse(hit=True, score=0.93, answer="cached")


async def _evict(
    request: cache_pb2.EvictRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> cache_pb2.EvictResponse:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id: required")
    raise AssertionError("abort raises")


class _Stub:
    """Two methods of CacheService, served by the functions above."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Lookup = channel.unary_unary(
            "/parley.v1.CacheService/Lookup",
            request_serializer=cache_pb2.LookupRequest.SerializeToString,
            response_deserializer=cache_pb2.LookupResponse.FromString,
        )
        self.Evict = channel.unary_unary(
            "/parley.v1.CacheService/Evict",
            request_serializer=cache_pb2.EvictRequest.SerializeToString,
            response_deserializer=cache_pb2.EvictResponse.FromString,
        )


@pytest.fixture
async def cache_stub(
    registry: CollectorRegistry, observed: list[tuple[Any, Any, float]]
) -> AsyncIterator[_Stub]:
    server = GrpcServer(
        port=0,
        host="127.0.0.1",
        interceptors=[
            ServerTelemetry(
                GrpcServerMetrics(registry),
                observers={
                    "/parley.v1.CacheService/Lookup": lambda q, r, s: observed.append((q, r, s))
                },
            )
        ],
    )
    server.server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "parley.v1.CacheService",
                {
                    "Lookup": grpc.unary_unary_rpc_method_handler(
                        _lookup,
                        request_deserializer=cache_pb2.LookupRequest.FromString,
                        response_serializer=cache_pb2.LookupResponse.SerializeToString,
                    ),
                    "Evict": grpc.unary_unary_rpc_method_handler(
                        _evict,
                        request_deserializer=cache_pb2.EvictRequest.FromString,
                        response_serializer=cache_pb2.EvictResponse.SerializeToString,
                    ),
                },
            )
        ]
    )
    await server.start(["parley.v1.CacheService"])
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}", interceptors=client_interceptors()
    )
    try:
        yield _Stub(channel)
    finally:
        await channel.close()
        await server.stop(grace_s=1)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def observed() -> list[tuple[Any, Any, float]]:
    return []


def _by_name(exporter: InMemorySpanExporter, trace_id: int) -> dict[str, ReadableSpan]:
    return {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.context is not None and s.context.trace_id == trace_id
    }


async def test_a_grpc_call_joins_the_callers_trace_and_carries_its_request_id(
    spans: InMemorySpanExporter,
    cache_stub: _Stub,
    registry: CollectorRegistry,
    observed: list[tuple[Any, Any, float]],
    json_lines: io.StringIO,
) -> None:
    with (
        tracer().start_as_current_span("turn") as turn,
        log_fields(request_id="req-42"),
    ):
        reply = await cache_stub.Lookup(cache_pb2.LookupRequest(user_id="u"), timeout=5)
    assert reply.hit
    trace_id = turn.get_span_context().trace_id
    named = _by_name(spans, trace_id)
    client = named["parley.v1.CacheService/Lookup"]
    server = next(
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.SERVER and s.context is not None and s.context.trace_id == trace_id
    )
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None
    assert client.parent.span_id == turn.get_span_context().span_id
    assert server.parent is not None
    assert client.context is not None
    assert server.parent.span_id == client.context.span_id
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["rpc.method"] == "Lookup"

    ok = registry.get_sample_value(
        "parley_grpc_server_requests_total",
        {"grpc_service": "parley.v1.CacheService", "grpc_method": "Lookup", "grpc_code": "OK"},
    )
    assert ok == 1
    assert len(observed) == 1
    assert observed[0][1].score == pytest.approx(0.93)

    (line,) = [json.loads(x) for x in json_lines.getvalue().splitlines()]
    assert line["request_id"] == "req-42"
    assert line["grpc_code"] == "OK"
    assert line["trace_id"] == format(trace_id, "032x")


async def test_a_failed_grpc_call_is_counted_by_its_code_and_marks_both_spans(
    spans: InMemorySpanExporter,
    cache_stub: _Stub,
    registry: CollectorRegistry,
    observed: list[tuple[Any, Any, float]],
) -> None:
    with (
        tracer().start_as_current_span("turn") as turn,
        pytest.raises(grpc.aio.AioRpcError) as failed,
    ):
        await cache_stub.Evict(cache_pb2.EvictRequest(), timeout=5)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    by_kind = {
        s.kind: s
        for s in spans.get_finished_spans()
        if s.context is not None and s.context.trace_id == turn.get_span_context().trace_id
    }
    assert by_kind[SpanKind.CLIENT].status.status_code is StatusCode.ERROR
    assert by_kind[SpanKind.SERVER].status.status_code is StatusCode.ERROR
    invalid = registry.get_sample_value(
        "parley_grpc_server_requests_total",
        {
            "grpc_service": "parley.v1.CacheService",
            "grpc_method": "Evict",
            "grpc_code": "INVALID_ARGUMENT",
        },
    )
    assert invalid == 1
    assert observed == []  # observers see successful calls only


def _record(headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="parley.completions.requests",
        partition=3,
        offset=17,
        timestamp=0,
        timestamp_type=0,
        key=b"chat",
        value=b"",
        checksum=None,
        serialized_key_size=4,
        serialized_value_size=0,
        headers=tuple(headers),
    )


def test_kafka_headers_carry_the_trace_to_the_consumer(spans: InMemorySpanExporter) -> None:
    with tracer().start_as_current_span("enqueue") as producer:
        headers = kafka_headers()
    assert [name for name, _ in headers] == ["traceparent"]
    record = _record(headers)
    extracted = trace.get_current_span(context_from_headers(record)).get_span_context()
    assert extracted.trace_id == producer.get_span_context().trace_id
    assert extracted.span_id == producer.get_span_context().span_id

    with consume_span(record, group="parley-workers") as consumer:
        pass
    assert consumer.get_span_context().trace_id == producer.get_span_context().trace_id
    (finished,) = [s for s in spans.get_finished_spans() if s.name.startswith("process ")]
    assert finished.kind is SpanKind.CONSUMER
    assert finished.parent is not None
    assert finished.parent.span_id == producer.get_span_context().span_id


def test_a_record_without_headers_starts_a_trace_of_its_own() -> None:
    with consume_span(_record([]), group="g") as span:
        assert span.get_span_context().is_valid
    assert not trace.get_current_span(context_from_headers(_record([]))).get_span_context().is_valid


def test_a_bound_request_id_reaches_the_owner_of_the_block_and_every_line() -> None:
    formatter = JsonFormatter("gateway")
    with log_fields(request_id="http-1") as fields:
        bind_log_fields(request_id="turn-7")
        line = json.loads(formatter.format(logging.makeLogRecord({"msg": "hello"})))
    assert fields["request_id"] == "turn-7"
    assert line["request_id"] == "turn-7"
    explicit = logging.makeLogRecord({"msg": "x", "request_id": "mine"})
    with log_fields(request_id="bound"):
        assert json.loads(formatter.format(explicit))["request_id"] == "mine"
    outside = json.loads(formatter.format(logging.makeLogRecord({"msg": "x"})))
    assert "request_id" not in outside


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not supported"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=http is not supported",
        ),
    ],
)
def test_tracing_settings_it_cannot_honour_are_refused_by_name(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(TracingConfigError, match=message):
        setup_tracing("parley-test", environ=env)


def test_tracing_can_be_switched_off() -> None:
    assert setup_tracing("parley-test", environ={"OTEL_SDK_DISABLED": "true"}) is None
