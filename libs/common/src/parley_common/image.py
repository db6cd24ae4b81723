"""What the one Parley image runs, for the service it was built for (`PARLEY_SERVICE`):

    python -m parley_common.image run           # python -m parley_<service>
    python -m parley_common.image healthcheck   # the probe `PARLEY_HEALTHCHECK` names

`PARLEY_HEALTHCHECK` is `grpc:<VAR>` (grpc.health.v1 on the port in the environment variable
<VAR>) or `http:<VAR>` (GET /healthz/live on that port); the variable's default is the port the
image was built with.
"""

from __future__ import annotations

import os
import runpy
import sys
import urllib.request
from dataclasses import dataclass

__all__ = ["Probe", "main", "service_module"]

_SERVICES = frozenset({"gateway", "session", "cache", "worker"})


def service_module(service: str) -> str:
    if service not in _SERVICES:
        raise SystemExit(f"PARLEY_SERVICE={service!r}: expected one of {sorted(_SERVICES)}")
    return f"parley_{service}"


@dataclass(frozen=True, slots=True)
class Probe:
    kind: str  # "grpc" | "http"
    port: str

    @classmethod
    def parse(cls, spec: str, environ: dict[str, str]) -> Probe:
        kind, _, variable = spec.partition(":")
        if kind not in ("grpc", "http") or not variable:
            raise SystemExit(f"PARLEY_HEALTHCHECK={spec!r}: expected grpc:<VAR> or http:<VAR>")
        port = environ.get(variable, "")
        if not port:
            raise SystemExit(f"PARLEY_HEALTHCHECK={spec!r}: {variable} is not set")
        return cls(kind, port)

    def healthy(self) -> bool:
        if self.kind == "http":
            url = f"http://127.0.0.1:{self.port}/healthz/live"
            with urllib.request.urlopen(url, timeout=3) as response:
                return int(response.status) == 200
        # Imported here: the HTTP-only services need not load gRPC to answer their probe.
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        return bool(check.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    environ = dict(os.environ)
    if argv[:1] == ["run"]:
        module = service_module(environ.get("PARLEY_SERVICE", ""))
        sys.argv = [module, *argv[1:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    if argv == ["healthcheck"]:
        return 0 if Probe.parse(environ.get("PARLEY_HEALTHCHECK", ""), environ).healthy() else 1
    print("usage: python -m parley_common.image run|healthcheck", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
