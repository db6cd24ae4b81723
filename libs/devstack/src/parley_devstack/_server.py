"""What the three servers have in common: ports, start with health polling, stop, kill."""

from __future__ import annotations

import abc
import atexit
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from parley_devstack._process import ManagedProcess
from parley_devstack.errors import PortInUseError, ServerExitedError, StartTimeoutError
from parley_devstack.install import Installation, ensure_free_disk
from parley_devstack.ports import HOST, check_port_free, pick_free_ports, port_is_free

__all__ = ["Server"]

_POLL_INTERVAL = 0.1
_PORT_RACE_RETRIES = 3


class Server(abc.ABC):
    """A server the stack runs as local processes.

    Its ports and data are kept across `stop()` / `start()`, so that a test can take it away for a
    while and bring it back on the same address with the same data.
    """

    name: ClassVar[str]
    port_guess: ClassVar[str]
    port_count: ClassVar[int] = 1
    disk_needed: ClassVar[int] = 256 * 2**20
    stop_timeout: ClassVar[float] = 30.0

    def __init__(
        self,
        installation: Installation,
        data_dir: Path,
        ports: Sequence[int] | None = None,
        *,
        start_timeout: float = 120.0,
    ) -> None:
        if ports is not None and len(ports) != self.port_count:
            raise ValueError(f"{self.name} needs {self.port_count} ports, got {list(ports)}")
        self.installation = installation
        self.data_dir = data_dir
        self.start_timeout = start_timeout
        # Ports given by the caller, or already served once, never change: a clash is an error.
        self._ports_pinned = ports is not None
        self._ports = list(ports) if ports is not None else pick_free_ports(self.port_count)
        self._started = False
        self._launching = False
        self._port_races = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        ports = ", ".join(str(port) for port in self._ports)
        return f"<{type(self).__name__} {HOST}:{ports} {state}>"

    @property
    def running(self) -> bool:
        """Started, healthy when last checked, and none of its processes has exited since."""
        return self._started and all(process.alive for process in self._processes())

    @property
    def pids(self) -> list[int]:
        """The process ids of its running processes."""
        return [
            process.pid
            for process in self._processes()
            if process.alive and process.pid is not None
        ]

    def start(self) -> None:
        """Start the server and wait until it is healthy; a no-op when it is running."""
        if self.running:
            return
        self.launch()
        deadline = time.monotonic() + self.start_timeout
        try:
            while not self.poll_ready():
                self.check_deadline(deadline)
                time.sleep(_POLL_INTERVAL)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM; SIGKILL after `stop_timeout` seconds)."""
        self.begin_stop()
        self.finish_stop()

    def kill(self) -> None:
        """SIGKILL every process of the server, as a crash would."""
        for process in self._processes():
            process.kill()
        self._stopped()

    def restart(self) -> None:
        self.stop()
        self.start()

    def check(self) -> None:
        """Raise `ServerExitedError` (with the tail of its log) when a process has exited."""
        for process in self._processes():
            self._check_alive(process)

    # The stack drives several servers at once through the steps below.

    def launch(self) -> None:
        """Check the disk and ports, then spawn the server's (first) process."""
        # What is left of a server that lost one of its processes (Kafka without its broker).
        for process in self._processes():
            if process.alive:
                process.stop(self.stop_timeout)
        ensure_free_disk(self.data_dir, self.disk_needed, self.name)
        for port in self._ports:
            if not port_is_free(port) and not self._ports_pinned:
                self._ports = pick_free_ports(self.port_count)
                break
        for port in self._ports:
            check_port_free(self.name, port, guess=self.port_guess)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _running.register(self)
        self._launching = True
        self._spawn()

    def poll_ready(self) -> bool:
        """One health check; raises `StackError` (after cleaning up) when starting has failed."""
        try:
            ready = self._advance()
        except PortInUseError:
            self.kill()
            if self._ports_pinned or self._port_races >= _PORT_RACE_RETRIES:
                raise
            # Another process took a port between picking and binding it: pick again.
            self._port_races += 1
            self._ports = pick_free_ports(self.port_count)
            self.launch()
            return False
        except BaseException:
            self.kill()
            raise
        if ready:
            self._started = True
            self._launching = False
            self._ports_pinned = True
        return ready

    def check_deadline(self, deadline: float) -> None:
        if time.monotonic() < deadline:
            return
        tails = self._describe_logs()
        self.kill()
        raise StartTimeoutError(
            f"{self.name} did not become ready within {self.start_timeout:.0f} s "
            f"(is the machine overloaded?). {tails}"
        )

    def begin_stop(self) -> None:
        processes = self._processes()
        if processes:
            processes[0].terminate()

    def finish_stop(self) -> None:
        try:
            for process in self._processes():
                process.stop(self.stop_timeout)
        except KeyboardInterrupt:
            self.kill()
            raise
        self._stopped()

    # What each server defines.

    @abc.abstractmethod
    def _spawn(self) -> None:
        """Start the first process."""

    @abc.abstractmethod
    def _advance(self) -> bool:
        """Check health (and start later processes); True once the server is ready."""

    @abc.abstractmethod
    def _processes(self) -> list[ManagedProcess]:
        """The processes spawned so far, in the order they must be stopped."""

    # Helpers for the servers.

    def _check_alive(self, process: ManagedProcess, what: str | None = None) -> None:
        """Raise a clear error when `process` has exited."""
        code = process.returncode
        if code is None:
            return
        what = what or self.name
        tail = process.log_tail()
        if "Address already in use" in tail:
            taken = next((port for port in self._ports if not port_is_free(port)), self._ports[0])
            raise PortInUseError(
                f"{what} could not start: port {HOST}:{taken} is already in use "
                f"({self.port_guess}). Last lines of {process.log_path}:\n{tail}",
                port=taken,
            )
        raise ServerExitedError(
            f"{what} exited while {'starting' if self._launching else 'running'} "
            f"(exit status {code}). Last lines of {process.log_path}:\n{tail}"
        )

    def _describe_logs(self) -> str:
        return " ".join(
            f"Last lines of {process.log_path}:\n{process.log_tail()}\n"
            for process in self._processes()
        )

    def _stopped(self) -> None:
        self._started = False
        self._launching = False
        _running.unregister(self)


class _RunningServers:
    """Servers with live processes, stopped at interpreter exit (after an error or Ctrl-C)."""

    def __init__(self) -> None:
        self._servers: dict[int, Server] = {}
        atexit.register(self.stop_all)

    def register(self, server: Server) -> None:
        self._servers[id(server)] = server

    def unregister(self, server: Server) -> None:
        self._servers.pop(id(server), None)

    def stop_all(self) -> None:
        servers = list(self._servers.values())
        for server in servers:
            with contextlib.suppress(Exception):
                server.begin_stop()
        for server in reversed(servers):
            try:
                server.finish_stop()
            except BaseException:
                server.kill()


_running = _RunningServers()
