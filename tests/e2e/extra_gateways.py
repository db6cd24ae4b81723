"""More gateway replicas, with settings of their own, on the running platform: they share its
session, cache, workers and Kafka topics, as replicas behind a load balancer do."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from parley_devstack.platform import Platform, ServiceProcess
from parley_devstack.ports import pick_free_ports

__all__ = ["extra_gateways", "gateway_url"]


def gateway_url(gateway: ServiceProcess) -> str:
    return gateway.ready_url.removesuffix("/healthz/ready")


@contextmanager
def extra_gateways(
    platform: Platform,
    run_dir: Path,
    count: int,
    env: Mapping[str, str],
    *,
    ports: list[int] | None = None,
) -> Iterator[list[ServiceProcess]]:
    """`ports`: where they listen (picked when not given)."""
    base = platform.gateways[0].env
    gateways = [
        ServiceProcess(
            f"gateway-extra-{i}",
            "parley_gateway",
            {
                **base,
                **env,
                "PORT": str(port),
                "GATEWAY_INSTANCE_ID": f"gateway-extra-{i}-{secrets.token_hex(4)}",
            },
            run_dir / f"gateway-extra-{i}.log",
            ready_url=f"http://127.0.0.1:{port}/healthz/ready",
        )
        for i, port in enumerate(ports or pick_free_ports(count))
    ]
    try:
        for gateway in gateways:
            gateway.start()
        platform.wait_ready(gateways, timeout=60)
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()
