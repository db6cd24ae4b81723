"""A grpc.aio server that always serves grpc.health.v1 and stops gracefully."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "GrpcServer", "message_limit_for"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_ENVELOPE_BYTES = 1024 * 1024  # a message's other fields beside the payload


def message_limit_for(payload_bytes: int) -> int:
    """The gRPC message size (both ends must allow it) that carries `payload_bytes` in one
    message, e.g. an attached file."""
    return max(DEFAULT_MAX_MESSAGE_BYTES, payload_bytes + _ENVELOPE_BYTES)


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """Usage::

    server = GrpcServer(port=50051)
    session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server.server)
    await server.start(["parley.v1.SessionService"])
    ...
    await server.stop(grace_s=10)
    """

    def __init__(
        self,
        *,
        port: int,
        host: str = "0.0.0.0",
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._services: list[str] = []
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {host}:{port}: the port is in use or not allowed")

    async def start(self, services: Iterable[str]) -> None:
        await self.server.start()
        self._services = ["", *services]
        await self.set_serving(True)
        log.info("grpc server listening", extra={"port": self.port})

    async def set_serving(self, serving: bool) -> None:
        for name in self._services:
            await self.health.set(name, _SERVING if serving else _NOT_SERVING)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Report NOT_SERVING, refuse new calls and let in-flight ones finish within grace_s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
