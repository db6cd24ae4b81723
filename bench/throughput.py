"""Throughput: completed chat turns per second through the whole path, until saturation.

A turn is complete when its answer is stored: every level's turns are looked up in MongoDB
afterwards. Each client sends JSON turns (`POST /chat`, a new question each time, a fake engine
answering at once) one after another; the number of clients grows until the turns per second
stop growing. Then, at the busiest level:

- CPU time per turn of every process (services, MongoDB, Kafka, ZooKeeper, Qdrant, this load
  generator), from /proc: what saturates first;
- py-spy profiles of the gateway, session, cache and worker, by layer (HTTP framework, gRPC,
  MongoDB driver, Kafka client, embedding model, event loop ...);
- per-stage latency, one request at a time: HTTP alone, auth + a read, the session's StartTurn,
  the cache's Lookup, Kafka → worker → reply topic, and the whole turn.

Run from the repository root: `python -m bench.throughput [--quick] [--levels 256,512,1000]` (with
`--levels`, every level given is run: an overload check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._harness import (
    Bench,
    CpuSampler,
    User,
    machine,
    machine_cpu,
    ms,
    pct,
    profile_layers,
    profile_top,
    progress,
    py_spy,
    table,
)
from bench._http import HttpError
from parley.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    envelopes_pb2,
    session_pb2,
    session_pb2_grpc,
    types_pb2,
)
from parley_common.kafka import SCHEMA_VERSION, Topics, ensure_topics, make_producer
from parley_common.timeutil import now_ms

__all__ = ["run"]

LEVELS = (4, 8, 16, 32, 64, 128, 256)
QUICK_LEVELS = (8, 32, 128)
MAX_TOKENS = 16
TARGET = 150.0  # stored turns/s on two cores (issue 18)


@dataclass
class Level:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    stored: int = 0
    stored_seconds: float = 0.0  # from the level's start to its last answer stored
    cpu: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    log_lines: dict[str, int] = field(default_factory=dict)  # written during the level
    mongo_commands: dict[str, float] = field(default_factory=dict)  # the session's, by command

    @property
    def answered_per_s(self) -> float:
        return len(self.request_ids) / self.seconds

    @property
    def stored_per_s(self) -> float:
        return self.stored / max(self.stored_seconds, self.seconds)


async def _load(bench: Bench, users: list[User], clients: int, seconds: float) -> Level:
    prefix = f"tp-{secrets.token_hex(3)}-{clients}"
    level = Level(clients, seconds)
    stop_at = time.monotonic() + seconds

    async def client(index: int) -> None:
        user = users[index]
        async with bench.connection(timeout=60) as conn:
            n = 0
            while time.monotonic() < stop_at:
                request_id = f"{prefix}-{index}-{n}"
                n += 1
                body = {
                    "message": f"Question {index}.{n} {secrets.token_hex(5)}: and then?",
                    "max_tokens": MAX_TOKENS,
                    "request_id": request_id,
                }
                started = time.perf_counter()
                try:
                    reply = await conn.request("POST", "/chat", body, user.key)
                except (HttpError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    level.errors[type(exc).__name__] += 1
                    await conn.close()
                    continue
                if reply.status == 200:
                    level.latencies.append(time.perf_counter() - started)
                    level.request_ids.append(request_id)
                else:
                    level.errors[f"HTTP {reply.status}"] += 1

    sampler = CpuSampler(bench.pids())
    logs = {p.name: p.log_path for p in bench.running.processes}
    lines0 = {name: _lines(path) for name, path in logs.items()}
    commands0 = _mongo_commands(bench)
    busy0, total0 = machine_cpu()
    sampler.start()
    window_start = time.time()
    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    level.seconds = time.perf_counter() - started
    level.cpu = sampler.stop()
    busy1, total1 = machine_cpu()
    level.machine_busy = (busy1 - busy0) / max(total1 - total0, 1e-6)
    level.log_lines = {name: _lines(path) - lines0[name] for name, path in logs.items()}
    level.mongo_commands = {
        name: count - commands0.get(name, 0.0) for name, count in _mongo_commands(bench).items()
    }
    stored = await asyncio.to_thread(bench.wait_stored, level.request_ids, 60.0)
    level.stored = len(stored)
    if stored:
        last = max(doc["created_at"].replace(tzinfo=UTC).timestamp() for doc in stored)
        level.stored_seconds = last - window_start
    return level


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as log:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
    except OSError:
        return 0


_MONGO_COMMANDS = re.compile(
    r'^parley_mongodb_command_duration_seconds_count\{command="(\w+)"\} (\S+)$'
)


def _mongo_commands(bench: Bench) -> dict[str, float]:
    """The session's MongoDB commands so far, by name, from its Prometheus metrics."""
    port = bench.running.session.env.get("METRICS_PORT", "")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except (OSError, ValueError):
        return {}
    found = {}
    for line in text.splitlines():
        match = _MONGO_COMMANDS.match(line)
        if match:
            found[match[1]] = float(match[2])
    return found


async def _timed(count: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    times = []
    for index in range(count):
        started = time.perf_counter()
        await call(index)
        times.append(time.perf_counter() - started)
    return times


async def stages(bench: Bench, user: User, count: int) -> list[list[str]]:
    """Latency of each stage of a turn, one request at a time (no queueing)."""
    platform = bench.running
    rows: list[list[str]] = []

    def row(name: str, what: str, times: list[float]) -> None:
        rows.append([name, what, ms(pct(times, 50)), ms(pct(times, 90)), ms(pct(times, 99))])

    async with bench.connection() as conn:
        row(
            "HTTP",
            "GET /healthz/live",
            await _timed(count, lambda i: conn.request("GET", "/healthz/live")),
        )
        row(
            "HTTP + auth + read",
            "GET /chats?limit=1 (key cached)",
            await _timed(count, lambda i: conn.request("GET", "/chats?limit=1", None, user.key)),
        )
        async with grpc.aio.insecure_channel(platform.session_addr) as channel:
            session = session_pb2_grpc.SessionServiceStub(channel)
            row(
                "session",
                "StartTurn over gRPC: a new chat, the question stored, the context built",
                await _timed(
                    count,
                    lambda i: session.StartTurn(
                        session_pb2.StartTurnRequest(
                            user_id=user.user_id,
                            request_id=secrets.token_hex(8),
                            content=f"Stage question {i} {secrets.token_hex(4)}?",
                        )
                    ),
                ),
            )
        async with grpc.aio.insecure_channel(platform.cache_addr) as channel:
            cache = cache_pb2_grpc.CacheServiceStub(channel)

            def lookup(index: int) -> Awaitable[object]:
                return cache.Lookup(
                    cache_pb2.LookupRequest(
                        user_id=user.user_id,
                        model="fake",
                        scope=types_pb2.CACHE_SCOPE_USER,
                        max_tokens=MAX_TOKENS,
                        messages=[
                            types_pb2.ChatMessage(role=types_pb2.ROLE_SYSTEM, content="Be brief."),
                            types_pb2.ChatMessage(
                                role=types_pb2.ROLE_USER,
                                content=f"What does {secrets.token_hex(4)} mean, case {index}?",
                            ),
                        ],
                    )
                )

            row(
                "cache",
                "Lookup over gRPC: embed, vector search, a miss",
                await _timed(count, lookup),
            )
        row(
            "Kafka + worker",
            "request produced (acks=all) → worker → final chunk read from a reply topic",
            await _kafka_round_trips(bench, count),
        )
        row(
            "whole turn",
            "POST /chat, JSON answer",
            await _timed(
                count,
                lambda i: conn.request(
                    "POST",
                    "/chat",
                    {
                        "message": f"Whole turn {i} {secrets.token_hex(4)}?",
                        "max_tokens": MAX_TOKENS,
                    },
                    user.key,
                ),
            ),
        )
    return rows


async def _kafka_round_trips(bench: Bench, count: int) -> list[float]:
    bootstrap = bench.stack.addresses.kafka_addr
    topics = Topics()
    topic = topics.reply("bench-" + secrets.token_hex(4))
    await ensure_topics(bootstrap, [topic], partitions=1)
    producer = make_producer(bootstrap, client_id="parley-bench")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await producer.start()
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        await consumer.position(partition)
        times = []
        for _ in range(count):
            request = envelopes_pb2.CompletionRequest(
                schema_version=SCHEMA_VERSION,
                request_id=secrets.token_hex(16),
                chat_id=secrets.token_hex(16),
                user_id="bench",
                model="fake",
                kind=envelopes_pb2.COMPLETION_KIND_CHAT,
                messages=[types_pb2.ChatMessage(role=types_pb2.ROLE_USER, content="hello")],
                sampling=types_pb2.SamplingParams(max_tokens=MAX_TOKENS),
                deadline_unix_ms=now_ms() + 60_000,
                enqueued_unix_ms=now_ms(),
                reply_topic=topic,
            )
            started = time.perf_counter()
            await producer.send_and_wait(
                topics.requests, request.SerializeToString(), key=request.chat_id.encode()
            )
            while True:
                record = await consumer.getone()
                chunk = envelopes_pb2.CompletionChunk()
                chunk.ParseFromString(record.value or b"")
                if chunk.request_id == request.request_id and chunk.done:
                    break
            times.append(time.perf_counter() - started)
        return times
    finally:
        await consumer.stop()
        await producer.stop()


PROFILED = ("gateway-0", "session", "cache", "worker-0")


async def profile(bench: Bench, users: list[User], clients: int, seconds: float) -> str:
    pids = bench.pids()
    with tempfile.TemporaryDirectory(prefix="parley-pyspy-") as folder:
        outputs = {name: Path(folder) / f"{name}.txt" for name in PROFILED}
        with contextlib.ExitStack() as spies:
            procs = [spies.enter_context(py_spy(pids[n], seconds, outputs[n])) for n in PROFILED]
            if not any(procs):
                return "_py-spy is not installed (`pip install py-spy`): no profiles._\n"
            await _load(bench, users, clients, seconds + 1)
        parts = []
        for name in PROFILED:
            if not outputs[name].exists() or not outputs[name].stat().st_size:
                parts.append(f"- {name}: no samples (py-spy needs ptrace permission)")
                continue
            samples, layers = profile_layers(outputs[name])
            top = profile_top(outputs[name])
            parts.append(
                f"- **{name}** ({samples} samples): "
                + ", ".join(f"{layer} {share:.0%}" for layer, share in layers[:7])
                + "; hottest functions (self): "
                + ", ".join(f"`{fn}` {share:.0%}" for fn, share in top[:4])
            )
    return "\n".join(parts) + "\n"


def _cpu_table(level: Level) -> str:
    turns = max(len(level.request_ids), 1)
    rows = [
        [
            name,
            f"{share * 100:.0f}%",
            f"{share * level.seconds / turns * 1000:.2f}",
            f"{level.log_lines[name] / turns:.1f}" if name in level.log_lines else "",
        ]
        for name, share in sorted(level.cpu.items(), key=lambda kv: -kv[1])
        if share > 0.001
    ]
    total = sum(level.cpu.values())
    rows.append(
        [
            "**all of the above**",
            f"{total * 100:.0f}%",
            f"**{total * level.seconds / turns * 1000:.1f}**",
            f"{sum(level.log_lines.values()) / turns:.1f}",
        ]
    )
    text = table(["process", "CPU (% of one core)", "CPU ms per turn", "log lines per turn"], rows)
    commands = {k: v / turns for k, v in level.mongo_commands.items() if v / turns >= 0.05}
    if commands:
        text += (
            f"\n\nMongoDB commands per turn, from the session's metrics: **{sum(commands.values()):.1f}**"
            " ("
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(commands.items(), key=lambda kv: -kv[1]))
            + ")."
        )
    return text


async def run(bench: Bench, *, quick: bool = False, levels: Sequence[int] = ()) -> str:
    """`levels`: these client counts, every one of them (an overload check), instead of growing
    until saturation."""
    bench.restart_workers({"FAKE_TTFT_S": "0", "MAX_CONCURRENCY": "512"})
    every_level = bool(levels)
    levels = levels or (QUICK_LEVELS if quick else LEVELS)
    seconds = 6.0 if quick else 15.0
    users = await bench.create_user_ids(max(levels))
    progress("throughput: per-stage latency")
    stage_rows = await stages(bench, users[0], 20 if quick else 60)
    results: list[Level] = []
    for clients in levels:
        progress(f"throughput: {clients} clients")
        level = await _load(bench, users, clients, seconds)
        results.append(level)
        best = max(results, key=lambda lv: lv.answered_per_s)
        if (
            not every_level
            and level is not best
            and level.answered_per_s < 0.9 * best.answered_per_s
        ):
            break  # past saturation: more clients only queue
    best = max(results, key=lambda lv: lv.answered_per_s)
    rows = [
        [
            str(lv.clients),
            f"{lv.answered_per_s:.1f}",
            f"{lv.stored_per_s:.1f}",
            f"{lv.stored}/{len(lv.request_ids)}",
            ms(pct(lv.latencies, 50)),
            ms(pct(lv.latencies, 99)),
            ", ".join(f"{k}: {v}" for k, v in lv.errors.items()) or "0",
            f"{lv.machine_busy:.0%}",
        ]
        for lv in results
    ]
    progress(f"throughput: profiling at {best.clients} clients")
    profiled = await profile(bench, users, best.clients, 5.0 if quick else 10.0)
    own = sum(best.cpu.values()) / 2  # the platform's share of this 2-core machine's time
    first = max(best.cpu.items(), key=lambda kv: kv[1] if kv[0] != "bench" else 0)
    turns = max(len(best.request_ids), 1)
    cpu_per_turn = sum(v for k, v in best.cpu.items() if k != "bench") * best.seconds / turns
    ceiling = (machine_cores() / cpu_per_turn) if cpu_per_turn else 0.0
    met = best.stored_per_s >= TARGET
    return (
        "## Throughput\n\n"
        f"JSON turns (`POST /chat`, new question, {MAX_TOKENS} tokens from a fake engine with no "
        f"delay), closed loop, {seconds:.0f} s a level. A turn is complete once MongoDB holds "
        "its answer: *stored/s* is the level's stored answers over the time from its start to "
        "the last one stored; *stored* is checked after the level.\n\n"
        + table(
            [
                "clients",
                "answered/s",
                "stored/s",
                "stored",
                "p50 ms",
                "p99 ms",
                "errors",
                "machine CPU busy",
            ],
            rows,
        )
        + f"\n\nBest: **{best.stored_per_s:.0f} stored turns/s** at {best.clients} clients "
        f"(target ≥ {TARGET:.0f}: **{'met' if met else 'missed'}**). The platform used "
        f"{own:.0%} of the machine's CPU time at that level (the rest: the load generator and "
        f"anything else running); {cpu_per_turn * 1000:.1f} ms of CPU per turn across all "
        f"processes, a ceiling of about **{ceiling:.0f} turns/s** if the platform had all "
        f"{machine_cores()} cores to itself. The busiest process: **{first[0]}** "
        f"({first[1]:.0%} of a core).\n\n"
        f"### CPU per turn at {best.clients} clients\n\n"
        + _cpu_table(best)
        + f"\n\n### Where the time goes (py-spy, {best.clients} clients)\n\n"
        + profiled
        + "\n### Per-stage latency, one request at a time\n\n"
        + table(["stage", "what", "p50 ms", "p90 ms", "p99 ms"], stage_rows)
        + "\n"
    )


def machine_cores() -> int:
    return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter levels")
    parser.add_argument(
        "--levels", default="", help="client counts to run, all of them (e.g. 256,512,1000)"
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    print("\n".join(f"- {k}: {v}" for k, v in machine().items()), flush=True)
    with Bench() as bench:
        print(asyncio.run(run(bench, quick=args.quick, levels=levels)))


if __name__ == "__main__":
    main()
