"""Streaming relay: tokens per second the platform carries from workers to clients, and the
latency it adds to each chunk.

The fake engine emits tokens as fast as it can; the worker batches them into chunks (every
`CHUNK_INTERVAL_MS`, or `CHUNK_MAX_CHARS`) on the gateway's reply topic; the gateway relays each
chunk as an SSE event. Tokens per second are counted at the clients and compared with the same
engine driven in-process. A chunk's relay latency is the time from the worker handing it to its
Kafka producer (the record's CreateTime, read back from the reply topic) to the client reading
it (same machine, same clock); the worker's batching interval comes on top of it.

Run from the repository root: `python -m bench.streaming [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._harness import Bench, machine, ms, pct, progress, table
from bench._http import HttpError
from parley.v1 import envelopes_pb2
from parley_worker.engines.base import (
    ChatMessage,
    EngineSettings,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)
from parley_worker.engines.fake import FakeEngine

__all__ = ["run"]

TOKEN = " tok"  # the fake engine's token
MAX_TOKENS = 2000
PACED_TOKENS_PER_S = 50  # a typical model's decode speed, for the latency runs
PACED_TOKENS = 100


@dataclass
class Stream:
    request_id: str = ""
    arrivals: list[float] = field(default_factory=list)  # wall-clock seconds of each chunk
    tokens: int = 0
    error: str = ""


@dataclass
class Run:
    clients: int
    seconds: float
    streams: list[Stream]

    @property
    def ok(self) -> list[Stream]:
        return [s for s in self.streams if not s.error]

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.ok) / self.seconds

    @property
    def chunks_per_s(self) -> float:
        return sum(len(s.arrivals) for s in self.ok) / self.seconds


async def _streams(
    bench: Bench, keys: list[str], clients: int, per_client: int, tokens: int
) -> Run:
    to_wall = time.time() - time.perf_counter()

    async def client(index: int) -> list[Stream]:
        done: list[Stream] = []
        async with bench.connection() as conn:
            for n in range(per_client):
                stream = Stream()
                body = {
                    "message": f"Stream {index}.{n} {secrets.token_hex(4)}",
                    "max_tokens": tokens,
                    "stream": True,
                    "no_cache": True,
                }
                try:
                    async for event, data, at in conn.events("POST", "/chat", body, keys[index]):
                        if event == "chat":
                            stream.request_id = data["request_id"]
                        elif event == "chunk":
                            stream.arrivals.append(at + to_wall)
                            stream.tokens += data["text"].count(TOKEN)
                        elif event == "error":
                            stream.error = data["type"]
                except (HttpError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    stream.error = type(exc).__name__
                    await conn.close()
                if not stream.error and stream.tokens != tokens:
                    stream.error = f"{stream.tokens} of {tokens} tokens"
                done.append(stream)
        return done

    started = time.perf_counter()
    results = await asyncio.gather(*(client(i) for i in range(clients)))
    return Run(clients, time.perf_counter() - started, [s for r in results for s in r])


async def engine_tokens_per_s(clients: int, per_client: int, tokens: int) -> float:
    engine = FakeEngine(EngineSettings(engine="fake", model="fake", max_concurrency=512))
    await engine.start()

    async def client(index: int) -> int:
        count = 0
        for n in range(per_client):
            request = GenerationRequest(
                request_id=f"{index}-{n}",
                messages=(ChatMessage("user", "hello"),),
                sampling=SamplingParams(max_tokens=tokens),
            )
            async for event in engine.generate(request):
                if isinstance(event, TextDelta):
                    count += event.text.count(TOKEN)
        return count

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(client(i) for i in range(clients))))
    seconds = time.perf_counter() - started
    await engine.stop()
    return total / seconds


async def relay_latencies(bench: Bench, streams: list[Stream]) -> list[float]:
    """Client arrival minus the record's CreateTime, per chunk, from the gateway's reply topic."""
    wanted = {s.request_id: s for s in streams if s.request_id and not s.error}
    created: dict[str, list[float]] = {rid: [] for rid in wanted}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bench.stack.addresses.kafka_addr,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        partition = TopicPartition(bench.reply_topic, 0)
        consumer.assign([partition])
        end = (await consumer.end_offsets([partition]))[partition]
        await consumer.seek_to_beginning(partition)
        while await consumer.position(partition) < end:
            batch = await consumer.getmany(partition, timeout_ms=1000)
            for record in batch.get(partition, []):
                chunk = envelopes_pb2.CompletionChunk()
                chunk.ParseFromString(record.value or b"")
                if chunk.request_id in created and not chunk.done:
                    created[chunk.request_id].append(record.timestamp / 1000)
    finally:
        await consumer.stop()
    delays = []
    for request_id, stream in wanted.items():
        for arrived, sent in zip(stream.arrivals, created[request_id], strict=False):
            delays.append(arrived - sent)
    return delays


async def run(bench: Bench, *, quick: bool = False) -> str:
    levels = (1, 8) if quick else (1, 8, 32)
    per_client = 2 if quick else 4
    keys = await bench.create_users(max(levels))
    bench.restart_workers({"FAKE_TTFT_S": "0", "FAKE_TOKENS_PER_S": "0"})
    fast_rows = []
    for clients in levels:
        progress(f"streaming: {clients} clients at full speed")
        engine = await engine_tokens_per_s(clients, per_client, MAX_TOKENS)
        result = await _streams(bench, keys, clients, per_client, MAX_TOKENS)
        delays = await relay_latencies(bench, result.ok)
        errors = len(result.streams) - len(result.ok)
        fast_rows.append(
            [
                str(clients),
                f"{len(result.streams)}" + (f" ({errors} errors)" if errors else ""),
                f"{engine:,.0f}",
                f"**{result.tokens_per_s:,.0f}**",
                f"{result.tokens_per_s / engine:.2f}",
                f"{result.chunks_per_s:,.0f}",
                f"{ms(pct(delays, 50))} / {ms(pct(delays, 99))}",
            ]
        )
    bench.restart_workers({"FAKE_TTFT_S": "0", "FAKE_TOKENS_PER_S": str(PACED_TOKENS_PER_S)})
    paced_rows = []
    for clients in (1, 32) if quick else (1, 32, 128):
        progress(f"streaming: {clients} streams at {PACED_TOKENS_PER_S} tokens/s")
        result = await _streams(bench, keys * (1 + clients // len(keys)), clients, 1, PACED_TOKENS)
        delays = await relay_latencies(bench, result.ok)
        errors = len(result.streams) - len(result.ok)
        paced_rows.append(
            [
                str(clients),
                f"{len(result.streams)}" + (f" ({errors} errors)" if errors else ""),
                f"{result.tokens_per_s:,.0f}",
                f"{result.chunks_per_s:,.0f}",
                f"{ms(pct(delays, 50))} / {ms(pct(delays, 90))} / {ms(pct(delays, 99))}",
            ]
        )
    return (
        "## Streaming relay\n\n"
        f"Each stream asks for {MAX_TOKENS} tokens from a fake engine that makes them as fast as "
        f"it can; {per_client} streams a client, one after another. The worker batches tokens "
        "into chunks (default `CHUNK_INTERVAL_MS` 20, `CHUNK_MAX_CHARS` 256). *Relay latency*: "
        "from the worker handing a chunk to Kafka to the client reading it.\n\n"
        + table(
            [
                "clients",
                "streams",
                "engine alone tokens/s",
                "through the platform tokens/s",
                "ratio",
                "chunks/s",
                "relay latency p50 / p99 ms",
            ],
            fast_rows,
        )
        + f"\n\nAt a model's pace ({PACED_TOKENS_PER_S} tokens/s a stream, {PACED_TOKENS} tokens):\n\n"
        + table(
            [
                "streams at once",
                "streams",
                "tokens/s",
                "chunks/s",
                "relay latency p50 / p90 / p99 ms",
            ],
            paced_rows,
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams")
    args = parser.parse_args()
    print("\n".join(f"- {k}: {v}" for k, v in machine().items()), flush=True)
    with Bench() as bench:
        print(asyncio.run(run(bench, quick=args.quick)))


if __name__ == "__main__":
    main()
