"""The cache's embedding model on each runtime, side by side in one run.

    python -m bench.embeddings                 # about a minute
    python -m bench.embeddings --rounds 300

For PyTorch (float32, the reference), ONNX Runtime float32 and ONNX Runtime int8, one thread
each (the cache service's setting, ``CACHE_EMBEDDING_THREADS``): the wall time and the CPU time
of one model call on one short question, on a batch of 8, and on one 2,000-character text,
interleaved round by round so that other load on the machine falls on all of them alike; and how
far each runtime's vectors are from PyTorch's on the hand-made evaluation questions
(``bench/cache_eval/pairs.jsonl``): the smallest cosine and the largest difference in any
coordinate. What int8 does to the cache's decisions is measured by
``python -m bench.cache_eval score PAIRS --embedding-runtime onnx --embedding-precision int8``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench._harness import machine, table
from bench.cache_eval.pairs import load_pairs
from parley_cache.embedder import Embedder, Precision, Runtime

_PAIRS = Path(__file__).resolve().parent / "cache_eval" / "pairs.jsonl"
_SHORT = [
    "How do I enable dark mode?",
    "What is the capital of France?",
    "Write a haiku about autumn rain.",
    "How can I reverse a list in Python?",
]
_LONG = ("Summarize the following meeting notes and list the action items. " * 40)[:2000]
_SETUPS: list[tuple[str, Runtime, Precision]] = [
    ("PyTorch float32", "torch", "float32"),
    ("ONNX Runtime float32", "onnx", "float32"),
    ("ONNX Runtime int8", "onnx", "int8"),
]


def _timed(call: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    call()
    return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def run(rounds: int) -> str:
    import torch

    torch.set_num_threads(1)
    embedders = {name: Embedder(runtime=r, precision=p, memo_size=0) for name, r, p in _SETUPS}
    loads = {
        "1 question": lambda i: [_SHORT[i % len(_SHORT)]],
        "8 questions": lambda i: [f"{text} ({i})" for text in _SHORT * 2],
        "2,000 characters": lambda i: [f"{_LONG[:-8]}{i:08d}"],
    }
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in embedders:  # warm-up: first calls allocate
        for texts in loads.values():
            embedders[name]._encode(texts(0))
    for i in range(rounds):
        for load, texts in loads.items():
            batch = texts(i)
            for name, embedder in embedders.items():
                cost = _timed(lambda e=embedder, b=batch: e._encode(b))  # type: ignore[misc]
                samples.setdefault((name, load), []).append(cost)

    rows = []
    for load in loads:
        base_cpu = statistics.median(c for _, c in samples[(_SETUPS[0][0], load)])
        for name, *_ in _SETUPS:
            walls = [w for w, _ in samples[(name, load)]]
            cpus = [c for _, c in samples[(name, load)]]
            cpu = statistics.median(cpus)
            rows.append(
                [
                    load,
                    name,
                    f"{statistics.median(walls):.2f}",
                    f"{cpu:.2f}",
                    f"{base_cpu / cpu:.2f}×",
                ]
            )

    questions = sorted(
        {
            text
            for pair in load_pairs(_PAIRS)
            for text in (pair.entry.question_text, pair.lookup.question_text)
        }
    )
    reference = embedders[_SETUPS[0][0]].embed_many
    expected = asyncio.run(reference(questions))
    agreement = []
    for name, *_ in _SETUPS[1:]:
        got = asyncio.run(embedders[name].embed_many(questions))
        cosines = [_dot(a, b) for a, b in zip(expected, got, strict=True)]
        worst = max(
            abs(x - y)
            for a, b in zip(expected, got, strict=True)
            for x, y in zip(a, b, strict=True)
        )
        agreement.append(
            [
                name,
                str(len(questions)),
                f"{min(cosines):.6f}",
                f"{statistics.median(cosines):.6f}",
                f"{worst:.2e}",
            ]
        )

    where = machine()
    lines = [
        "## Embedding runtimes (all-MiniLM-L6-v2, one thread)",
        "",
        f"{rounds} rounds, interleaved. Machine: "
        + ", ".join(f"{k}: {v}" for k, v in where.items()),
        "",
        table(["texts a call", "runtime", "wall p50 ms", "CPU p50 ms", "CPU vs PyTorch"], rows),
        "",
        "Vectors against PyTorch float32's on the hand-made evaluation questions:",
        "",
        table(["runtime", "texts", "min cosine", "median cosine", "max |difference|"], agreement),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embeddings", description=__doc__)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    print(run(args.rounds), flush=True)


if __name__ == "__main__":
    main()
