"""The worker's own cost: time per request, and Kafka messages per streamed token.

A Kafka of its own (the local stack) and one worker process (`python -m parley_worker`, fake
engine); this process writes requests straight to the requests topic and reads the results topic
and a reply topic, so that neither the gateway nor the session is measured.

1. Overhead per request: for each request the worker measures the time from its record fetched
   to its result acknowledged by Kafka, less the generation (`overhead_ms` in its "request done"
   log line; the histogram `parley_worker_overhead_seconds`). The fake engine answers 16 tokens
   without pacing; the requests are streamed (chunks to a reply topic) and kept `k` in flight.
2. Streamed chunks at a high token rate: the fake engine at 2,000 tokens/s, 2,000 tokens a
   request (one second each), `s` streams at once; Kafka messages on the reply topic per
   request and per second, with the default batching (`CHUNK_INTERVAL_MS` 20,
   `CHUNK_MAX_CHARS` 256).

Run from the repository root: `python -m bench.worker_overhead [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench._harness import machine, pct, table
from parley.v1 import envelopes_pb2, types_pb2
from parley_common.kafka import SCHEMA_VERSION, Topics, ensure_topics
from parley_common.timeutil import now_ms
from parley_devstack.platform import ServiceProcess
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import LocalStack

__all__ = ["main"]


class Rig:
    """Kafka, a worker process and the test's producer and readers."""

    def __init__(self, kafka_addr: str, log_dir: Path) -> None:
        self.addr = kafka_addr
        self.log_dir = log_dir
        self.prefix = f"bench{secrets.token_hex(3)}."
        self.topics = Topics.with_prefix(self.prefix)
        self.reply = self.topics.reply("bench")
        self.producer = AIOKafkaProducer(bootstrap_servers=kafka_addr, acks="all", linger_ms=0)
        self.results = AIOKafkaConsumer(bootstrap_servers=kafka_addr, group_id=None)
        self.replies = AIOKafkaConsumer(bootstrap_servers=kafka_addr, group_id=None)
        self.worker: ServiceProcess | None = None

    async def start(self) -> None:
        t = self.topics
        await ensure_topics(self.addr, [t.requests, t.results, t.control, t.dead_letters])
        await ensure_topics(self.addr, [self.reply], partitions=1)
        await self.producer.start()
        for consumer, topic, count in ((self.results, t.results, 4), (self.replies, self.reply, 1)):
            await consumer.start()
            parts = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(parts)
            await consumer.seek_to_end(*parts)
            for tp in parts:
                await consumer.position(tp)

    async def stop(self) -> None:
        await self.producer.stop()
        await self.results.stop()
        await self.replies.stop()

    @contextmanager
    def running_worker(self, name: str, **env: str) -> Iterator[ServiceProcess]:
        (port,) = pick_free_ports(1)
        worker = ServiceProcess(
            name,
            "parley_worker",
            {
                "KAFKA_ADDR": self.addr,
                "ENGINE": "fake",
                "MODEL_NAME": "fake",
                "TOPIC_PREFIX": self.prefix,
                "WORKER_GROUP": f"{self.prefix}workers",
                "WORKER_ID": name,
                "METRICS_PORT": str(port),
                "LOG_LEVEL": "INFO",
                **env,
            },
            self.log_dir / f"{name}.log",
            ready_url=f"http://127.0.0.1:{port}/healthz/ready",
        )
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while not worker.is_ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready:\n{worker.log_tail()}")
                time.sleep(0.2)
            time.sleep(2)  # the consumer group forms
            yield worker
        finally:
            worker.stop()

    async def send(self, request_id: str, max_tokens: int) -> None:
        request = envelopes_pb2.CompletionRequest(
            schema_version=SCHEMA_VERSION,
            request_id=request_id,
            chat_id=request_id,
            user_id="bench",
            model="fake",
            kind=envelopes_pb2.COMPLETION_KIND_CHAT,
            messages=[types_pb2.ChatMessage(role=types_pb2.ROLE_USER, content="How are you?")],
            sampling=types_pb2.SamplingParams(max_tokens=max_tokens),
            deadline_unix_ms=now_ms() + 600_000,
            enqueued_unix_ms=now_ms(),
            reply_topic=self.reply,
        )
        await self.producer.send(
            self.topics.requests, request.SerializeToString(), key=request_id.encode()
        )

    async def next_results(self) -> list[envelopes_pb2.CompletionResult]:
        out = []
        for records in (await self.results.getmany(timeout_ms=100)).values():
            for record in records:
                result = envelopes_pb2.CompletionResult()
                result.ParseFromString(record.value)
                out.append(result)
        return out


def overheads(log: Path, request_ids: set[str]) -> list[float]:
    found = []
    for line in log.read_text().splitlines():
        if '"request done"' not in line:
            continue
        entry = json.loads(line)
        if entry.get("request_id") in request_ids:
            found.append(float(entry["overhead_ms"]))
    return found


async def overhead_level(rig: Rig, worker: ServiceProcess, in_flight: int, total: int) -> list[str]:
    sent_at: dict[str, float] = {}
    round_trips: list[float] = []
    tag = secrets.token_hex(3)

    async def send_one() -> None:
        request_id = f"o-{tag}-{len(sent_at)}"
        sent_at[request_id] = time.perf_counter()
        await rig.send(request_id, max_tokens=16)

    for _ in range(in_flight):
        await send_one()
    started = time.perf_counter()
    while len(round_trips) < total:
        for result in await rig.next_results():
            if result.request_id in sent_at:
                round_trips.append(time.perf_counter() - sent_at[result.request_id])
                if len(sent_at) < total:
                    await send_one()
    seconds = time.perf_counter() - started
    await asyncio.sleep(0.5)  # the log line follows the result
    assert worker.log_path is not None
    own = overheads(worker.log_path, set(sent_at))
    return [
        str(in_flight),
        str(total),
        f"{total / seconds:,.0f}",
        f"{pct(own, 50):.2f} / {pct(own, 90):.2f} / {pct(own, 99):.2f}",
        f"{pct(round_trips, 50) * 1000:.1f} / {pct(round_trips, 99) * 1000:.1f}",
    ]


async def chunk_level(rig: Rig, streams: int, tokens: int) -> list[str]:
    tag = secrets.token_hex(3)
    ids = {f"c-{tag}-{i}" for i in range(streams)}
    for request_id in ids:
        await rig.send(request_id, max_tokens=tokens)
    done: dict[str, envelopes_pb2.CompletionResult] = {}
    chunks: dict[str, int] = dict.fromkeys(ids, 0)
    stamps: list[int] = []
    while len(done) < streams:
        for result in await rig.next_results():
            if result.request_id in ids:
                done[result.request_id] = result
        for records in (await rig.replies.getmany(timeout_ms=0)).values():
            for record in records:
                chunk = envelopes_pb2.CompletionChunk()
                chunk.ParseFromString(record.value)
                if chunk.request_id in ids and not chunk.done:
                    chunks[chunk.request_id] += 1
                    stamps.append(record.timestamp)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the last chunks may trail the results
        for records in (await rig.replies.getmany(timeout_ms=100)).values():
            for record in records:
                chunk = envelopes_pb2.CompletionChunk()
                chunk.ParseFromString(record.value)
                if chunk.request_id in ids and not chunk.done:
                    chunks[chunk.request_id] += 1
                    stamps.append(record.timestamp)
    per_request = [chunks[i] for i in ids]
    generation_s = [done[i].timings.generation_ms / 1000 for i in ids]
    per_stream_rate = [c / g for c, g in zip(per_request, generation_s, strict=True) if g]
    window_s = (max(stamps) - min(stamps)) / 1000 if len(stamps) > 1 else 1.0
    return [
        str(streams),
        f"{tokens:,}",
        f"{pct(generation_s, 50):.2f}",
        f"{pct(per_request, 50):.0f}",
        f"{tokens / pct(per_request, 50):.0f}",
        f"{pct(per_stream_rate, 50):.0f}",
        f"{sum(per_request) / window_s:,.0f}",
    ]


async def measure(kafka_addr: str, log_dir: Path, quick: bool) -> str:
    rig = Rig(kafka_addr, log_dir)
    await rig.start()
    sections = []
    try:
        with rig.running_worker("overhead", MAX_CONCURRENCY="64", FAKE_TOKENS_PER_S="0") as w:
            await overhead_level(rig, w, 4, 50)  # warm-up
            rows = [await overhead_level(rig, w, k, 200 if quick else 1000) for k in (1, 8, 64)]
        sections.append(
            "### Worker overhead per request (fake engine, 16 tokens, streamed)\n\n"
            + table(
                [
                    "in flight",
                    "requests",
                    "requests/s",
                    "worker overhead p50 / p90 / p99 ms",
                    "Kafka round trip p50 / p99 ms",
                ],
                rows,
            )
            + "\n\n*Worker overhead*: record fetched → result acknowledged by Kafka, less the "
            "generation, as the worker measures it. *Kafka round trip*: this process sending the "
            "request → reading its result (generation included)."
        )
        with rig.running_worker("chunks", MAX_CONCURRENCY="64", FAKE_TOKENS_PER_S="2000") as _:
            rows = [await chunk_level(rig, s, 2000) for s in ((1, 16) if quick else (1, 16, 64))]
        sections.append(
            "### Streamed chunks at 2,000 tokens/s per request (default batching: 20 ms or "
            "256 characters)\n\n"
            + table(
                [
                    "streams",
                    "tokens each",
                    "generation s",
                    "chunks per request",
                    "tokens per chunk",
                    "messages/s per stream",
                    "messages/s in all",
                ],
                rows,
            )
        )
    finally:
        await rig.stop()
    machine_line = "Machine: " + "; ".join(f"{k} {v}" for k, v in machine().items()) + "."
    return "## The worker's own cost\n\n" + "\n\n".join(sections) + "\n\n" + machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description="The worker's overhead and chunk message rate.")
    parser.add_argument("--quick", action="store_true", help="fewer requests and levels")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="parley-worker-bench-") as run_dir,
        LocalStack(Path(run_dir) / "stack") as stack,
    ):
        print(asyncio.run(measure(stack.addresses.kafka_addr, Path(run_dir) / "logs", args.quick)))


if __name__ == "__main__":
    main()
