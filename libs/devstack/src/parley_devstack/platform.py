"""Runs Parley's four services as processes on top of a started local stack.

```python
with LocalStack() as stack:
    with Platform(stack.addresses, run_dir=Path(".run"), model_dir=build_tiny_model(...)) as p:
        httpx.get(p.gateway_url + "/healthz/ready")
```

Used by `make run` (through `parley_devstack.launcher`), the end-to-end tests and the
benchmarks: the same processes, the same environment variables as in a cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley_devstack._process import parent_death_signal
from parley_devstack.errors import StackError
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import StackAddresses

__all__ = ["Platform", "ServiceProcess"]


@dataclass
class ServiceProcess:
    """One service process; its output goes to `<run_dir>/<name>.log`."""

    name: str
    module: str
    env: dict[str, str]
    log_path: Path
    ready_url: str = ""
    grpc_addr: str = ""
    python: str = sys.executable
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # A parent-death signal too: a SIGKILLed `make run` or test runner leaves no service.
        self.proc = subprocess.Popen(
            [self.python, "-m", self.module],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def is_ready(self) -> bool:
        if not self.running:
            tail = self.log_tail()
            raise StackError(
                f"{self.name} exited during start-up; last lines of {self.log_path}:\n{tail}"
            )
        if self.ready_url:
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False
        if self.grpc_addr:
            with grpc.insecure_channel(self.grpc_addr) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1
                    )
                except grpc.RpcError:
                    return False
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Platform:
    """Session, cache, N workers and M gateways, wired to one stack."""

    def __init__(
        self,
        stack: StackAddresses,
        *,
        run_dir: Path,
        model_dir: Path | None,
        engine: str = "transformers",
        workers: int = 1,
        gateways: int = 1,
        admin_api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        service_env: Mapping[str, Mapping[str, str]] | None = None,
        gateway_port: int | None = None,
        model_id: str | None = None,
        worker_python: str | None = None,
        start_timeout: float = 180.0,
    ) -> None:
        self.stack = stack
        self.start_timeout = start_timeout
        self.admin_api_key = admin_api_key or "adm-" + secrets.token_urlsafe(24)
        session_port, cache_port, *rest = pick_free_ports(2 + 2 * gateways + workers + 2)
        gateway_ports = [gateway_port] if gateway_port and gateways == 1 else rest[:gateways]
        worker_ports = rest[gateways : gateways + workers]
        session_metrics, cache_metrics = rest[gateways + workers : gateways + workers + 2]
        model = str(model_dir) if model_dir else ""
        # Results consumers in groups of their own: platforms that share one stack (tests,
        # benchmarks) must not stall each other in rebalances, and applying a result twice is
        # harmless. Workers stay in one group: two groups would generate every request twice.
        self.group_suffix = secrets.token_hex(3)
        addresses = stack.as_env()
        kafka = {"KAFKA_ADDR": addresses["KAFKA_ADDR"]}
        common = {
            **kafka,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        extra = service_env or {}
        self.session_addr = f"127.0.0.1:{session_port}"
        self.cache_addr = f"127.0.0.1:{cache_port}"
        self.session = ServiceProcess(
            "session",
            "parley_session",
            {
                **common,
                "MONGODB_URI": addresses["MONGODB_URI"],
                "MODEL_NAME": model_id or ("parley-tiny" if engine != "fake" else "fake"),
                "GRPC_PORT": str(session_port),
                "METRICS_PORT": str(session_metrics),
                "TOKENIZER_PATH": model,
                "MONGODB_DATABASE": "parley",
                "RESULTS_GROUP": f"parley-session-{self.group_suffix}",
                **extra.get("session", {}),
            },
            run_dir / "session.log",
            grpc_addr=self.session_addr,
        )
        self.cache = ServiceProcess(
            "cache",
            "parley_cache",
            {
                **common,
                "QDRANT_ADDR": addresses["QDRANT_ADDR"],
                "QDRANT_GRPC_ADDR": addresses["QDRANT_GRPC_ADDR"],
                "GRPC_PORT": str(cache_port),
                "METRICS_PORT": str(cache_metrics),
                "RESULTS_GROUP": f"parley-cache-{self.group_suffix}",
                **extra.get("cache", {}),
            },
            run_dir / "cache.log",
            grpc_addr=self.cache_addr,
        )
        self.workers = [
            ServiceProcess(
                f"worker-{i}",
                "parley_worker",
                {
                    **common,
                    "ENGINE": engine,
                    "MODEL_NAME": model if engine != "fake" else "fake",
                    "METRICS_PORT": str(port),
                    "WORKER_ID": f"worker-{i}",
                    **extra.get("worker", {}),
                },
                run_dir / f"worker-{i}.log",
                ready_url=f"http://127.0.0.1:{port}/healthz/ready",
                python=worker_python or sys.executable,
            )
            for i, port in enumerate(worker_ports)
        ]
        self.gateways = [
            ServiceProcess(
                f"gateway-{i}",
                "parley_gateway",
                {
                    **common,
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "SESSION_ADDR": self.session_addr,
                    "CACHE_ADDR": self.cache_addr,
                    "ADMIN_API_KEY": self.admin_api_key,
                    "GATEWAY_INSTANCE_ID": f"gateway-{i}-{secrets.token_hex(4)}",
                    **extra.get("gateway", {}),
                },
                run_dir / f"gateway-{i}.log",
                ready_url=f"http://127.0.0.1:{port}/healthz/ready",
            )
            for i, port in enumerate(gateway_ports)
        ]

    @property
    def gateway_url(self) -> str:
        return self.gateway_urls[0]

    @property
    def gateway_urls(self) -> list[str]:
        return [g.ready_url.removesuffix("/healthz/ready") for g in self.gateways]

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.session, self.cache, *self.workers, *self.gateways]

    def start(self, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        # Session and cache first: gateways need them; workers load their model meanwhile.
        for proc in [self.session, self.cache, *self.workers]:
            proc.start()
        self.wait_ready([self.session, self.cache], timeout)
        for proc in self.gateways:
            proc.start()
        self.wait_ready(self.processes, timeout)

    def wait_ready(self, procs: list[ServiceProcess], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(procs)
        while waiting:
            waiting = [p for p in waiting if not p.is_ready()]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                tails = "\n".join(f"--- {p.name}:\n{p.log_tail(10)}" for p in waiting)
                raise StackError(f"not ready after {timeout:.0f} s: {names}\n{tails}")
            time.sleep(0.2)

    def stop(self) -> None:
        # Gateways first (no new work), then workers (finish in flight), then the rest.
        for group in (self.gateways, self.workers, [self.session, self.cache]):
            for proc in group:
                if proc.proc is not None and proc.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.proc.pid, signal.SIGTERM)
            for proc in group:
                proc.stop()

    def __enter__(self) -> Platform:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
