"""Run the cache service: `python -m parley_cache` (configured by environment variables)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from prometheus_client import REGISTRY
from qdrant_client import AsyncQdrantClient

from parley.v1 import cache_pb2_grpc
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.feedback_counts import FeedbackCounts
from parley_cache.maintenance import Maintenance
from parley_cache.metrics import LOOKUP, CacheMetrics
from parley_cache.qdrant_grpc import PointsClient, connect
from parley_cache.results import ResultIndexer
from parley_cache.server import CacheServicer
from parley_cache.store import CacheStore
from parley_cache.tuning import FeedbackTuner
from parley_cache.verifier import default_verifier
from parley_common.grpc_server import GrpcServer
from parley_common.grpc_telemetry import ServerTelemetry
from parley_common.heap import freeze_startup_heap
from parley_common.kafka import ResultsConsumer, ensure_topics, make_producer
from parley_common.logs import configure_logging
from parley_common.probes import ProbeServer
from parley_common.telemetry import setup_tracing

log = logging.getLogger("parley_cache")


async def serve(settings: Settings) -> None:
    import torch

    # Concurrent lookups share model calls (the embedder's micro-batches) instead: more
    # intra-op threads than that only spin, on the cores the event loop needs.
    torch.set_num_threads(settings.embedding_threads)
    embedder = Embedder(
        settings.embedding_model or None,
        device=settings.embedding_device,
        precision=settings.embedding_precision,
        memo_size=settings.embedding_memo_size,
        runtime=settings.embedding_runtime,
        threads=settings.embedding_threads,
        onnx_cache_dir=Path(settings.embedding_onnx_dir) if settings.embedding_onnx_dir else None,
    )
    host, _, port = settings.qdrant_addr.rpartition(":")
    api_key = settings.qdrant_api_key.get_secret_value()
    client = AsyncQdrantClient(
        host=host or "127.0.0.1",
        port=int(port),
        api_key=api_key or None,
        https=False,
        timeout=5,
    )
    channel = connect(settings.qdrant_grpc_target)
    points = PointsClient(channel, api_key=api_key, timeout_s=5)
    store = CacheStore(
        client, embedding_model=embedder.model_id, dimension=embedder.dimension, points=points
    )
    await store.ensure_collection()
    try:
        await points.check()
    except grpc.aio.AioRpcError as exc:
        # Else every lookup would quietly be a miss and no answer would ever be stored.
        log.critical(
            f"Qdrant's gRPC API is not reachable at {settings.qdrant_grpc_target}: set "
            "QDRANT_GRPC_ADDR to its host:port (Qdrant's gRPC port, 6334 by default)",
            extra={"code": exc.code().name, "error": exc.details()},
        )
        await channel.close()
        await client.close()
        raise SystemExit(1) from None
    # Hits and rejections per scope, shared by the replicas and kept across restarts.
    feedback = FeedbackCounts(client, window_days=settings.cache_feedback_window_days)
    await feedback.ensure_collection()
    verifier = default_verifier()
    tuner = FeedbackTuner(
        verifier.weights.calibration, feedback, refresh_s=settings.cache_feedback_refresh_s
    )
    metrics = CacheMetrics(REGISTRY)
    server = GrpcServer(
        port=settings.grpc_port,
        interceptors=[ServerTelemetry(metrics.grpc, observers={LOOKUP: metrics.observe_lookup})],
    )
    cache_pb2_grpc.add_CacheServiceServicer_to_server(
        CacheServicer(store, embedder, settings, verifier, tuner), server.server
    )
    topics = settings.topics()
    await ensure_topics(settings.kafka_addr, [topics.results, topics.dead_letters])
    producer = make_producer(
        settings.kafka_addr, client_id="parley-cache", kafka_metrics=metrics.kafka
    )
    await producer.start()
    consumer = ResultsConsumer(
        bootstrap=settings.kafka_addr,
        group_id=settings.results_group,
        handler=ResultIndexer(store, embedder, default_ttl_s=settings.cache_ttl_seconds),
        producer=producer,
        topics=topics,
        metrics=metrics.results,
    )
    await consumer.start()
    probes = ProbeServer(settings.metrics_port, ready=lambda: True)
    await probes.start()
    await server.start(["parley.v1.CacheService"])
    maintenance = asyncio.create_task(
        Maintenance(store, max_entries=settings.cache_max_entries).run(
            settings.cache_maintenance_interval_s
        )
    )
    flushing = asyncio.create_task(tuner.run(settings.cache_feedback_flush_s))
    freeze_startup_heap()
    log.info(
        "cache service ready",
        extra={
            "grpc_port": server.port,
            "collection": store.collection,
            "qdrant_grpc": settings.qdrant_grpc_target,
            "embedding_precision": embedder.precision,
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    maintenance.cancel()
    await asyncio.gather(maintenance, return_exceptions=True)
    await server.stop(grace_s=5)
    flushing.cancel()  # it writes the counts of the last lookups on its way out
    await asyncio.gather(flushing, return_exceptions=True)
    await consumer.stop()
    await producer.stop()
    await probes.stop()
    await embedder.aclose()
    await channel.close()
    await client.close()


def main() -> None:
    settings = Settings()
    configure_logging("cache", settings.log_level)
    setup_tracing("parley-cache")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
