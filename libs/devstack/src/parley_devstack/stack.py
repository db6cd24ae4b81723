"""The local stack: MongoDB, Kafka (with ZooKeeper) and Qdrant as processes on this machine."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from parley_devstack._process import pid_alive
from parley_devstack._server import Server
from parley_devstack.install import Installation, ensure_free_disk
from parley_devstack.kafka import KafkaServer
from parley_devstack.mongo import MongoServer
from parley_devstack.ports import pick_free_ports
from parley_devstack.qdrant import QdrantServer

__all__ = ["LocalStack", "StackAddresses"]

_DISK_NEEDED = 2**30
_POLL_INTERVAL = 0.1
_RUN_NAME = re.compile(r"^\d{8}-\d{6}-(?P<pid>\d+)-[0-9a-f]+$")


@dataclass(frozen=True)
class StackAddresses:
    """Where the servers of a started stack listen."""

    mongodb_uri: str
    kafka_addr: str
    qdrant_addr: str
    qdrant_grpc_addr: str

    def as_env(self) -> dict[str, str]:
        """The environment variables the services read: MONGODB_URI, KAFKA_ADDR, QDRANT_ADDR and
        QDRANT_GRPC_ADDR."""
        return {
            "MONGODB_URI": self.mongodb_uri,
            "KAFKA_ADDR": self.kafka_addr,
            "QDRANT_ADDR": self.qdrant_addr,
            "QDRANT_GRPC_ADDR": self.qdrant_grpc_addr,
        }

    def env_lines(self) -> str:
        """`KEY=value` lines, as written to an env file."""
        return "".join(f"{key}={value}\n" for key, value in self.as_env().items())


class LocalStack:
    """Installs, starts and stops a real MongoDB, Kafka and Qdrant on free 127.0.0.1 ports.

    ```python
    with LocalStack() as stack:
        client = AsyncMongoClient(stack.addresses.mongodb_uri)
        stack.kafka.stop()      # a fault: Kafka goes away ...
        stack.kafka.start()     # ... and comes back on the same address with the same data
    ```

    `data_dir` holds the servers' data and logs. When it is not given, a new folder under
    `.stack/run/` is used and removed again by a successful `stop()`; a given one is kept. Ports
    that are not given are picked free; a given port that is taken is an error.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        stack_dir: Path | None = None,
        mongo_port: int | None = None,
        kafka_port: int | None = None,
        zookeeper_port: int | None = None,
        qdrant_port: int | None = None,
        qdrant_grpc_port: int | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.installation = Installation.at(stack_dir)
        self._owns_data_dir = data_dir is None
        self.data_dir = (data_dir or self._new_run_dir()).resolve()
        self.start_timeout = start_timeout
        self._keep_data = False
        self.mongo = MongoServer(
            self.installation,
            self.data_dir / "mongo",
            _ports(mongo_port),
            start_timeout=start_timeout,
        )
        self.kafka = KafkaServer(
            self.installation,
            self.data_dir / "kafka",
            _ports(kafka_port, zookeeper_port),
            start_timeout=start_timeout,
        )
        self.qdrant = QdrantServer(
            self.installation,
            self.data_dir / "qdrant",
            _ports(qdrant_port, qdrant_grpc_port),
            start_timeout=start_timeout,
        )

    def __repr__(self) -> str:
        return f"<LocalStack {self.data_dir} {self.mongo!r} {self.kafka!r} {self.qdrant!r}>"

    def __enter__(self) -> LocalStack:
        self.install()
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def servers(self) -> tuple[Server, ...]:
        return (self.kafka, self.mongo, self.qdrant)

    @property
    def running(self) -> bool:
        return all(server.running for server in self.servers)

    @property
    def addresses(self) -> StackAddresses:
        """The servers' addresses (final once `start()` has returned)."""
        return StackAddresses(
            mongodb_uri=self.mongo.uri,
            kafka_addr=self.kafka.bootstrap,
            qdrant_addr=f"127.0.0.1:{self.qdrant.http_port}",
            qdrant_grpc_addr=f"127.0.0.1:{self.qdrant.grpc_port}",
        )

    @property
    def pids(self) -> list[int]:
        """The process ids of every running server process."""
        return [pid for server in self.servers for pid in server.pids]

    def install(self, *, log: Callable[[str], None] | None = None) -> None:
        """Install the servers' binaries under the stack folder; fast when they are there."""
        self.installation.install(log=log)

    def start(self) -> StackAddresses:
        """Start every server that is not running, all at once, and wait until all are healthy."""
        pending = [server for server in self.servers if not server.running]
        if not pending:
            return self.addresses
        self._keep_data = False
        self.installation.check()
        self._prune_stale_runs()
        ensure_free_disk(self.data_dir, _DISK_NEEDED, "Kafka and MongoDB")
        deadline = time.monotonic() + self.start_timeout
        try:
            for server in pending:
                server.launch()
            while pending:
                pending = [server for server in pending if not server.poll_ready()]
                for server in pending:
                    server.check_deadline(deadline)
                if pending:
                    time.sleep(_POLL_INTERVAL)
        except BaseException as exc:
            # Keep the logs the error message points at; an interrupt leaves nothing to read.
            self._keep_data = not isinstance(exc, KeyboardInterrupt)
            self.stop()
            raise
        return self.addresses

    def stop(self) -> None:
        """Stop every server cleanly (Kafka's controlled shutdown, then ZooKeeper), all at once.

        A second Ctrl-C while stopping kills what is left.
        """
        for server in self.servers:
            server.begin_stop()
        for server in self.servers:
            server.finish_stop()
        if self._owns_data_dir and not self._keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def check(self) -> None:
        """Raise `ServerExitedError` (with the tail of its log) when a server process has exited."""
        for server in self.servers:
            server.check()

    def kill(self) -> None:
        """SIGKILL every server process."""
        for server in self.servers:
            server.kill()

    def _new_run_dir(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return self.installation.run_dir / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"

    def _prune_stale_runs(self) -> None:
        """Remove data left in `.stack/run/` by stacks whose process has died."""
        if not self._owns_data_dir or not self.installation.run_dir.is_dir():
            return
        for run in self.installation.run_dir.iterdir():
            match = _RUN_NAME.match(run.name)
            if match and run != self.data_dir and not pid_alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    shutil.rmtree(run)


def _ports(*ports: int | None) -> list[int] | None:
    """Fill the ports not given with free ones; None (all picked, may be re-picked) if none is."""
    if all(port is None for port in ports):
        return None
    free = iter(pick_free_ports(len(ports)))
    return [port if port is not None else next(free) for port in ports]
