"""The gateway's Prometheus metrics, registered in the registry the caller passes::

    metrics = GatewayMetrics(prometheus_client.REGISTRY)   # what /metrics serves

Labels are bounded: routes are templates (`/chat/{chat_id}/completion`), never paths; no user,
key, chat or request id is ever a label.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from parley_common.metrics import LATENCY_BUCKETS, KafkaMetrics

__all__ = ["REFUSAL_REASONS", "TURN_SOURCES", "GatewayMetrics"]

# Why a turn was refused before any work: a user's requests or tokens per minute (429), or the
# workers' queue being full (503).
REFUSAL_REASONS = ("requests_per_minute", "tokens_per_minute", "queue_full")
# Where a turn's answer came from.
TURN_SOURCES = ("worker", "cache")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.http_requests = Counter(
            "parley_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_request_duration = Histogram(
            "parley_http_request_duration_seconds",
            "From a request's arrival to the end of its response (a stream's last event), by "
            "method, route template and status code",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.http_in_flight = Gauge(
            "parley_http_requests_in_flight",
            "HTTP requests being answered now (streams included)",
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "parley_gateway_time_to_first_token_seconds",
            "From a turn's request arriving to its first text reaching the gateway (what the "
            "user waits for), by answer source (worker, cache)",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.turn_duration = Histogram(
            "parley_gateway_turn_duration_seconds",
            "End-to-end latency of a turn: from its request arriving to its whole answer, by "
            "answer source and finish reason",
            ["source", "finish_reason"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "parley_gateway_tokens",
            "Tokens of answered turns, by direction (prompt: in, completion: out) and source",
            ["direction", "source"],
            registry=registry,
        )
        self.admission_refusals = Counter(
            "parley_gateway_admission_refusals",
            "Turns refused before any work, by reason (requests_per_minute, tokens_per_minute: "
            "429; queue_full: 503)",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSAL_REASONS:
            self.admission_refusals.labels(reason)  # exported as 0 before the first refusal
        self.cache_lookup_failures = Counter(
            "parley_gateway_cache_lookup_failures",
            "Cache lookups that failed or timed out (the turn went to a worker)",
            registry=registry,
        )
        self.kafka = KafkaMetrics(registry)
