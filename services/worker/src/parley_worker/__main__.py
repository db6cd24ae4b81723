"""Run a worker: `python -m parley_worker` (configured by environment variables)."""

from __future__ import annotations

import asyncio
import logging
import signal

from parley_common.kafka import Topics, ensure_topics
from parley_common.logs import configure_logging
from parley_common.probes import ProbeServer
from parley_worker.config import Settings
from parley_worker.engines import create_engine
from parley_worker.engines.base import EngineSettings
from parley_worker.runner import Worker

log = logging.getLogger("parley_worker")


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(
        engine=settings.engine,
        model=settings.model_name,
        max_concurrency=settings.max_concurrency,
        fake_ttft_s=settings.fake_ttft_s,
        fake_tokens_per_s=settings.fake_tokens_per_s,
        vllm_gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        vllm_max_model_len=settings.vllm_max_model_len,
    )


async def serve(settings: Settings) -> None:
    engine = create_engine(engine_settings(settings))
    probes = ProbeServer(settings.metrics_port, ready=lambda: engine.ready)
    await probes.start()
    await engine.start()
    topics = Topics()
    await ensure_topics(
        settings.kafka_addr,
        [topics.requests, topics.results, topics.control, topics.dead_letters],
    )
    worker = Worker(settings, engine, topics)
    await worker.start()
    log.info(
        "worker ready",
        extra={"engine": engine.name, "model": engine.model_name, "slots": engine.max_concurrency},
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop_fetching)
    await worker.run()
    log.info("worker stopping", extra={"in_flight": worker.in_flight})
    await worker.close(settings.shutdown_grace_s)
    await engine.stop()
    await probes.stop()


def main() -> None:
    settings = Settings()
    configure_logging("worker", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
