"""Metric families that several services share, registered in the registry each service passes.

Each service defines its metrics in its own `parley_<service>/metrics.py` and builds these there::

    grpc = GrpcServerMetrics(prometheus_client.REGISTRY)

Names follow Prometheus conventions: the `parley_` prefix, the unit in the name, `_total` on
counters (added by prometheus_client), and labels of bounded cardinality only (never a user,
chat or request id).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "FAST_BUCKETS",
    "KAFKA_OPERATIONS",
    "LATENCY_BUCKETS",
    "GrpcServerMetrics",
    "KafkaMetrics",
    "ResultsMetrics",
    "value_of",
]

# From a millisecond to the longest a turn may take (the gateway's default deadline is 120 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Database calls and lookups: sub-millisecond to a few seconds.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

KAFKA_OPERATIONS = ("produce", "consume", "commit")


class GrpcServerMetrics:
    """Calls a gRPC server handled, by service, method and status code (recorded by
    `parley_common.grpc_telemetry.ServerTelemetry`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "parley_grpc_server_requests",
            "gRPC calls handled, by service, method and status code",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.duration = Histogram(
            "parley_grpc_server_request_duration_seconds",
            "Time to handle a gRPC call, by service, method and status code",
            ["grpc_service", "grpc_method", "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        self.requests.labels(service, method, code).inc()
        self.duration.labels(service, method, code).observe(seconds)


class KafkaMetrics:
    """Kafka operations that failed: `produce` (a send or its delivery), `consume` (a fetch or
    an undecodable message), `commit` (an offset commit)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "parley_kafka_errors",
            "Kafka operations that failed, by operation (produce, consume, commit)",
            ["operation"],
            registry=registry,
        )
        for operation in KAFKA_OPERATIONS:
            self.errors.labels(operation)  # exported as 0 before the first error

    def error(self, operation: str) -> None:
        self.errors.labels(operation).inc()


class ResultsMetrics:
    """What a results consumer (session, cache) does with the completion results it reads."""

    def __init__(self, registry: CollectorRegistry, kafka: KafkaMetrics) -> None:
        self.kafka = kafka
        self.results = Counter(
            "parley_results_consumed",
            "Completion results read from the results topic, by outcome "
            "(applied, dead_letter, retried)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "dead_letter", "retried"):
            self.results.labels(outcome)
        self.delay = Histogram(
            "parley_results_delay_seconds",
            "From a result's publication to its application by this consumer (how far behind "
            "storing answers is)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.apply_duration = Histogram(
            "parley_results_apply_duration_seconds",
            "Time to apply one result (the handler, retries included)",
            buckets=FAST_BUCKETS,
            registry=registry,
        )


def value_of(metric: object, suffix: str = "") -> float:
    """The value of an unlabelled metric's sample named `<name><suffix>` (0 when absent)."""
    collect = getattr(metric, "collect", None)
    if collect is None:
        return 0.0
    for family in collect():
        for sample in family.samples:
            if sample.name == family.name + suffix:
                return float(sample.value)
    return 0.0
