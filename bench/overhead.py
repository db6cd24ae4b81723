"""Platform overhead: a turn through the whole platform versus the engine alone.

Through the platform a turn is HTTP → gateway → session (auth, store the question, context) →
cache lookup → Kafka → worker (fake engine) → reply topic → gateway → client, streamed as SSE.
The baseline is the same fake engine (`parley_worker.engines.fake.FakeEngine`) driven directly
in this process, with the same settings and the same number of concurrent clients. Each client
runs its requests one after another (closed loop) on its own keep-alive connection.

- miss path: a question never asked before (embedding, vector search, a worker answers);
- hit path: a question the user asked before (embedding, vector search, the cache answers).

Run from the repository root: `python -m bench.overhead [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import time
from dataclasses import dataclass

from bench._harness import Bench, Sample, machine, ms, pct, progress, stream_turn, table
from parley_worker.engines.base import (
    ChatMessage,
    EngineSettings,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from parley_worker.engines.fake import FakeEngine

__all__ = ["run"]

LEVELS = (1, 10, 50, 200)
TTFT_S = 0.05  # the fake engine's fixed time to first token; its tokens follow at once
MAX_TOKENS = 16
SLOTS = 512
SYSTEM = "You are a helpful AI assistant named Parley."


@dataclass
class Level:
    clients: int
    samples: list[Sample]
    seconds: float

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if not s.error]

    def q(self, what: str, p: float) -> float:
        return pct([getattr(s, what) for s in self.ok], p)


def _requests_per_client(clients: int, quick: bool) -> int:
    total = 150 if quick else 600
    return max(3, math.ceil(total / clients))


async def engine_alone(clients: int, per_client: int) -> Level:
    engine = FakeEngine(
        EngineSettings(engine="fake", model="fake", max_concurrency=SLOTS, fake_ttft_s=TTFT_S)
    )
    await engine.start()

    async def client(index: int) -> list[Sample]:
        samples = []
        for n in range(per_client):
            request = GenerationRequest(
                request_id=f"{index}-{n}",
                messages=(ChatMessage("system", SYSTEM), ChatMessage("user", _question(index, n))),
                sampling=SamplingParams(max_tokens=MAX_TOKENS),
            )
            sample = Sample()
            started = time.perf_counter()
            async for event in engine.generate(request):
                if isinstance(event, TextDelta) and math.isnan(sample.ttft):
                    sample.ttft = time.perf_counter() - started
            sample.total = time.perf_counter() - started
            samples.append(sample)
        return samples

    started = time.perf_counter()
    results = await asyncio.gather(*(client(i) for i in range(clients)))
    seconds = time.perf_counter() - started
    await engine.stop()
    return Level(clients, [s for r in results for s in r], seconds)


def _question(client: int, n: int) -> str:
    return f"Question {client}-{n} {secrets.token_hex(6)}: what does {secrets.token_hex(4)} mean?"


async def platform_level(
    bench: Bench, keys: list[str], clients: int, per_client: int, *, hit: bool
) -> Level:
    async def client(index: int) -> list[Sample]:
        key = keys[index]
        samples = []
        async with bench.connection() as conn:
            for n in range(per_client + 1):  # the first request warms the connection up
                message = _hit_question(index) if hit else _question(index, n)
                sample = await stream_turn(
                    conn, key, {"message": message, "max_tokens": MAX_TOKENS}
                )
                if n:
                    samples.append(sample)
        return samples

    started = time.perf_counter()
    results = await asyncio.gather(*(client(i) for i in range(clients)))
    seconds = time.perf_counter() - started
    return Level(clients, [s for r in results for s in r], seconds)


def _hit_question(client: int) -> str:
    return f"What is the tallest mountain on continent number {client}?"


WARM_ATTEMPTS = 60
WARM_S = 300.0


async def warm_cache(bench: Bench, keys: list[str]) -> None:
    """Ask each user's hit question until the cache answers it."""

    # A few at a time: under a crowd the lookups outlast CACHE_TIMEOUT_S and count as misses.
    gate = asyncio.Semaphore(8)

    async def client(index: int) -> None:
        async with gate, bench.connection() as conn:
            for _ in range(WARM_ATTEMPTS):
                sample = await stream_turn(
                    conn, keys[index], {"message": _hit_question(index), "max_tokens": MAX_TOKENS}
                )
                if sample.cached:
                    return
                await asyncio.sleep(0.3)
        raise RuntimeError(f"the cache never answered client {index}'s question")

    try:
        async with asyncio.timeout(WARM_S):
            await asyncio.gather(*(client(i) for i in range(len(keys))))
    except TimeoutError:
        raise RuntimeError(
            f"the cache did not answer every warm-up question in {WARM_S:.0f} s"
        ) from None


def _rows(engine: dict[int, Level], platform: dict[int, Level]) -> list[list[str]]:
    rows = []
    for clients, level in platform.items():
        base = engine[clients]
        errors = len(level.samples) - len(level.ok)
        cached = sum(s.cached for s in level.ok)
        rows.append(
            [
                str(clients),
                f"{len(level.samples)}" + (f" ({errors} errors)" if errors else ""),
                f"{ms(base.q('ttft', 50))} / {ms(base.q('ttft', 99))}",
                f"{ms(level.q('ttft', 50))} / {ms(level.q('ttft', 99))}",
                f"**{ms(level.q('ttft', 50) - base.q('ttft', 50))}** / "
                f"**{ms(level.q('ttft', 99) - base.q('ttft', 99))}**",
                f"{ms(base.q('total', 50))} / {ms(base.q('total', 99))}",
                f"{ms(level.q('total', 50))} / {ms(level.q('total', 99))}",
                f"**{ms(level.q('total', 50) - base.q('total', 50))}** / "
                f"**{ms(level.q('total', 99) - base.q('total', 99))}**",
                f"{level.q('total', 50) / base.q('total', 50):.2f}×",
                f"{len(level.ok) / level.seconds:.0f}",
                f"{cached}/{len(level.ok)}",
            ]
        )
    return rows


HEADERS = [
    "clients",
    "requests",
    "engine TTFT p50 / p99 (ms)",
    "platform TTFT p50 / p99",
    "added TTFT p50 / p99",
    "engine total p50 / p99",
    "platform total p50 / p99",
    "added total p50 / p99",
    "total p50 ratio",
    "turns/s",
    "cache hits",
]


def _hit_rows(engine: dict[int, Level], platform: dict[int, Level]) -> list[list[str]]:
    """A hit never reaches the engine: all of its time is the platform's. The engine's time is
    what answering it would have cost."""
    rows = []
    for clients, level in platform.items():
        base = engine[clients]
        errors = len(level.samples) - len(level.ok)
        rows.append(
            [
                str(clients),
                f"{len(level.samples)}" + (f" ({errors} errors)" if errors else ""),
                f"**{ms(level.q('ttft', 50))}** / **{ms(level.q('ttft', 99))}**",
                f"**{ms(level.q('total', 50))}** / **{ms(level.q('total', 99))}**",
                f"{ms(base.q('total', 50))} / {ms(base.q('total', 99))}",
                f"{level.q('total', 50) / base.q('total', 50):.2f}×",
                f"{len(level.ok) / level.seconds:.0f}",
                f"{sum(s.cached for s in level.ok)}/{len(level.ok)}",
            ]
        )
    return rows


HIT_HEADERS = [
    "clients",
    "requests",
    "platform TTFT p50 / p99 (ms)",
    "platform total p50 / p99",
    "engine alone total p50 / p99",
    "total p50 vs engine",
    "turns/s",
    "cache hits",
]


async def run(bench: Bench, *, quick: bool = False, levels: tuple[int, ...] = LEVELS) -> str:
    bench.restart_workers({"FAKE_TTFT_S": str(TTFT_S), "MAX_CONCURRENCY": str(SLOTS)})
    keys = await bench.create_users(max(levels))
    engine = {c: await engine_alone(c, _requests_per_client(c, quick)) for c in levels}
    miss = {}
    for c in levels:
        progress(f"overhead: cache miss path, {c} clients")
        miss[c] = await platform_level(bench, keys, c, _requests_per_client(c, quick), hit=False)
    progress("overhead: warming the cache")
    await warm_cache(bench, keys)
    hit = {}
    for c in levels:
        progress(f"overhead: cache hit path, {c} clients")
        hit[c] = await platform_level(bench, keys, c, _requests_per_client(c, quick), hit=True)
    at10 = miss.get(10)
    verdict = ""
    if at10 is not None:
        added50 = at10.q("total", 50) - engine[10].q("total", 50)
        added99 = at10.q("total", 99) - engine[10].q("total", 99)
        ok = added50 <= 0.020 and added99 <= 0.060
        verdict = (
            f"\nTarget at 10 clients (miss path): added p50 ≤ 20 ms and p99 ≤ 60 ms — measured "
            f"{ms(added50)} ms and {ms(added99)} ms: **{'met' if ok else 'missed'}**.\n"
        )
    return (
        "## Platform overhead\n\n"
        f"Fake engine: time to first token {TTFT_S * 1000:.0f} ms, then {MAX_TOKENS} tokens at "
        f"once; {SLOTS} worker slots. Streamed (SSE) turns, each a new chat; each client sends its "
        "requests one after another on its own connection. Engine = the same FakeEngine driven "
        "in-process; added = platform − engine (difference of the percentiles); times in ms.\n\n"
        "### Cache miss (a new question: embedding, vector search, Kafka, worker)\n\n"
        + table(HEADERS, _rows(engine, miss))
        + "\n\n### Cache hit (a question asked before: embedding, vector search, answer from the "
        "cache, result recorded through Kafka; no engine). A lookup slower than the gateway's "
        "`CACHE_TIMEOUT_S` counts as a miss: see the hits column.\n\n"
        + table(HIT_HEADERS, _hit_rows(engine, hit))
        + "\n"
        + verdict
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per level")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    args = parser.parse_args()
    levels = tuple(int(x) for x in args.levels.split(","))
    print("\n".join(f"- {k}: {v}" for k, v in machine().items()), flush=True)
    with Bench() as bench:
        print(asyncio.run(run(bench, quick=args.quick, levels=levels)))


if __name__ == "__main__":
    main()
