"""The cache service's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from parley.v1 import cache_pb2, types_pb2
from parley_common.metrics import (
    FAST_BUCKETS,
    GrpcServerMetrics,
    KafkaMetrics,
    ResultsMetrics,
)
from parley_common.telemetry import annotate

__all__ = ["LOOKUP", "LOOKUP_OUTCOMES", "CacheMetrics"]

LOOKUP = "/parley.v1.CacheService/Lookup"
# hit; miss (no entry close enough, or the verifier refused the closest); bypass (the request asked
# not to be answered from the cache, the key is still built); skipped (caching off for the turn).
LOOKUP_OUTCOMES = ("hit", "miss", "bypass", "skipped")
_SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 1.0)


class CacheMetrics:
    """Registered in the registry the caller passes::

    metrics = CacheMetrics(prometheus_client.REGISTRY)   # what /metrics serves
    ServerTelemetry(metrics.grpc, observers={LOOKUP: metrics.observe_lookup})
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.grpc = GrpcServerMetrics(registry)
        self.kafka = KafkaMetrics(registry)
        self.results = ResultsMetrics(registry, self.kafka)
        self.lookups = Counter(
            "parley_cache_lookups",
            "Cache lookups, by outcome (hit, miss, bypass, skipped)",
            ["outcome"],
            registry=registry,
        )
        for outcome in LOOKUP_OUTCOMES:
            self.lookups.labels(outcome)
        self.similarity = Histogram(
            "parley_cache_similarity",
            "The verifier's score of the best candidate, by outcome: the hits' scores, and "
            "the misses' best candidates (how far the threshold is)",
            ["outcome"],
            buckets=_SIMILARITY_BUCKETS,
            registry=registry,
        )
        self.lookup_duration = Histogram(
            "parley_cache_lookup_duration_seconds",
            "Time to answer a lookup (embedding, search and judgement), by outcome",
            ["outcome"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )

    def observe_lookup(
        self, request: cache_pb2.LookupRequest, response: cache_pb2.LookupResponse, seconds: float
    ) -> None:
        if response.hit:
            outcome = "hit"
        elif not response.HasField("key"):
            outcome = "skipped"
        elif request.bypass:
            outcome = "bypass"
        else:
            outcome = "miss"
        self.lookups.labels(outcome).inc()
        self.lookup_duration.labels(outcome).observe(seconds)
        if outcome in ("hit", "miss") and response.score > 0:
            self.similarity.labels(outcome).observe(response.score)
        annotate(
            {
                "parley.cache.outcome": outcome,
                "parley.cache.score": round(response.score, 4),
                "parley.cache.scope": types_pb2.CacheScope.Name(request.scope),
                "gen_ai.request.model": request.model,
            }
        )
