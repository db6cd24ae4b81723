"""CPU per Lookup and per stored entry of the cache service, run as its own process against the
real Qdrant and Kafka of a local stack.

    python -m bench.cache_cpu                     # this checkout's cache service
    python -m bench.cache_cpu --baseline HEAD     # and the cache service of a git revision
    python -m bench.cache_cpu --env EMBEDDING_PRECISION=bfloat16   # and this one with settings
    python -m bench.cache_cpu --quick

The load generator (this process) calls `CacheService/Lookup` over gRPC the way the gateway does,
one caller at a time and 16 at once, and publishes completion results on the results topic the
way a worker does. The cache process's CPU time (every thread, from /proc) over each phase, less
what it spends idle, divided by the calls or stored entries, is the figure. Questions come from
the cache's labelled pairs (`bench/cache_eval/pairs.jsonl`), each round on a new process:

- *new question*: a question no one asked before (embed, vector search, a miss);
- *reworded question*: the same question in other words, once the first one's answer is stored
  (embed, search, the guard; a hit unless the guard refuses it);
- *same question again*: the first wording again (a hit; the service may remember its vector);
- *store first turn*, *store follow-up*: one result each, applied until Qdrant holds it (a
  follow-up's entry also gets its prior turns embedded, for the semantic context mode).

The yardstick measured in the same run: the embedding model alone in this process (one torch
thread, float32, `SentenceTransformer.encode`), for one question and for 16 at once. With
`--baseline REV`, the cache package of that revision (`git archive`, run with `PYTHONPATH`) is
measured too, the variants' order rotating round after round, and the report gives ratios to it.
`python -m bench --only cache_cpu` runs it (this checkout only) against the benchmark's stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import tarfile
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiokafka import AIOKafkaProducer

from bench._harness import REPO, Bench, machine, ms, pct, progress, table
from parley.v1 import cache_pb2, cache_pb2_grpc, envelopes_pb2, types_pb2
from parley_common.kafka import SCHEMA_VERSION
from parley_devstack.platform import ServiceProcess
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import LocalStack, StackAddresses

PAIRS = REPO / "bench" / "cache_eval" / "pairs.jsonl"
COLLECTION = "parley_cache_all_minilm_l6_v2"
SYSTEM_PROMPT = "You are a helpful assistant."
ANSWER = (
    "Here is what I would do. First, check the settings that apply to your case; then try the "
    "simplest change and see whether it helps. If it does not, look at the logs for the first "
    "error and search for that message: it usually names the cause."
)
CONCURRENCY = (1, 16)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ROLES = {"user": types_pb2.ROLE_USER, "assistant": types_pb2.ROLE_ASSISTANT}


def _cpu_s(pid: int) -> float:
    """utime + stime of every thread of `pid`, finished ones included, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


Turns = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Conversations:
    """From the cache's labelled pairs: questions `asked` and the same questions `reworded`
    (pairs labelled the same), every last message distinct, so that no text of a phase was
    embedded before it; `others` (questions of no such pair) for warming up and follow-ups."""

    asked: list[Turns]
    reworded: list[Turns]
    others: list[str]

    @classmethod
    def load(cls) -> Conversations:
        asked: list[Turns] = []
        reworded: list[Turns] = []
        seen: set[str] = set()
        rest: list[str] = []
        for line in PAIRS.read_text().splitlines():
            pair = json.loads(line)
            a, b = (tuple((t["role"], t["content"]) for t in pair[s]["turns"]) for s in "ab")
            if pair["same"] and len({a[-1][1], b[-1][1]} - seen) == 2:
                seen.update((a[-1][1], b[-1][1]))
                asked.append(a)
                reworded.append(b)
            else:
                rest += [a[-1][1], b[-1][1]]
        others = [text for text in dict.fromkeys(rest) if text not in seen]
        return cls(asked, reworded, others)

    def follow_ups(self, start: int, count: int) -> list[Turns]:
        """Third turns after an exchange: a question, an answer, another question."""
        questions = self.others[start : start + 2 * count]
        return [
            (("user", first), ("assistant", ANSWER), ("user", second))
            for first, second in zip(questions[::2], questions[1::2], strict=False)
        ]


def lookups_of(tag: str, conversations: Sequence[Turns]) -> list[cache_pb2.LookupRequest]:
    """Lookups as the gateway makes them; the same conversation index, the same user."""
    requests = []
    for index, turns in enumerate(conversations):
        messages = [types_pb2.ChatMessage(role=types_pb2.ROLE_SYSTEM, content=SYSTEM_PROMPT)]
        messages += [types_pb2.ChatMessage(role=_ROLES[r], content=c) for r, c in turns]
        requests.append(
            cache_pb2.LookupRequest(
                user_id=f"{tag}-u{index % 16}",
                bot_id="default",
                model="parley-tiny",
                scope=types_pb2.CACHE_SCOPE_USER,
                messages=messages,
                max_tokens=256,
            )
        )
    return requests


@dataclass
class Phase:
    """One measured phase: CPU ms per operation (idle time taken out) and client latencies."""

    cpu_ms: float
    latencies: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)


class CacheUnderTest:
    """A cache service process on the stack; `pythonpath` runs another copy of its package."""

    def __init__(
        self,
        name: str,
        addresses: StackAddresses,
        run_dir: Path,
        *,
        topic_prefix: str,
        results_group: str,
        pythonpath: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        grpc_port, metrics_port = pick_free_ports(2)
        settings = {
            **addresses.as_env(),
            "QDRANT_GRPC_ADDR": addresses.qdrant_grpc_addr,
            "GRPC_PORT": str(grpc_port),
            "METRICS_PORT": str(metrics_port),
            "RESULTS_GROUP": results_group,
            "TOPIC_PREFIX": topic_prefix,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if pythonpath is not None:
            settings["PYTHONPATH"] = os.pathsep.join(
                [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        self.name = name
        self.addr = f"127.0.0.1:{grpc_port}"
        self.process = ServiceProcess(
            f"cache-{name}",
            "parley_cache",
            settings,
            run_dir / f"cache-{name}.log",
            grpc_addr=self.addr,
        )

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def start(self, timeout: float = 180.0) -> None:
        self.process.start()
        deadline = time.monotonic() + timeout
        while not self.process.is_ready():
            if time.monotonic() > deadline:
                self.process.stop()
                raise TimeoutError(f"{self.process.name} not ready; {self.process.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.stop()


async def _lookups(
    stub: cache_pb2_grpc.CacheServiceAsyncStub,
    requests: Sequence[cache_pb2.LookupRequest],
    concurrency: int,
) -> tuple[list[float], list[cache_pb2.LookupResponse]]:
    latencies = [0.0] * len(requests)
    responses: list[cache_pb2.LookupResponse] = [cache_pb2.LookupResponse()] * len(requests)
    pending = iter(range(len(requests)))

    async def caller() -> None:
        for index in pending:
            started = time.perf_counter()
            responses[index] = await stub.Lookup(requests[index], timeout=60)
            latencies[index] = time.perf_counter() - started

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, responses


class Runner:
    """Drives one cache process; `idle_cpu_s` is its CPU seconds per second when idle."""

    def __init__(
        self, cache: CacheUnderTest, addresses: StackAddresses, results_topic: str
    ) -> None:
        self.cache = cache
        self.qdrant = f"http://{addresses.qdrant_addr}"
        self.kafka = addresses.kafka_addr
        self.results_topic = results_topic
        self.idle_cpu_s = 0.0

    def _count(self) -> int:
        request = urllib.request.Request(
            f"{self.qdrant}/collections/{COLLECTION}/points/count",
            data=json.dumps({"exact": True}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(json.loads(reply.read())["result"]["count"])

    async def measure_idle(self, seconds: float = 3.0) -> None:
        before, started = _cpu_s(self.cache.pid), time.monotonic()
        await asyncio.sleep(seconds)
        self.idle_cpu_s = (_cpu_s(self.cache.pid) - before) / (time.monotonic() - started)

    def _busy_ms(self, cpu_before: float, started: float, count: int) -> float:
        used = _cpu_s(self.cache.pid) - cpu_before
        idle = self.idle_cpu_s * (time.monotonic() - started)
        return max(0.0, used - idle) * 1000 / max(count, 1)

    async def lookups(
        self, requests: Sequence[cache_pb2.LookupRequest], concurrency: int
    ) -> tuple[Phase, list[cache_pb2.LookupResponse]]:
        async with grpc.aio.insecure_channel(self.cache.addr) as channel:
            stub: cache_pb2_grpc.CacheServiceAsyncStub = cache_pb2_grpc.CacheServiceStub(channel)
            await _lookups(stub, requests[: min(8, len(requests))], 1)  # the channel is up
            cpu_before, started = _cpu_s(self.cache.pid), time.monotonic()
            latencies, responses = await _lookups(stub, requests, concurrency)
            cpu_ms = self._busy_ms(cpu_before, started, len(requests))
        hits = sum(1 for r in responses if r.hit)
        return Phase(cpu_ms, latencies, {"hit": hits, "miss": len(responses) - hits}), responses

    async def stores(
        self,
        requests: Sequence[cache_pb2.LookupRequest],
        misses: Sequence[cache_pb2.LookupResponse],
    ) -> Phase:
        results = [
            envelopes_pb2.CompletionResult(
                schema_version=SCHEMA_VERSION,
                request_id=uuid.uuid4().hex,
                chat_id=uuid.uuid4().hex,
                user_id=request.user_id,
                model=request.model,
                bot_id=request.bot_id,
                kind=envelopes_pb2.COMPLETION_KIND_CHAT,
                text=ANSWER,
                finish_reason=types_pb2.FINISH_REASON_STOP,
                cache_key=miss.key,
            )
            for request, miss in zip(requests, misses, strict=True)
            if miss.HasField("key")
        ]
        before = await asyncio.to_thread(self._count)
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka, linger_ms=5)
        await producer.start()
        try:
            cpu_before, started = _cpu_s(self.cache.pid), time.monotonic()
            sent = [
                await producer.send(
                    self.results_topic, r.SerializeToString(), key=r.chat_id.encode()
                )
                for r in results
            ]
            await asyncio.gather(*sent)
            deadline = started + 120
            while (stored := await asyncio.to_thread(self._count)) < before + len(results):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{stored - before} of {len(results)} entries stored")
                await asyncio.sleep(0.05)
            return Phase(self._busy_ms(cpu_before, started, len(results)))
        finally:
            await producer.stop()


@dataclass
class Figures:
    """Every phase's figures of one cache variant, a list per measure (one entry a round)."""

    cpu: dict[str, list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, name: str, phase: Phase) -> None:
        self.cpu.setdefault(name, []).append(phase.cpu_ms)
        self.latencies.setdefault(name, []).extend(phase.latencies)
        counts = self.outcomes.setdefault(name, {})
        for outcome, count in phase.outcomes.items():
            counts[outcome] = counts.get(outcome, 0) + count


async def one_round(runner: Runner, figures: Figures, tag: str, count: int) -> None:
    """The phases of one round, on a cache process of its own (nothing embedded yet)."""
    texts = Conversations.load()
    # First calls pay for lazy set-up (thread pools, channels, allocator growth): not measured.
    for concurrency in CONCURRENCY:
        start = 48 * (concurrency > 1)
        warm = lookups_of(
            f"{tag}-warm{concurrency}", [((("user", t),)) for t in texts.others[start : start + 48]]
        )
        await runner.lookups(warm, concurrency)
    await runner.measure_idle()
    half = min(count, len(texts.asked) // 2)
    halves = {1: slice(0, half), 16: slice(half, 2 * half)}
    asked = {c: lookups_of(f"{tag}-c{c}", texts.asked[part]) for c, part in halves.items()}
    reworded = {c: lookups_of(f"{tag}-c{c}", texts.reworded[part]) for c, part in halves.items()}
    follow_ups = lookups_of(f"{tag}-follow", texts.follow_ups(96, count // 2))
    misses: dict[int, list[cache_pb2.LookupResponse]] = {}
    for concurrency in CONCURRENCY:
        phase, misses[concurrency] = await runner.lookups(asked[concurrency], concurrency)
        figures.add(f"new question c{concurrency}", phase)
    _, follow_misses = await runner.lookups(follow_ups, 1)
    figures.add(
        "store first turn",
        await runner.stores(
            [r for c in CONCURRENCY for r in asked[c]], [m for c in CONCURRENCY for m in misses[c]]
        ),
    )
    figures.add("store follow-up", await runner.stores(follow_ups, follow_misses))
    for concurrency in CONCURRENCY:
        phase, _ = await runner.lookups(reworded[concurrency], concurrency)
        figures.add(f"reworded question c{concurrency}", phase)
    for concurrency in CONCURRENCY:
        phase, _ = await runner.lookups(asked[concurrency], concurrency)
        figures.add(f"same question again c{concurrency}", phase)


def embedding_alone(quick: bool) -> dict[str, float]:
    """CPU ms per text of the model alone: sentence-transformers' encode, one torch thread."""
    import torch
    from sentence_transformers import SentenceTransformer

    from parley_cache.embedder import load_default_model_path

    torch.set_num_threads(1)
    model = SentenceTransformer(load_default_model_path(), device="cpu")
    texts = Conversations.load().others

    def per_text(batch: int, rounds: int) -> float:
        samples = []
        for index in range(rounds):
            chunk = [texts[(index * batch + j) % len(texts)] for j in range(batch)]
            started = time.process_time()
            model.encode(chunk, normalize_embeddings=True, show_progress_bar=False)
            samples.append((time.process_time() - started) * 1000 / batch)
        return statistics.median(samples)

    per_text(1, 10)
    rounds = 40 if quick else 150
    return {"1": per_text(1, rounds), "16": per_text(16, max(10, rounds // 8))}


PHASES = (
    "new question c1",
    "new question c16",
    "reworded question c1",
    "reworded question c16",
    "same question again c1",
    "same question again c16",
    "store first turn",
    "store follow-up",
)


def report(
    figures: dict[str, Figures],
    alone: dict[str, float],
    count: int,
    rounds: int,
    baseline: str | None = None,
) -> str:
    names = list(figures)
    compared = [n for n in names if baseline is not None and n != baseline]
    lines = [
        "## Cache service CPU per lookup and per stored entry",
        "",
        f"The cache service as a process on the local stack's Qdrant and Kafka; up to {count} "
        f"lookups a phase, {rounds} round(s) (a new process each), medians of the rounds (and "
        "their range). CPU: "
        "every thread of the cache process from /proc, its idle rate taken out, per call or "
        "stored entry. Lookups as the gateway makes them (a system prompt, then the turns): a "
        "new question (a miss), the same question reworded once its answer is stored, and the "
        "first wording again; 1 caller (c1), or 16 at once (c16). Stores: completion results "
        "on the results topic until Qdrant holds them.",
        "",
    ]
    headers = ["phase", *(f"{n}: CPU ms" for n in names)]
    headers += [f"{n} / {baseline}" for n in compared]
    headers += [f"{names[0]} / model alone, 1 text", f"{names[0]} / model alone, 16 at once"]
    rows = []
    for phase in PHASES:
        values = {n: figures[n].cpu.get(phase, [math.nan]) for n in names}
        medians = {n: statistics.median(v) for n, v in values.items()}
        row: list[object] = [phase]
        for name in names:
            spread = f" ({min(values[name]):.2f}–{max(values[name]):.2f})" if rounds > 1 else ""
            row.append(f"**{medians[name]:.2f}**{spread}")
        if baseline is not None:
            row += [f"{medians[n] / medians[baseline]:.2f}×" for n in compared]
        first = medians[names[0]]
        row += [f"{first / alone['1']:.2f}×", f"{first / alone['16']:.2f}×"]
        rows.append(row)
    lines.append(table(headers, rows))
    lines += [
        "",
        f"The model alone in this process (sentence-transformers `encode`, float32, one torch "
        f"thread): **{alone['1']:.2f} ms** CPU for one question, **{alone['16']:.2f} ms** a "
        "question for 16 at once.",
        "",
        "Lookup latency as the caller sees it (ms), and outcomes:",
        "",
    ]
    rows = []
    for phase in (p for p in PHASES if not p.startswith("store")):
        for name in names:
            lat = figures[name].latencies.get(phase, [])
            outcomes = figures[name].outcomes.get(phase, {})
            rows.append(
                [
                    phase,
                    name,
                    ms(pct(lat, 50)),
                    ms(pct(lat, 90)),
                    ms(pct(lat, 99)),
                    f"{outcomes.get('hit', 0)} / {sum(outcomes.values())}",
                ]
            )
    lines.append(table(["phase", "cache", "p50", "p90", "p99", "hits"], rows))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Variant:
    """A cache service to measure: this checkout's, or the sources at `pythonpath`, with `env`."""

    name: str
    pythonpath: Path | None = None
    env: tuple[tuple[str, str], ...] = ()


def _extract(rev: str, into: Path) -> Path:
    """The cache package's sources at git revision `rev` (read with git archive)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "services/cache/src"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    tar_path = into / "cache.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "services" / "cache" / "src"


async def measure(
    addresses: StackAddresses,
    run_dir: Path,
    *,
    quick: bool,
    topic_prefix: str,
    variants: Sequence[Variant] = (Variant("this checkout"),),
    baseline: str | None = None,
    rounds: int | None = None,
) -> str:
    """Each variant's figures, round after round (the order rotating, so that drift in what else
    the machine runs spreads over all of them); `baseline` names the variant ratios refer to."""
    count = 50 if quick else 120
    rounds = rounds or (1 if quick else 3)
    # One consumer group for every variant: each starts where the previous one left off.
    group = f"bench-cache-cpu-{uuid.uuid4().hex[:6]}"
    figures = {variant.name: Figures() for variant in variants}
    for round_index in range(rounds):
        shift = round_index % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            progress(f"cache CPU: round {round_index + 1}/{rounds}, {variant.name}")
            slug = re.sub(r"[^a-z0-9]+", "-", variant.name.lower()).strip("-")
            cache = CacheUnderTest(
                slug,
                addresses,
                run_dir,
                topic_prefix=topic_prefix,
                results_group=group,
                pythonpath=variant.pythonpath,
                env=dict(variant.env),
            )
            cache.start()
            try:
                runner = Runner(cache, addresses, f"{topic_prefix}completions.results")
                tag = f"r{round_index}-{slug}-{uuid.uuid4().hex[:4]}"
                await one_round(runner, figures[variant.name], tag, count)
            finally:
                cache.stop()
    progress("cache CPU: the model alone")
    alone = await asyncio.to_thread(embedding_alone, quick)
    return report(figures, alone, count, rounds, baseline)


async def run(bench: Bench, *, quick: bool) -> str:
    """For `python -m bench`: this checkout's cache, on the benchmark's stack, on topics of its
    own (the platform's session and cache never see its results)."""
    return await measure(
        bench.stack.addresses,
        bench.log_dir,
        quick=quick,
        topic_prefix=f"bench-cache-cpu-{uuid.uuid4().hex[:6]}.",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer lookups, one round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, quick 1)")
    parser.add_argument(
        "--baseline", default="", help="a git revision whose cache service is measured too"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also measure this checkout with these settings (repeat for more of them)",
    )
    args = parser.parse_args()
    extra = tuple(tuple(item.split("=", 1)) for item in args.env)
    if any(len(pair) != 2 for pair in extra):
        parser.error("--env takes NAME=VALUE")
    header = "# Cache service CPU\n\n" + "\n".join(f"- {k}: {v}" for k, v in machine().items())
    print(header + "\n", flush=True)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="parley-cache-cpu-")))
        variants = [Variant("this checkout")]
        if extra:
            label = ", ".join(f"{k}={v}" for k, v in extra)
            variants.append(Variant(f"this checkout, {label}", env=extra))
        baseline = None
        if args.baseline:
            baseline = f"baseline ({args.baseline})"
            variants.append(Variant(baseline, pythonpath=_extract(args.baseline, tmp)))
        local = stack.enter_context(LocalStack())
        # The baseline may predate TOPIC_PREFIX: every variant uses the default topics, on a
        # stack of their own.
        section = asyncio.run(
            measure(
                local.addresses,
                tmp,
                quick=args.quick,
                topic_prefix="parley.",
                variants=variants,
                baseline=baseline,
                rounds=args.rounds,
            )
        )
    print(section)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"_Load average at the end: {load}._")


if __name__ == "__main__":
    main()
