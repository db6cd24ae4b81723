"""Run the session service: `python -m parley_session` (configured by environment variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from prometheus_client import REGISTRY
from pymongo import AsyncMongoClient

from parley.v1 import session_pb2_grpc
from parley_common.grpc_server import GrpcServer, message_limit_for
from parley_common.grpc_telemetry import ServerTelemetry
from parley_common.heap import freeze_startup_heap
from parley_common.kafka import ResultsConsumer, ensure_topics, make_producer
from parley_common.logs import configure_logging
from parley_common.probes import ProbeServer
from parley_common.telemetry import setup_tracing
from parley_session.availability import MongoAvailability, report_health
from parley_session.completions import CompletionService, ResultTracker
from parley_session.config import Settings
from parley_session.metrics import SessionMetrics
from parley_session.results import ResultRecorder
from parley_session.retry import RetryPolicy, StoreUnavailableError
from parley_session.server import SessionServicer
from parley_session.stores import Stores
from parley_session.summaries import Summarizer
from parley_session.tokens import TokenCounter

log = logging.getLogger("parley_session")

SERVICE = "parley.v1.SessionService"


async def serve(settings: Settings) -> None:
    """The wiring, in start-up order and stopped in reverse: long, but read once, top to bottom."""
    topics = settings.topics()
    metrics = SessionMetrics(REGISTRY)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri,
        # What runs outside the retry policy's bounds (e.g. the rate-limit counters) waits for a
        # server no longer than an operation under it.
        serverSelectionTimeoutMS=int(
            min(settings.mongodb_timeout_ms, settings.store_retry_s * 1000)
        ),
        tz_aware=True,
        event_listeners=[metrics.mongodb_listener()],
    )
    server = GrpcServer(
        port=settings.grpc_port,
        max_message_bytes=message_limit_for(settings.attachment_max_bytes),
        interceptors=[
            ServerTelemetry(
                metrics.grpc,
                observers={f"/{SERVICE}/StartTurn": metrics.observe_start_turn},
            )
        ],
    )
    availability = MongoAvailability(client, on_change=report_health(server.health, SERVICE))
    store = Stores(
        client,
        settings.mongodb_database,
        retry=RetryPolicy(
            attempts=settings.store_retry_attempts,
            attempt_timeout_s=settings.mongodb_timeout_ms / 1000,
            total_s=settings.store_retry_s,
            availability=availability,
        ),
    )
    await store.ensure_indexes()
    tokens = TokenCounter(settings.tokenizer_path)
    if not tokens.exact:
        log.warning("no tokenizer and chat template: token counts are estimates")

    await ensure_topics(settings.kafka_addr, [topics.requests, topics.results, topics.dead_letters])
    producer = make_producer(
        settings.kafka_addr, client_id="parley-session", kafka_metrics=metrics.kafka
    )
    await producer.start()
    summarizer = Summarizer(
        store,
        tokens,
        producer,
        topics=topics,
        window=settings.context_window,
        timeout_s=settings.summary_timeout_s,
        retry_s=settings.summary_retry_s,
    )
    completions = CompletionService.for_store(
        store,
        tokens,
        model_name=settings.model_name,
        context_window=settings.context_window,
        default_max_tokens=settings.default_max_tokens,
        retention_s=settings.completion_retention_s,
    )
    await completions.ensure_indexes()
    servicer = SessionServicer(
        store, tokens, settings, summarizer=summarizer, completions=completions
    )
    session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server.server)
    consumer = ResultsConsumer(
        bootstrap=settings.kafka_addr,
        group_id=settings.results_group,
        handler=ResultTracker(
            ResultRecorder(store, tokens, summary_retry_s=settings.summary_retry_s), completions
        ),
        producer=producer,
        topics=topics,
        # MongoDB down delays results; it never dead-letters them.
        transient=(StoreUnavailableError,),
        metrics=metrics.results,
    )
    await consumer.start()
    await server.start([SERVICE])
    # Health and readiness follow MongoDB from here on (SERVICE's status; "" stays SERVING).
    await availability.start()
    probes = ProbeServer(settings.metrics_port, ready=lambda: availability.reachable)
    await probes.start()
    freeze_startup_heap()
    log.info("session service ready", extra={"grpc_port": server.port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("session service stopping")
    # Health says NOT_SERVING, new calls are refused, calls in flight finish within the grace.
    await server.stop(grace_s=settings.shutdown_grace_s)
    await availability.stop()
    await probes.stop()
    with contextlib.suppress(Exception):
        await consumer.stop()
    await summarizer.aclose()
    await producer.stop()
    await client.close()


def main() -> None:
    settings = Settings()
    configure_logging("session", settings.log_level)
    setup_tracing("parley-session")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
