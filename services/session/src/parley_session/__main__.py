"""Run the session service: `python -m parley_session` (configured by environment variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure

from parley.v1 import session_pb2_grpc
from parley_common.grpc_server import GrpcServer
from parley_common.kafka import ResultsConsumer, Topics, ensure_topics, make_producer
from parley_common.logs import configure_logging
from parley_common.probes import ProbeServer
from parley_session.config import Settings
from parley_session.results import ResultRecorder
from parley_session.server import SessionServicer
from parley_session.store import SessionStore
from parley_session.tokens import TokenCounter

log = logging.getLogger("parley_session")


async def serve(settings: Settings) -> None:
    topics = Topics()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    store = SessionStore(client, settings.mongodb_database)
    await store.ensure_indexes()
    servicer = SessionServicer(store, TokenCounter(settings.tokenizer_path), settings)
    server = GrpcServer(port=settings.grpc_port)
    session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server.server)

    await ensure_topics(settings.kafka_addr, [topics.results, topics.dead_letters])
    producer = make_producer(settings.kafka_addr, client_id="parley-session")
    await producer.start()
    consumer = ResultsConsumer(
        bootstrap=settings.kafka_addr,
        group_id=settings.results_group,
        handler=ResultRecorder(store),
        producer=producer,
        topics=topics,
        transient=(ConnectionFailure,),
    )
    await consumer.start()
    await server.start(["parley.v1.SessionService"])
    probes = ProbeServer(settings.metrics_port, ready=lambda: True)
    await probes.start()
    log.info("session service ready", extra={"grpc_port": server.port})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("session service stopping")
    await server.stop(grace_s=10)
    await probes.stop()
    with contextlib.suppress(Exception):
        await consumer.stop()
    await producer.stop()
    await client.close()


def main() -> None:
    settings = Settings()
    configure_logging("session", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
