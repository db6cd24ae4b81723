"""Run the gateway: `python -m parley_gateway` (configured by environment variables)."""

from __future__ import annotations

import uvicorn
from prometheus_client import REGISTRY

from parley_common.heap import freeze_startup_heap
from parley_common.logs import configure_logging
from parley_common.telemetry import setup_tracing
from parley_gateway.app import create_app
from parley_gateway.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    setup_tracing("parley-gateway")
    app = create_app(settings, registry=REGISTRY)
    freeze_startup_heap()  # what is built before serving: out of the collector's way
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        ws_max_size=settings.max_body_bytes,
    )


if __name__ == "__main__":
    main()
