"""What a full garbage collection costs each service, before and after its start-up heap is frozen.

    python -m bench.gc_pauses

Each service's start-up is rebuilt in a process of its own — the cache's embedding model on ONNX
Runtime, the session's tokenizer of the served model, the gateway's app, the worker's
transformers engine with the served model — and CPython's full collection (`gc.collect()`) is
timed there three times, then again after `parley_common.heap.freeze_startup_heap()`, which every
service calls once it is ready. A full collection stops the world; in a service it runs on
whichever thread allocated last: the event loop, or a thread deciding a cache lookup.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench._harness import REPO, machine, table

__all__ = ["main"]

MODEL = REPO / ".stack" / "models" / "smollm2-135m-instruct"

# What each service holds once it is ready (the heavy parts of its `__main__`).
BUILDS = {
    "cache": (
        "import parley_cache.__main__\n"
        "from parley_cache.embedder import Embedder\n"
        "held = Embedder(None, runtime='onnx', threads=1)\n"
        "held.embed(['warm up'])\n"
    ),
    "session": (
        "import parley_session.__main__\n"
        "from parley_session.tokens import TokenCounter\n"
        f"held = TokenCounter({str(MODEL)!r})\n"
    ),
    "gateway": (
        "import parley_gateway.__main__\n"
        "from parley_gateway.app import create_app\n"
        "from parley_gateway.config import Settings\n"
        "held = create_app(Settings())\n"
    ),
    "worker": (
        "import asyncio, parley_worker.__main__\n"
        "from parley_worker.engines import create_engine\n"
        "from parley_worker.engines.base import EngineSettings\n"
        f"held = create_engine(EngineSettings(engine='transformers', model={str(MODEL)!r}, max_concurrency=8))\n"
        "asyncio.run(held.start())\n"
    ),
}

MEASURE = """
import gc, json, statistics, time
def full_ms():
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        gc.collect()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs)
objects = len(gc.get_objects())
before = full_ms()
from parley_common.heap import freeze_startup_heap
frozen = freeze_startup_heap()
after = full_ms()
print("RESULT " + json.dumps({"objects": objects, "before": before, "frozen": frozen,
                              "after": after, "left": len(gc.get_objects())}))
"""


def measure(service: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", BUILDS[service] + MEASURE],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=600,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, float] = json.loads(line[len("RESULT ") :])
    return result


def main() -> None:
    print("\n".join(f"- {k}: {v}" for k, v in machine().items()), flush=True)
    rows = []
    for service in BUILDS:
        r = measure(service)
        rows.append(
            [
                service,
                f"{r['objects']:,.0f}",
                f"{r['before']:.1f} ms",
                f"{r['frozen']:,.0f}",
                f"{r['after']:.3f} ms",
            ]
        )
    print(
        "\n## A full garbage collection, before and after freezing the start-up heap\n\n"
        + table(
            [
                "service",
                "objects tracked at start-up",
                "full collection p50",
                "objects frozen",
                "full collection after freezing",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
