"""The worker's Prometheus metrics, registered in the registry the caller passes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from parley_common.metrics import KafkaMetrics, value_of

__all__ = ["WorkerMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)
_TPOT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1)


class WorkerMetrics:
    """Outcomes, latencies and load of one worker::

    metrics = WorkerMetrics(prometheus_client.REGISTRY)   # what /metrics serves
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "parley_worker_requests",
            "Requests handled, by outcome (stop, length, cancelled, expired, error, dead_letter)",
            ["outcome"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "parley_worker_in_flight", "Requests being generated now", registry=registry
        )
        self.slots = Gauge(
            "parley_worker_slots", "Generations the engine runs at once", registry=registry
        )
        self.queue_wait = Histogram(
            "parley_worker_queue_wait_seconds",
            "From enqueued by the gateway to fetched by a worker",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "parley_worker_time_to_first_token_seconds",
            "From generation start to the first text",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "parley_worker_time_per_output_token_seconds",
            "Decoding time per token after the first",
            buckets=_TPOT_BUCKETS,
            registry=registry,
        )
        self.output_tokens = Counter(
            "parley_worker_output_tokens", "Tokens generated", registry=registry
        )
        self.overhead = Histogram(
            "parley_worker_overhead_seconds",
            "The worker's own time per request: fetched to result published, less generation",
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.chunks = Counter(
            "parley_worker_chunks", "Streamed chunks sent to reply topics", registry=registry
        )
        self.engine_failures = Counter(
            "parley_worker_engine_failures", "Generations the engine failed", registry=registry
        )
        self.commit_failures = Counter(
            "parley_worker_commit_failures", "Offset commits that failed", registry=registry
        )
        self.prompt_tokens = Counter(
            "parley_worker_prompt_tokens", "Prompt tokens of the generations run", registry=registry
        )
        self.engine_utilization = Gauge(
            "parley_worker_engine_utilization_ratio",
            "Share of the engine's slots busy now (in_flight / slots)",
            registry=registry,
        )
        self.engine_utilization.set_function(self._utilization)
        self.consumer_lag = Gauge(
            "parley_worker_consumer_lag_messages",
            "Requests on this worker's partitions not yet fetched (end offset - position), "
            "measured every few seconds",
            registry=registry,
        )
        self.kafka = KafkaMetrics(registry)

    def _utilization(self) -> float:
        slots = value_of(self.slots)
        return value_of(self.in_flight) / slots if slots > 0 else 0.0
