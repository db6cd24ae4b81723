"""Run a worker: `python -m parley_worker` (configured by environment variables).

Exit status: 0 after a clean stop (SIGTERM or SIGINT), 1 when the engine failed too many
generations in a row (its work is handed back; the orchestrator restarts the worker).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from prometheus_client import REGISTRY

from parley_common.heap import freeze_startup_heap
from parley_common.kafka import ensure_topics
from parley_common.logs import configure_logging
from parley_common.probes import ProbeServer
from parley_common.telemetry import setup_tracing
from parley_worker.config import Settings
from parley_worker.engines import create_engine
from parley_worker.engines.base import EngineSettings
from parley_worker.metrics import WorkerMetrics
from parley_worker.runner import Worker

log = logging.getLogger("parley_worker")


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(
        engine=settings.engine,
        model=settings.model_name,
        max_concurrency=settings.max_concurrency,
        device=settings.device,
        cpu_threads=settings.cpu_threads,
        fake_ttft_s=settings.fake_ttft_s,
        fake_tokens_per_s=settings.fake_tokens_per_s,
        fake_token=settings.fake_token,
        fake_fail_on=settings.fake_fail_on,
        vllm_gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
        vllm_max_model_len=settings.vllm_max_model_len,
        vllm_kv_cache_memory_bytes=settings.vllm_kv_cache_memory_bytes,
        vllm_enforce_eager=settings.vllm_enforce_eager,
    )


async def serve(settings: Settings) -> int:
    engine = create_engine(engine_settings(settings))
    worker: Worker | None = None
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        if worker is not None:
            worker.stop_fetching()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # Ready only once the model is loaded and requests are being fetched.
    probes = ProbeServer(settings.metrics_port, ready=lambda: worker is not None and worker.ready)
    await probes.start()
    try:
        await engine.start()
        if stop.is_set():
            return 0
        topics = settings.topics()
        await ensure_topics(
            settings.kafka_addr,
            [topics.requests, topics.results, topics.control, topics.dead_letters],
        )
        worker = Worker(settings, engine, topics=topics, metrics=WorkerMetrics(REGISTRY))
        await worker.start()
        if stop.is_set():
            worker.stop_fetching()
        freeze_startup_heap()
        log.info(
            "worker ready",
            extra={
                "engine": engine.name,
                "model": engine.model_name,
                "slots": worker.slots,
                "group": settings.worker_group,
            },
        )
        await worker.run()
        log.info("worker stopping", extra={"in_flight": worker.in_flight})
        await worker.close(0 if worker.broken else settings.shutdown_grace_s)
        log.info("worker stopped")
        return 1 if worker.broken else 0
    finally:
        await engine.stop()
        await probes.stop()


def main() -> None:
    settings = Settings()
    configure_logging("worker", settings.log_level)
    setup_tracing("parley-worker")
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
