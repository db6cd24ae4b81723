"""The engine alone versus the whole platform: what Parley costs on top of vLLM.

The same model, the same prompts, the same sampling and the same number of concurrent clients,
run twice:

(a) the engine adapter alone (`parley_worker.engines`, as the worker builds it), driven in a
    process of its own so that it has the GPU to itself and gives it back when done;
(b) through the whole platform: HTTP → gateway → session → Kafka → worker (the same engine
    settings) → reply topic → gateway → client, streamed as Server-Sent Events, on a local
    stack (MongoDB, Kafka, Qdrant) started for the run.

Each client sends its requests one after another (closed loop). Output tokens per second are the
completion tokens of all requests over the level's wall time; TTFT is from sending the request
to the first text (a `TextDelta` in (a), the first `chunk` event in (b)). The cache is bypassed
(`no_cache`), each request is a new chat, so (b)'s prompt is (a)'s prompt: the session's system
prompt and the question.

Run from the repository root on the GPU machine (vLLM installed in the interpreter):

    python -m bench.gpu_bench --model Qwen/Qwen2.5-1.5B-Instruct --concurrency 1,8,32,128

Without a GPU the same code runs with `--engine transformers --model tiny` (the tiny random
model, built under .stack/models) or `--engine fake`.
Target: (b) keeps ≥ 95 % of (a)'s throughput and adds ≤ 15 ms to the median TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench._harness import REPO, machine, ms, pct, stream_turn, table
from bench._http import Connection

__all__ = ["main"]

SYSTEM = "You are a helpful AI assistant named Parley."  # the session's default system prompt
QUESTIONS = (
    "Explain how a refrigerator keeps food cold.",
    "Write a short poem about the sea at night.",
    "What are the main causes of inflation?",
    "Summarise the plot of a heist film in five sentences.",
    "How do I make a sourdough starter?",
    "Compare trains and planes for a 600 km trip.",
    "Give three tips for writing clear documentation.",
    "Why is the sky blue?",
    "Describe the water cycle to a ten-year-old.",
    "What should I check before buying a used bicycle?",
    "List the planets of the solar system with one fact each.",
    "How does public-key cryptography work?",
    "Plan a one-day walking tour of an old city centre.",
    "What is the difference between weather and climate?",
    "Suggest a vegetarian dinner for four people.",
    "How do vaccines train the immune system?",
)


@dataclass
class Level:
    concurrency: int
    requests: int
    seconds: float
    tokens: int
    ttfts: list[float]
    errors: int = 0
    prompt_tokens: list[int] | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else math.nan


def question(index: int) -> str:
    return QUESTIONS[index % len(QUESTIONS)]


def per_client(concurrency: int, requests: int) -> int:
    return max(1, math.ceil(requests / concurrency))


# --- (a) the engine alone ---------------------------------------------------------------


async def engine_alone(args: argparse.Namespace) -> list[Level]:
    from parley_worker.engines import (
        ChatMessage,
        GenerationDone,
        GenerationRequest,
        SamplingParams,
        TextDelta,
        create_engine,
    )

    engine = create_engine(engine_settings(args))
    await engine.start()

    async def one(index: int) -> tuple[float, int, int]:
        request = GenerationRequest(
            request_id=secrets.token_hex(8),
            messages=(ChatMessage("system", SYSTEM), ChatMessage("user", question(index))),
            sampling=SamplingParams(max_tokens=args.max_tokens),
        )
        started = time.perf_counter()
        ttft = math.nan
        done: GenerationDone | None = None
        async for event in engine.generate(request):
            if isinstance(event, TextDelta):
                if math.isnan(ttft):
                    ttft = time.perf_counter() - started
            else:
                done = event
        assert done is not None
        return ttft, done.completion_tokens, done.prompt_tokens

    async def level(concurrency: int, requests: int) -> Level:
        count = per_client(concurrency, requests)

        async def client(c: int) -> list[tuple[float, int, int]]:
            return [await one(c * count + n) for n in range(count)]

        started = time.perf_counter()
        done = await asyncio.gather(*(client(c) for c in range(concurrency)))
        seconds = time.perf_counter() - started
        flat = [sample for samples in done for sample in samples]
        return Level(
            concurrency,
            len(flat),
            seconds,
            sum(tokens for _, tokens, _ in flat),
            [ttft for ttft, _, _ in flat],
            prompt_tokens=sorted({prompt for _, _, prompt in flat}),
        )

    try:
        await level(min(args.levels), args.warmup)
        return [await level(c, requests_at(args, c)) for c in args.levels]
    finally:
        await engine.stop()


def engine_settings(args: argparse.Namespace) -> Any:
    from parley_worker.engines import EngineSettings

    return EngineSettings(
        engine=args.engine,
        model=args.model_path,
        max_concurrency=max(args.levels),
        fake_ttft_s=args.fake_ttft_s,
        fake_tokens_per_s=args.fake_tokens_per_s,
        vllm_gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_max_model_len=args.max_model_len,
    )


def requests_at(args: argparse.Namespace, concurrency: int) -> int:
    return args.requests or max(2 * concurrency, 16)


def run_engine_alone(args: argparse.Namespace) -> list[Level]:
    """(a) in a child process: vLLM holds the GPU until its process ends."""
    command = [sys.executable, "-m", "bench.gpu_bench", "--engine-alone-json", *args.argv]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the engine-alone run failed:\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return [Level(**level) for level in json.loads(last)]


# --- (b) the whole platform ----------------------------------------------------------------


def worker_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        "MAX_CONCURRENCY": str(max(args.levels)),
        "FAKE_TTFT_S": str(args.fake_ttft_s),
        "FAKE_TOKENS_PER_S": str(args.fake_tokens_per_s),
        "VLLM_GPU_MEMORY_UTILIZATION": str(args.gpu_memory_utilization),
    }
    if args.max_model_len:
        env["VLLM_MAX_MODEL_LEN"] = str(args.max_model_len)
    return env


async def platform_levels(url: str, key: str, args: argparse.Namespace) -> list[Level]:
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def level(concurrency: int, requests: int) -> Level:
        count = per_client(concurrency, requests)

        async def client(c: int) -> list[Any]:
            async with Connection(host, int(port), timeout=600) as conn:
                return [
                    await stream_turn(
                        conn,
                        key,
                        {
                            "message": question(c * count + n),
                            "max_tokens": args.max_tokens,
                            "no_cache": True,
                        },
                    )
                    for n in range(count)
                ]

        started = time.perf_counter()
        done = await asyncio.gather(*(client(c) for c in range(concurrency)))
        seconds = time.perf_counter() - started
        flat = [sample for samples in done for sample in samples]
        ok = [s for s in flat if not s.error]
        return Level(
            concurrency,
            len(flat),
            seconds,
            sum(s.tokens for s in ok),
            [s.ttft for s in ok],
            errors=len(flat) - len(ok),
        )

    await level(min(args.levels), args.warmup)
    return [await level(c, requests_at(args, c)) for c in args.levels]


async def worker_timings(kafka_addr: str) -> dict[str, list[float]]:
    """Queue wait and the worker's own TTFT of every result on the results topic (seconds)."""
    from aiokafka import AIOKafkaConsumer

    from parley.v1 import envelopes_pb2
    from parley_common.kafka import Topics

    consumer = AIOKafkaConsumer(
        Topics().results, bootstrap_servers=kafka_addr, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: dict[str, list[float]] = {"queue wait": [], "worker TTFT": []}
    try:
        while batches := await consumer.getmany(timeout_ms=2000):
            for records in batches.values():
                for record in records:
                    result = envelopes_pb2.CompletionResult()
                    result.ParseFromString(record.value)
                    found["queue wait"].append(result.timings.queue_wait_ms / 1000)
                    found["worker TTFT"].append(result.timings.time_to_first_token_ms / 1000)
    finally:
        await consumer.stop()
    return found


def run_platform(args: argparse.Namespace) -> tuple[list[Level], dict[str, list[float]]]:
    from parley_devstack.platform import Platform
    from parley_devstack.stack import LocalStack

    with (
        tempfile.TemporaryDirectory(prefix="parley-gpu-bench-") as run_dir,
        LocalStack(Path(run_dir) / "stack") as stack,
        Platform(
            stack.addresses,
            run_dir=Path(run_dir) / "logs",
            model_dir=Path(args.model_path) if args.engine != "fake" else None,
            engine=args.engine,
            service_env={
                "worker": worker_env(args),
                "gateway": {"COMPLETION_TIMEOUT_S": "600", "MAX_QUEUE_DEPTH": "0"},
            },
        ) as platform,
    ):
        key = create_key(platform.gateway_url, platform.admin_api_key)
        levels = asyncio.run(platform_levels(platform.gateway_url, key, args))
        return levels, asyncio.run(worker_timings(stack.addresses.kafka_addr))


def create_key(url: str, admin_key: str) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        user = http.post("/admin/users", json={"name": "gpu-bench"})
        user.raise_for_status()
        key = http.post(f"/admin/users/{user.json()['user_id']}/keys", json={"name": "bench"})
        key.raise_for_status()
        return str(key.json()["api_key"])


# --- report --------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    alone: list[Level],
    whole: list[Level],
    timings: dict[str, list[float]],
) -> str:
    rows = []
    verdicts = []
    for a, b in zip(alone, whole, strict=True):
        ratio = b.tokens_per_s / a.tokens_per_s if a.tokens_per_s else math.nan
        a50, b50 = pct(a.ttfts, 50), pct(b.ttfts, 50)
        added = b50 - a50
        rows.append(
            [
                a.concurrency,
                f"{a.requests} / {b.requests}" + (f" ({b.errors} failed)" if b.errors else ""),
                f"{a.tokens_per_s:,.0f}",
                f"{b.tokens_per_s:,.0f}",
                f"{ratio:.1%}",
                f"{ms(a50)} / {ms(pct(a.ttfts, 99))}",
                f"{ms(b50)} / {ms(pct(b.ttfts, 99))}",
                f"{added * 1000:+.1f}",
            ]
        )
        verdicts.append(ratio >= 0.95 and added <= 0.015)
    lines = [
        f"## Engine alone (a) versus the whole platform (b): {args.engine}, {args.model}",
        "",
        f"max_tokens {args.max_tokens}, engine slots {max(args.levels)}, "
        f"closed-loop clients, {args.warmup} warm-up requests per side.",
        "",
        table(
            [
                "clients",
                "requests (a / b)",
                "(a) output tok/s",
                "(b) output tok/s",
                "(b)/(a)",
                "(a) TTFT p50 / p99 ms",
                "(b) TTFT p50 / p99 ms",
                "(b) − (a) p50 ms",
            ],
            rows,
        ),
        "",
        "Target: (b)/(a) ≥ 95 % and (b) − (a) p50 ≤ 15 ms. Met at "
        + ", ".join(
            f"{a.concurrency}: {'yes' if ok else 'no'}"
            for a, ok in zip(alone, verdicts, strict=True)
        )
        + ".",
    ]
    lines += [
        "",
        "Where (b)'s TTFT goes, all levels together (p50 / p99 ms): "
        + "; ".join(f"{name} {ms(pct(v, 50))} / {ms(pct(v, 99))}" for name, v in timings.items())
        + ". Queue wait is from the gateway queueing the request to a worker taking it; the "
        "rest of (b)'s TTFT is the gateway, session and cache before it and the relay after.",
    ]
    prompt_tokens = sorted({p for level in alone for p in (level.prompt_tokens or [])})
    lines += ["", f"(a) prompt tokens per request: {prompt_tokens}."]
    lines += ["", "Machine: " + "; ".join(f"{k} {v}" for k, v in machine().items()) + "."]
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="vLLM alone versus the whole platform (tokens/s, TTFT)."
    )
    parser.add_argument("--model", required=True, help="a model name or folder; 'tiny' builds one")
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers", "fake"])
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--requests", type=int, default=0, help="per level (default: 2 × clients, at least 16)"
    )
    parser.add_argument("--warmup", type=int, default=4, help="requests before measuring")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--fake-ttft-s", type=float, default=0.02)
    parser.add_argument("--fake-tokens-per-s", type=float, default=100.0)
    parser.add_argument("--engine-alone-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = [a for a in argv if a != "--engine-alone-json"]
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.model == "tiny":
        from parley_devstack.tiny_model import build_tiny_model

        args.model_path = str(build_tiny_model(REPO / ".stack" / "models" / "tiny"))
    else:
        args.model_path = args.model
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.engine_alone_json:
        levels = asyncio.run(engine_alone(args))
        print(json.dumps([asdict(level) for level in levels]), flush=True)
        return
    print(f"(a) {args.engine} alone at {args.levels} clients ...", file=sys.stderr, flush=True)
    alone = run_engine_alone(args)
    print("(b) through the platform ...", file=sys.stderr, flush=True)
    whole, timings = run_platform(args)
    print(report(args, alone, whole, timings))


if __name__ == "__main__":
    main()
