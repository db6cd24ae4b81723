"""The served model on each CPU engine: time to first token and tokens/s at 1 and 8 requests.

    python -m bench.model_engines                 # SmolLM2-135M-Instruct, both engines
    python -m bench.model_engines --model PATH --engines transformers --levels 1,4

Each engine runs in a child process of its own virtualenv (transformers in `.venv`, vLLM's CPU
build in `.venv-vllm`), loads the model through the worker's own engine adapter and answers the
same greedy chat requests at each concurrency level. Printed per engine and level: model load
time, TTFT p50/p99, completion tokens/s per stream (median) and in aggregate. The figure that
decides `make run`'s engine is the aggregate tokens/s and TTFT at both levels, measured in the
same run (`vLLM / transformers` ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

_PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a neural network is in two sentences.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "What should I pack for a weekend trip to the mountains?",
    "How do I make a cup of tea?",
]
_VENVS = {"transformers": REPO / ".venv", "vllm": REPO / ".venv-vllm"}


async def _child(
    engine_name: str, model: str, levels: list[int], max_tokens: int
) -> dict[str, Any]:
    from parley_worker.engines import create_engine
    from parley_worker.engines.base import (
        ChatMessage,
        EngineSettings,
        GenerationDone,
        GenerationRequest,
        SamplingParams,
        TextDelta,
    )

    settings = EngineSettings(
        engine=engine_name,
        model=model,
        max_concurrency=max(levels),
        vllm_kv_cache_memory_bytes=2 * 2**30,
        vllm_max_model_len=4096,
    )
    engine = create_engine(settings)
    started = time.perf_counter()
    await engine.start()
    load_s = time.perf_counter() - started

    async def one(i: int, prompt: str) -> tuple[float, int, float]:
        request = GenerationRequest(
            request_id=f"bench-{i}",
            messages=(ChatMessage("user", prompt),),
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
        sent = time.perf_counter()
        first = 0.0
        tokens = 0
        async for event in engine.generate(request):
            if isinstance(event, TextDelta) and not first:
                first = time.perf_counter() - sent
            elif isinstance(event, GenerationDone):
                tokens = event.completion_tokens
        return first, tokens, time.perf_counter() - sent

    await one(0, "Hello")  # warm-up: first-call allocations are not the steady state
    results: dict[str, Any] = {"engine": engine_name, "load_s": load_s, "levels": {}}
    for level in levels:
        rounds = max(2, 16 // level)
        ttfts: list[float] = []
        stream_rates: list[float] = []
        total_tokens = 0
        wall = 0.0
        for r in range(rounds):
            batch = [_PROMPTS[(r * level + i) % len(_PROMPTS)] for i in range(level)]
            began = time.perf_counter()
            done = await asyncio.gather(*(one(i, p) for i, p in enumerate(batch)))
            wall += time.perf_counter() - began
            for first, tokens, elapsed in done:
                ttfts.append(first)
                total_tokens += tokens
                if elapsed > first:
                    stream_rates.append(max(tokens - 1, 0) / (elapsed - first))
        results["levels"][str(level)] = {
            "requests": len(ttfts),
            "ttft_p50_ms": 1000 * statistics.median(ttfts),
            "ttft_p99_ms": 1000 * max(ttfts),
            "stream_tokens_per_s": statistics.median(stream_rates),
            "aggregate_tokens_per_s": total_tokens / wall,
        }
    await engine.stop()
    return results


def _run_engine(
    engine: str, model: str, levels: list[int], max_tokens: int
) -> dict[str, Any] | str:
    python = _VENVS[engine] / "bin" / "python"
    if not python.exists():
        return f"{python} is missing (`make install` or `make .venv-vllm/.installed`)"
    command = [
        str(python), "-m", "bench.model_engines", "--child", engine, "--model", model,
        "--levels", ",".join(map(str, levels)), "--max-tokens", str(max_tokens),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return "failed: " + (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _report(results: dict[str, dict[str, Any] | str], levels: list[int]) -> str:
    out = [
        "## Served model on the CPU engines",
        "",
        "| engine | load s | clients | TTFT p50 ms | TTFT p99 ms | tokens/s per stream | tokens/s total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if isinstance(result, str):
            out.append(f"| {name} | {result} | | | | | |")
            continue
        for level in levels:
            row = result["levels"][str(level)]
            out.append(
                f"| {name} | {result['load_s']:.1f} | {level} | {row['ttft_p50_ms']:.0f} | "
                f"{row['ttft_p99_ms']:.0f} | {row['stream_tokens_per_s']:.1f} | "
                f"{row['aggregate_tokens_per_s']:.1f} |"
            )
    vllm, transformers = results.get("vllm"), results.get("transformers")
    if isinstance(vllm, dict) and isinstance(transformers, dict):
        out.append("")
        for level in levels:
            v, t = vllm["levels"][str(level)], transformers["levels"][str(level)]
            out.append(
                f"- {level} client(s): vLLM / transformers tokens/s "
                f"{v['aggregate_tokens_per_s'] / t['aggregate_tokens_per_s']:.2f}x, "
                f"TTFT p50 {v['ttft_p50_ms']:.0f} vs {t['ttft_p50_ms']:.0f} ms"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(REPO / ".stack" / "models" / "smollm2-135m-instruct")
    )
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--levels", default="1,8")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.model, levels, args.max_tokens))))
        return
    if not Path(args.model).exists():
        from parley_devstack.models import install_model

        install_model(Path(args.model).parent)
    from bench._harness import machine  # not in the children: the vLLM venv lacks its imports

    print(machine(), flush=True)
    results = {
        engine: _run_engine(engine, args.model, levels, args.max_tokens)
        for engine in args.engines.split(",")
    }
    print(_report(results, levels))


if __name__ == "__main__":
    main()
