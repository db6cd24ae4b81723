"""What the benchmarks share: the platform under test, load clients, statistics, tables.

Each benchmark module has ``async def run(bench: Bench, *, quick: bool) -> str`` that returns a
Markdown section, and a ``main()`` that starts its own ``Bench`` (``python -m bench.overhead``).
``python -m bench`` starts one ``Bench`` and runs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform as pyplatform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pymongo import MongoClient

from bench._http import Connection, HttpError
from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack

__all__ = [
    "RESULTS",
    "Bench",
    "CpuSampler",
    "Sample",
    "User",
    "machine",
    "machine_cpu",
    "ms",
    "pct",
    "profile_layers",
    "profile_top",
    "progress",
    "py_spy",
    "rss_kib",
    "stream_turn",
    "table",
]

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# The fake worker used unless a benchmark asks for other settings: many slots, so that a
# benchmark measures the platform and not a small engine's queue.
FAKE_WORKER = {"MAX_CONCURRENCY": "512", "FAKE_TTFT_S": "0", "FAKE_TOKENS_PER_S": "0"}


def machine() -> dict[str, str]:
    """Where the figures come from."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "RAM": f"{mem_kib / 2**20:.1f} GiB",
        "OS": f"{pyplatform.system()} {pyplatform.release()}",
        "Python": pyplatform.python_version(),
        "load average at start": load,
    }


def progress(message: str) -> None:
    """A line on stderr while a benchmark runs (the report goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    """Milliseconds with three significant digits or so; a dash for no value."""
    if math.isnan(seconds):
        return "–"
    value = seconds * 1000
    if abs(value) < 10:
        return f"{value:.2f}"
    if abs(value) < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Sample:
    """One request as a client saw it (perf_counter seconds from sending)."""

    ttft: float = math.nan
    total: float = math.nan
    tokens: int = 0
    cached: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    key: str


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # utime and stime are fields 14 and 15 of /proc/pid/stat; fields[0] is field 3.
    return int(fields[11]) + int(fields[12])


@dataclass
class CpuSampler:
    """CPU time of named processes between `start()` and `stop()`, as a share of one core."""

    pids: Mapping[str, int]
    _start: dict[str, int] = field(default_factory=dict)
    _wall: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._start = {name: _cpu_ticks(pid) for name, pid in self.pids.items()}
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._wall, 1e-6)
        self.usage = {
            name: (_cpu_ticks(pid) - self._start.get(name, 0)) / _CLK_TCK / elapsed
            for name, pid in self.pids.items()
        }
        return self.usage


def _java_name(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "java"
    return "zookeeper" if b"QuorumPeerMain" in cmdline else "kafka"


class Bench:
    """A local stack and the platform with the fake engine, as separate processes; this process
    is the load generator.

    ```python
    with Bench() as bench:
        bench.restart_workers({"FAKE_TTFT_S": "0.05"})
        keys = asyncio.run(bench.create_users(10))
    ```
    """

    def __init__(
        self, *, log_dir: Path | None = None, gateway_env: Mapping[str, str] | None = None
    ) -> None:
        _raise_open_files_limit()
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="parley-bench-"))
        self._owns_log_dir = log_dir is None
        self._gateway_env = dict(gateway_env or {})
        self.stack = LocalStack()
        self.platform: Platform | None = None
        self.worker_env: dict[str, str] = dict(FAKE_WORKER)
        self._mongo: MongoClient[dict[str, Any]] | None = None

    def __enter__(self) -> Bench:
        self.stack.install()
        self.stack.start()
        try:
            self.platform = Platform(
                self.stack.addresses,
                run_dir=self.log_dir,
                model_dir=None,
                engine="fake",
                service_env={"worker": self.worker_env, "gateway": self._gateway_env},
            )
            self.platform.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._mongo is not None:
            self._mongo.close()
        if self.platform is not None:
            self.platform.stop()
        self.stack.stop()
        if self._owns_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    @property
    def running(self) -> Platform:
        assert self.platform is not None, "use Bench as a context manager"
        return self.platform

    @property
    def gateway(self) -> tuple[str, int]:
        host, port = self.running.gateway_url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    @property
    def reply_topic(self) -> str:
        return "parley.replies." + self.running.gateways[0].env["GATEWAY_INSTANCE_ID"]

    def connection(self, timeout: float = 180.0) -> Connection:
        host, port = self.gateway
        return Connection(host, port, timeout=timeout)

    def restart_workers(self, env: Mapping[str, str]) -> None:
        """Run the workers again with `env` over the fake defaults (each benchmark its own)."""
        self.worker_env = {**FAKE_WORKER, **env}
        for worker in self.running.workers:
            worker.stop()
            worker.env.update(self.worker_env)
            worker.start()
        self.running.wait_ready(self.running.workers, 120)

    def pids(self) -> dict[str, int]:
        """Every process of the platform and the stack, by role; `bench` is this process."""
        found = {p.name: p.proc.pid for p in self.running.processes if p.proc is not None}
        found["bench"] = os.getpid()
        found["mongod"] = self.stack.mongo.pids[0]
        found["qdrant"] = self.stack.qdrant.pids[0]
        for pid in self.stack.kafka.pids:
            found[_java_name(pid)] = pid
        return found

    def mongo(self) -> MongoClient[dict[str, Any]]:
        if self._mongo is None:
            self._mongo = MongoClient(self.stack.addresses.mongodb_uri)
        return self._mongo

    async def create_users(self, count: int) -> list[str]:
        """New users, one API key each; the keys."""
        return [user.key for user in await self.create_user_ids(count)]

    async def create_user_ids(self, count: int) -> list[User]:
        """New users, one API key each."""
        admin = self.running.admin_api_key
        users: list[User] = []
        async with self.connection() as conn:
            for index in range(count):
                user = await conn.request("POST", "/admin/users", {"name": f"bench-{index}"}, admin)
                assert user.status == 201, user.body
                key = await conn.request(
                    "POST", f"/admin/users/{user.json()['user_id']}/keys", {"name": "bench"}, admin
                )
                assert key.status == 201, key.body
                users.append(User(user.json()["user_id"], key.json()["api_key"]))
        return users

    def stored_answers(self, request_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The assistant messages MongoDB holds for these requests."""
        messages = self.mongo()["parley"]["messages"]
        found: list[dict[str, Any]] = []
        for start in range(0, len(request_ids), 5000):
            found += messages.find(
                {
                    "role": "assistant",
                    "request_id": {"$in": list(request_ids[start : start + 5000])},
                },
                {"request_id": 1, "created_at": 1},
            )
        return found

    def wait_stored(
        self, request_ids: Sequence[str], timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.stored_answers(request_ids)
            if len(found) >= len(request_ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.5)


@contextlib.contextmanager
def py_spy(pid: int, seconds: float, out: Path) -> Iterator[subprocess.Popen[bytes] | None]:
    """Sample `pid` with py-spy (raw, collapsed stacks) while the block runs; None without py-spy."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        yield None
        return
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        try:
            proc.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _raise_open_files_limit() -> None:
    """A thousand streams are two thousand sockets on this machine; the services inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def stream_turn(
    conn: Connection, key: str, body: Mapping[str, Any], path: str = "/chat"
) -> Sample:
    """One streamed turn; times the first `chunk` event and the `done` event."""
    sample = Sample()
    started = time.perf_counter()
    try:
        async for event, data, at in conn.events("POST", path, {**body, "stream": True}, key):
            if event == "chunk" and math.isnan(sample.ttft):
                sample.ttft = at - started
            elif event == "done":
                sample.total = at - started
                sample.cached = bool(data["cached"])
                sample.tokens = int(data["usage"]["completion_tokens"])
            elif event == "error":
                sample.error = str(data.get("type", "error"))
    except HttpError as exc:
        sample.error = f"HTTP {exc.status}"
        await conn.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        sample.error = type(exc).__name__
        await conn.close()
    if not sample.error and math.isnan(sample.total):
        sample.error = "no done event"
    return sample


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every process counted."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / _CLK_TCK, sum(fields) / _CLK_TCK


# Where a sampled stack spends its time, by the deepest frame that names a known layer.
_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "embedding model (torch)",
        ("torch/", "transformers/", "sentence_transformers/", "tokenizers"),
    ),
    ("MongoDB driver", ("pymongo/", "bson/")),
    ("Kafka client", ("aiokafka/", "kafka/")),
    ("Qdrant client (httpx)", ("qdrant_client/", "httpx/", "httpcore/")),
    ("gRPC", ("grpc/", "grpc_health/", "google/protobuf/")),
    ("HTTP framework", ("fastapi/", "starlette/", "uvicorn/", "pydantic", "anyio/", "h11/")),
    ("logging", ("logging/", "parley_common/logs")),
    ("Parley code", ("parley_",)),
    ("event loop, sockets", ("asyncio/", "selectors.py", "uvloop/", "socket.py", "ssl.py")),
)


def profile_layers(path: Path) -> tuple[int, list[tuple[str, float]]]:
    """Samples in a py-spy raw profile, and the share of each layer (deepest frame wins)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frames = stack.split(";")
        total += int(number)
        layer = "other"
        for frame in reversed(frames):
            found = next((name for name, marks in _LAYERS if any(m in frame for m in marks)), None)
            if found is not None:
                layer = found
                break
        else:
            if frames[-1].startswith("Thread.run"):
                layer = "native threads (gRPC poller, thread pools)"
        counts[layer] = counts.get(layer, 0) + int(number)
    shares = sorted(((k, v / max(total, 1)) for k, v in counts.items()), key=lambda kv: -kv[1])
    return total, shares


def profile_top(path: Path, limit: int = 6) -> list[tuple[str, float]]:
    """The functions with the most samples at the top of the stack (self time)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaf = leaf.split(" (", 1)[0] + " (" + leaf.split(" (", 1)[-1].split("site-packages/")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(number)
        total += int(number)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [(k, v / max(total, 1)) for k, v in ranked]
