"""Run the gateway: `python -m parley_gateway` (configured by environment variables)."""

from __future__ import annotations

import uvicorn

from parley_common.logs import configure_logging
from parley_gateway.app import create_app
from parley_gateway.config import Settings


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
