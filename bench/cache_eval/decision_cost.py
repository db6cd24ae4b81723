"""What the cache's decision costs, by message length, up to the gateway's limit (32 000 chars).

    python -m bench.cache_eval.decision_cost

Times ``policy.select_hit`` over 5 candidates (``CACHE_CANDIDATES``' default) for fresh texts
(no memoized signals), as a lookup makes it; plain cosine's decision (a comparison) is the
baseline and costs nothing measurable. Prints p50 / p99 per length, wall and CPU time, for three
shapes of candidates: unrelated texts of the same length; the question with one word changed in
the middle (what the differing-span signal is for: it compares the whole texts); the question
with a word added at each end (the longest differing span).
"""

from __future__ import annotations

import random
import statistics
import time

from parley_cache.keying import CacheKey, Role, Turn
from parley_cache.policy import MatchPolicy, select_hit
from parley_cache.signals import text_signals
from parley_common.heap import freeze_startup_heap

LENGTHS = (100, 1_000, 4_000, 32_000)
SHAPES = ("unrelated", "one word changed", "both ends changed")
ROUNDS = 100
CANDIDATES = 5
WORDS = tuple(
    [
        "the",
        "a",
        "cache",
        "answer",
        "model",
        "question",
        "python",
        "list",
        "value",
        "error",
        "file",
        "number",
        "run",
        "test",
    ]
)


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        words.append(rng.choice(WORDS) + str(rng.randrange(100)))
        size += len(words[-1]) + 1
    return " ".join(words)[:chars]


def _candidate(rng: random.Random, query: str, shape: str) -> str:
    if shape == "unrelated":
        return _text(rng, len(query))
    if shape == "one word changed":
        middle = query.find(" ", len(query) // 2)
        middle = middle if middle >= 0 else len(query) // 2
        return query[:middle] + " changed" + str(rng.randrange(1000)) + query[middle:]
    return "Also " + query + " thanks" + str(rng.randrange(1000))


def _key(text: str) -> CacheKey:
    return CacheKey.build(bot_id="b", model="m", system_prompt="", turns=[Turn(Role.USER, text)])


def main() -> None:
    rng = random.Random(14)
    policy = MatchPolicy(threshold=0.8)
    freeze_startup_heap()  # as the cache service does once it is ready
    for warm in (False, True):
        print(
            "\nCandidates seen before (their signals memoized, as stored questions are):"
            if warm
            else "All six texts new (the worst case):"
        )
        _table(rng, policy, warm=warm)


def _table(rng: random.Random, policy: MatchPolicy, *, warm: bool) -> None:
    # CPU time beside wall time: on a shared machine the wall time's tail is other processes'.
    print("| candidates | message chars | decision p50 | p99 | CPU p50 | CPU p99 | plain cosine |")
    print("|---|---|---|---|---|---|---|")
    for shape, length in ((s, n) for s in SHAPES for n in LENGTHS):
        samples, cpu = [], []
        for _ in range(ROUNDS):
            text = _text(rng, length)
            query = _key(text)
            candidates = [
                (_key(_candidate(rng, text, shape)), 0.9, None) for _ in range(CANDIDATES)
            ]
            if warm:
                for candidate, _, _ in candidates:
                    text_signals(candidate.question)
            started, cpu_started = time.perf_counter(), time.thread_time()
            select_hit(query, candidates, policy=policy)
            samples.append((time.perf_counter() - started) * 1000)
            cpu.append((time.thread_time() - cpu_started) * 1000)
        samples.sort()
        cpu.sort()
        print(
            f"| {shape} | {length:,} | {statistics.median(samples):.2f} ms "
            f"| {samples[int(0.99 * len(samples))]:.2f} ms | {statistics.median(cpu):.2f} ms "
            f"| {cpu[int(0.99 * len(cpu))]:.2f} ms | ~0 ms |"
        )


if __name__ == "__main__":
    main()
