"""Qdrant 1.16 (HTTP and gRPC) with its storage under the stack's data folder."""

from __future__ import annotations

import http.client
import os
from typing import ClassVar

from parley_devstack._process import ManagedProcess
from parley_devstack._server import Server
from parley_devstack.ports import HOST, port_is_open

__all__ = ["QdrantServer"]


class QdrantServer(Server):
    """`qdrant` on 127.0.0.1, ready once `/readyz` answers 200."""

    name: ClassVar[str] = "Qdrant"
    port_guess: ClassVar[str] = "another Qdrant?"
    port_count: ClassVar[int] = 2

    _process: ManagedProcess | None = None

    @property
    def http_port(self) -> int:
        return self._ports[0]

    @property
    def grpc_port(self) -> int:
        return self._ports[1]

    def _spawn(self) -> None:
        binary = self.installation.qdrant()
        storage = self.data_dir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "QDRANT__SERVICE__HOST": HOST,
            "QDRANT__SERVICE__HTTP_PORT": str(self.http_port),
            "QDRANT__SERVICE__GRPC_PORT": str(self.grpc_port),
            "QDRANT__STORAGE__STORAGE_PATH": str(storage),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": str(self.data_dir / "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
            "QDRANT__LOG_LEVEL": "INFO",
            "RUST_BACKTRACE": "0",
        }
        # Qdrant writes files relative to its working folder; keep them in the data folder.
        self._process = ManagedProcess(
            [str(binary)], log_path=self.data_dir / "qdrant.log", cwd=self.data_dir, env=env
        )
        self._process.spawn()

    def _advance(self) -> bool:
        assert self._process is not None
        self._check_alive(self._process)
        # A gRPC port that cannot be bound is only logged (the cause only once Qdrant stops);
        # Qdrant goes on serving HTTP.
        if "Error while starting gRPC server" in self._process.log_tail(200):
            self._process.stop(timeout=5.0)
            self._check_alive(self._process)
        if not port_is_open(self.grpc_port):
            return False
        connection = http.client.HTTPConnection(HOST, self.http_port, timeout=1.0)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def _processes(self) -> list[ManagedProcess]:
        return [self._process] if self._process is not None else []
