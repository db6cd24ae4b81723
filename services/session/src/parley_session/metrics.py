"""The session service's Prometheus metrics and its MongoDB command tracing."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram
from pymongo import monitoring

from parley.v1 import session_pb2
from parley_common.metrics import (
    FAST_BUCKETS,
    GrpcServerMetrics,
    KafkaMetrics,
    ResultsMetrics,
)
from parley_common.telemetry import annotate, tracer

__all__ = ["MongoTelemetry", "SessionMetrics"]


class SessionMetrics:
    """Registered in the registry the caller passes::

    metrics = SessionMetrics(prometheus_client.REGISTRY)   # what /metrics serves
    client = AsyncMongoClient(uri, event_listeners=[metrics.mongodb_listener()])
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.grpc = GrpcServerMetrics(registry)
        self.kafka = KafkaMetrics(registry)
        self.results = ResultsMetrics(registry, self.kafka)
        self.mongodb_commands = Histogram(
            "parley_mongodb_command_duration_seconds",
            "MongoDB commands the session service ran, by command name (find, insert, ...)",
            ["command"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.mongodb_errors = Counter(
            "parley_mongodb_errors",
            "MongoDB commands that failed, by command name and error (the server's code name, "
            "or the client's exception type for a network failure)",
            ["command", "error"],
            registry=registry,
        )

    def mongodb_listener(self) -> MongoTelemetry:
        return MongoTelemetry(self)

    def observe_start_turn(
        self, request: Any, response: session_pb2.StartTurnResponse, seconds: float
    ) -> None:
        """Name the turn in the StartTurn span (ids, model and prompt size; never content)."""
        annotate(
            {
                "parley.request_id": request.request_id,
                "parley.chat_id": response.chat.chat_id,
                "gen_ai.request.model": response.model,
                "gen_ai.usage.input_tokens": response.context.prompt_tokens,
                "parley.replayed": response.replayed,
            }
        )


class MongoTelemetry(monitoring.CommandListener):
    """A CLIENT span per MongoDB command (child of the call that ran it) and its metrics.

    Spans carry the command and collection names only: never a filter or a document.
    """

    def __init__(self, metrics: SessionMetrics) -> None:
        self._metrics = metrics
        self._spans: dict[tuple[int, Any], trace.Span] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not trace.get_current_span().get_span_context().is_valid:
            return  # background work of the driver or the service: no trace of its own
        collection = event.command.get(event.command_name)
        span = tracer().start_span(
            f"mongodb {event.command_name}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "mongodb",
                "db.operation.name": event.command_name,
                "db.namespace": event.database_name,
                **({"db.collection.name": collection} if isinstance(collection, str) else {}),
            },
        )
        self._spans[(event.request_id, event.connection_id)] = span

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._metrics.mongodb_commands.labels(event.command_name).observe(
            event.duration_micros / 1e6
        )
        span = self._spans.pop((event.request_id, event.connection_id), None)
        if span is not None:
            span.end()

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        failure = event.failure if isinstance(event.failure, dict) else {}
        error = str(failure.get("codeName") or failure.get("errtype") or "unknown")
        self._metrics.mongodb_commands.labels(event.command_name).observe(
            event.duration_micros / 1e6
        )
        self._metrics.mongodb_errors.labels(event.command_name, error).inc()
        span = self._spans.pop((event.request_id, event.connection_id), None)
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, error))
            span.end()
