"""Where one request's time to first token goes, hop by hop, at one client.

    python -m bench.critical_path [--requests 60] [--only chat,v1]
    python -m bench --only critical_path

The services run with their OpenTelemetry spans printed (`OTEL_TRACES_EXPORTER=console`); each
request is sent with a `traceparent` of its own, so every span of its trace (the gateway's HTTP
span and gRPC calls, the Kafka sends, the worker's consume and generation, the first reply chunk
on each side) is found in the services' output afterwards. One client sends its requests one
after another, each a new question (a cache miss), to a fake engine that answers 16 tokens after
50 ms. Printed per scenario: the median time of each hop from the client's send to the first
text it reads (the hops add up to the time to first token), and a few durations beside them.

- `chat`: a full chat turn, `POST /chat` streamed (StartTurn, cache lookup, Kafka, worker);
- `chat-no-cache`: the same turn with `Cache-Control: no-cache` (no `Prime`, so no embedding runs
  beside StartTurn; the lookup only hands back the store key);
- `v1`: `/v1/chat/completions` streamed, stateless, the cache skipped (`Cache-Control: no-cache`).

All processes share the machine's clock, so a span's start in one service and the client's send
are comparable; exporting spans costs some CPU, which matters little to one client's waits.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._harness import Bench, machine, progress, table

__all__ = ["run"]

TTFT_S = 0.05
MAX_TOKENS = 16
REQUESTS = 60
SCENARIOS = ("chat", "chat-no-cache", "v1")
TRACING = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "200"}

# The milestones of a request, in the order they happen; each hop is the time from one to the
# next. (name, what the hop from the previous milestone is)
MILESTONES: tuple[tuple[str, str], ...] = (
    ("sent", ""),
    ("http_in", "client → gateway (HTTP in)"),
    ("session_start", "gateway: auth, parsing, until the session call"),
    ("session_end", "session: StartTurn / PrepareCompletion"),
    ("lookup_start", "gateway: until the cache lookup"),
    ("lookup_end", "cache: Lookup (the question's embedding, the search)"),
    ("produce_start", "gateway: until the request is sent"),
    ("consumed", "Kafka: request topic → worker"),
    ("generate_start", "worker: decode, checks, until the engine starts"),
    ("first_token", "engine: first token (fake, 50 ms)"),
    ("chunk_sent", "worker: first token → first chunk sent"),
    ("chunk_received", "Kafka: reply topic → gateway"),
    ("first_byte", "gateway → client (first text read)"),
)


@dataclass
class Timed:
    """One request as the client saw it (wall-clock nanoseconds)."""

    trace_id: str
    sent: int
    first_byte: int = 0
    done: int = 0
    error: str = ""


@dataclass
class Span:
    name: str
    service: str
    start: int
    end: int
    events: dict[str, int] = field(default_factory=dict)


def _ns(stamp: str) -> int:
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def read_spans(paths: Sequence[Path], offsets: dict[Path, int]) -> dict[str, list[Span]]:
    """The spans the console exporter printed into the services' logs after `offsets`."""
    traces: dict[str, list[Span]] = defaultdict(list)
    for path in paths:
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            for line in log:
                if not line.startswith(b'{"name"'):
                    continue
                try:
                    data = json.loads(line)
                    trace_id = data["context"]["trace_id"].removeprefix("0x")
                    span = Span(
                        name=data["name"],
                        service=data["resource"]["attributes"].get("service.name", ""),
                        start=_ns(data["start_time"]),
                        end=_ns(data["end_time"]),
                        events={e["name"]: _ns(e["timestamp"]) for e in data.get("events", [])},
                    )
                except (ValueError, KeyError, TypeError):
                    continue
                traces[trace_id].append(span)
    return traces


def _first(spans: Sequence[Span], service: str, *marks: str) -> Span | None:
    found = [s for s in spans if s.service == service and any(m in s.name for m in marks)]
    return min(found, key=lambda s: s.start) if found else None


def milestones(request: Timed, spans: Sequence[Span]) -> dict[str, int] | None:
    """The request's milestones from its spans; None when one is missing."""
    gateway, worker = "parley-gateway", "parley-worker"
    http = _first(spans, gateway, "POST /")
    session = _first(spans, gateway, "SessionService/StartTurn", "SessionService/Prepare")
    lookup = _first(spans, gateway, "CacheService/Lookup")
    produce = _first(spans, gateway, "send parley.completions.requests")
    consumed = _first(spans, worker, "process parley.completions.requests")
    generate = _first(spans, worker, "generate")
    chunk_sent = _first(spans, worker, "send parley.replies.")
    received = _first(spans, gateway, "process parley.replies.")
    if (
        http is None
        or session is None
        or lookup is None
        or produce is None
        or consumed is None
        or generate is None
        or chunk_sent is None
        or received is None
        or "first token" not in generate.events
        or not request.first_byte
    ):
        return None
    return {
        "sent": request.sent,
        "http_in": http.start,
        "session_start": session.start,
        "session_end": session.end,
        "lookup_start": lookup.start,
        "lookup_end": lookup.end,
        "produce_start": produce.start,
        "consumed": consumed.start,
        "generate_start": generate.start,
        "first_token": generate.events["first token"],
        "chunk_sent": chunk_sent.start,
        "chunk_received": received.start,
        "first_byte": request.first_byte,
        # Beside the path: when the broker acknowledged the two sends, and the priming call.
        "produce_acked": produce.end,
        "chunk_acked": chunk_sent.end,
    }


@dataclass
class Breakdown:
    scenario: str
    requests: int
    traced: int
    hops: dict[str, list[float]]  # ms per hop
    ttft: list[float]
    total: list[float]
    beside: dict[str, list[float]]
    errors: dict[str, int]


def breakdown(scenario: str, timed: Sequence[Timed], traces: dict[str, list[Span]]) -> Breakdown:
    hops: dict[str, list[float]] = defaultdict(list)
    beside: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    ok = [t for t in timed if not t.error]
    for t in timed:
        if t.error:
            errors[t.error] += 1
    traced = 0
    for request in ok:
        marks = milestones(request, traces.get(request.trace_id, []))
        if marks is None:
            continue
        traced += 1
        for (prev, _), (name, _) in itertools.pairwise(MILESTONES):
            hops[name].append((marks[name] - marks[prev]) / 1e6)
        beside["request send, until the broker's ack"].append(
            (marks["produce_acked"] - marks["produce_start"]) / 1e6
        )
        beside["first chunk send, until the broker's ack"].append(
            (marks["chunk_acked"] - marks["chunk_sent"]) / 1e6
        )
    return Breakdown(
        scenario,
        len(timed),
        traced,
        dict(hops),
        [(t.first_byte - t.sent) / 1e6 for t in ok],
        [(t.done - t.sent) / 1e6 for t in ok],
        dict(beside),
        dict(errors),
    )


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "–"


def render(results: Sequence[Breakdown]) -> str:
    names = [r.scenario for r in results]
    rows: list[list[str]] = []
    for name, label in MILESTONES[1:]:
        rows.append([label, *(_median(r.hops.get(name, [])) for r in results)])
    rows.append(
        ["**sum of the hops**", *(f"**{sum_medians(r):.1f}**" for r in results)]
    )  # fmt: skip
    rows.append(["time to first token (client), p50", *(_median(r.ttft) for r in results)])
    rows.append(
        [
            "added to the engine's 50 ms, p50",
            *(
                f"{statistics.median(r.ttft) - TTFT_S * 1000:.1f}" if r.ttft else "–"
                for r in results
            ),
        ]
    )
    rows.append(["whole answer (client), p50", *(_median(r.total) for r in results)])
    for label in results[0].beside if results else []:
        rows.append([f"beside: {label}", *(_median(r.beside.get(label, [])) for r in results)])
    rows.append(["requests traced / sent", *(f"{r.traced} / {r.requests}" for r in results)])
    errors = [", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0" for r in results]
    rows.append(["errors", *errors])
    return (
        "## Critical path at one client\n\n"
        f"Fake engine: {TTFT_S * 1000:.0f} ms to first token, {MAX_TOKENS} tokens; one client, "
        "each request a new question, sent one after another; median ms of each hop (the "
        "milestones come from the services' spans and the client's clock). Load average at "
        f"the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}.\n\n"
        + table(["hop (median ms)", *names], rows)
        + "\n"
    )


def sum_medians(result: Breakdown) -> float:
    return sum(statistics.median(v) for v in result.hops.values() if v)


async def _measure(url: str, headers: dict[str, str], scenario: str, requests: int) -> list[Timed]:
    chat = scenario.startswith("chat")
    salt = os.urandom(4).hex()
    timed: list[Timed] = []
    async with httpx.AsyncClient(timeout=60) as http:
        for n in range(requests + 1):  # the first one opens the connection
            question = f"Question {salt} {n}: what does {os.urandom(4).hex()} mean?"
            body: dict[str, Any] = (
                {"message": question, "max_tokens": MAX_TOKENS, "stream": True}
                if chat
                else {
                    "model": "fake",
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": MAX_TOKENS,
                    "stream": True,
                }
            )
            trace_id = os.urandom(16).hex()
            parent = os.urandom(8).hex()
            request = Timed(trace_id, time.time_ns())
            sent_headers = {**headers, "traceparent": f"00-{trace_id}-{parent}-01"}
            try:
                async with http.stream("POST", url, json=body, headers=sent_headers) as response:
                    if response.status_code != 200:
                        request.error = f"HTTP {response.status_code}"
                        await response.aread()
                    else:
                        async for line in response.aiter_lines():
                            if not request.first_byte and _has_text(line, chat):
                                request.first_byte = time.time_ns()
                        request.done = time.time_ns()
            except httpx.HTTPError as exc:
                request.error = type(exc).__name__
            if not request.error and not request.first_byte:
                request.error = "no text"
            if n:
                timed.append(request)
    return timed


def _has_text(line: str, chat: bool) -> bool:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    data = json.loads(line[6:])
    if chat:
        return bool(data.get("text"))
    choices = data.get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


@contextmanager
def _traced(bench: Bench) -> Iterator[None]:
    """Every service restarted with its spans printed, and back without them afterwards."""
    platform = bench.running

    def restart(env: dict[str, str | None]) -> None:
        for proc in [*platform.gateways, *platform.workers, platform.session, platform.cache]:
            proc.stop()
        for proc in [platform.session, platform.cache, *platform.workers, *platform.gateways]:
            for key, value in env.items():
                if value is None:
                    proc.env.pop(key, None)
                else:
                    proc.env[key] = value
            proc.start()
        platform.wait_ready(platform.processes, 180)

    restart(dict(TRACING))
    try:
        yield
    finally:
        restart(dict.fromkeys(TRACING))


async def run(
    bench: Bench,
    *,
    quick: bool = False,
    requests: int = REQUESTS,
    scenarios: Sequence[str] = SCENARIOS,
) -> str:
    bench.restart_workers({"FAKE_TTFT_S": str(TTFT_S), "MAX_CONCURRENCY": "64"})
    keys = await bench.create_users(1)
    headers = {"Authorization": f"Bearer {keys[0]}"}
    requests = min(requests, 50) if quick else requests
    results = []
    with _traced(bench):
        platform = bench.running
        logs = [p.log_path for p in platform.processes]
        for scenario in scenarios:
            progress(f"critical path: {scenario}, {requests} requests")
            offsets = {path: path.stat().st_size for path in logs}
            path = "/chat" if scenario.startswith("chat") else "/v1/chat/completions"
            extra = {} if scenario == "chat" else {"Cache-Control": "no-cache"}
            timed = await _measure(
                platform.gateway_url + path, {**headers, **extra}, scenario, requests
            )
            await asyncio.sleep(1.5)  # the exporters print every 200 ms
            results.append(breakdown(scenario, timed, read_spans(logs, offsets)))
    return render(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if s in args.only.split(",")]
    if not chosen:
        parser.error(f"--only: choose from {', '.join(SCENARIOS)}")
    print("\n".join(f"- {k}: {v}" for k, v in machine().items()), flush=True)
    with Bench() as bench:
        print(asyncio.run(run(bench, requests=args.requests, scenarios=chosen)))


if __name__ == "__main__":
    main()
