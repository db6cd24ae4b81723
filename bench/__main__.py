"""Run every platform benchmark and write the figures to `bench/results/latest.md`.

    python -m bench            # the full run (about 15 minutes on 2 cores)
    python -m bench --quick    # a short run (about 5 minutes), smaller levels
    python -m bench --only throughput,streaming

One local stack (MongoDB, Kafka, Qdrant) and one platform with the fake engine serve every
benchmark, as separate processes; this process is the load generator. Each benchmark prints its
own section; the report starts with the machine it ran on. The semantic cache's quality
benchmark is separate: `python -m bench.cache_eval`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench import cache_cpu, connections, critical_path, overhead, streaming, throughput
from bench._harness import REPO, RESULTS, Bench, machine

BENCHMARKS: dict[str, Callable[..., Coroutine[Any, Any, str]]] = {
    "overhead": overhead.run,
    "throughput": throughput.run,
    "streaming": streaming.run,
    "connections": connections.run,
    "cache_cpu": cache_cpu.run,
    "critical_path": critical_path.run,
}


def _commit() -> str:
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return found.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run Parley's platform benchmarks.")
    parser.add_argument("--quick", action="store_true", help="a short run with smaller levels")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS)
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )

    where = machine()
    header = (
        "# Parley platform benchmarks\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {_commit()}"
        f"{' (quick run)' if args.quick else ''}. Everything (MongoDB, Kafka with ZooKeeper, "
        "Qdrant, the four services with the fake engine, and the load generator) on one "
        "machine:\n\n" + "\n".join(f"- {key}: {value}" for key, value in where.items()) + "\n"
    )
    print(header, flush=True)
    sections = [header]
    started = time.monotonic()
    # The queue-depth admission limit would refuse the thousand streams held at once.
    with Bench(gateway_env={"MAX_QUEUE_DEPTH": "0"}) as bench:
        for name in chosen:
            try:
                section = asyncio.run(BENCHMARKS[name](bench, quick=args.quick))
            except Exception as exc:  # one benchmark failing must not lose the others' figures
                section = f"## {name}\n\n**Failed**: {type(exc).__name__}: {exc}\n"
            print(section, flush=True)
            sections.append(section)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    footer = (
        f"_{time.monotonic() - started:.0f} s in all; load average at the end: {load}. Other "
        "work on the machine takes CPU from the platform: compare the machine CPU column and "
        "the load averages before reading the figures as the platform's limits._\n"
    )
    sections.append(footer)
    print(footer)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text("\n".join(sections))
    print(f"written to {(RESULTS / 'latest.md').relative_to(REPO)}")


if __name__ == "__main__":
    main()
