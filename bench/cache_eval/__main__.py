"""How often the semantic cache answers, and how often it answers wrong, on labelled pairs.

Run from the repository root::

    python -m bench.cache_eval                 # report on the test split
    python -m bench.cache_eval --split tune --show-errors
    python -m bench.cache_eval --latency       # and lookup latency with 10k / 100k entries

Each pair in ``pairs.jsonl`` is a stored entry (``a``) and a lookup (``b``) with a label: should
the lookup get the entry's answer? Every pair carries its split:

- ``tune``: every pair looked at while developing the guard; its errors shaped the word lists
  and rules, and ``DEFAULT_SIMILARITY_THRESHOLD`` is chosen on it;
- ``test``: written after the code was frozen, never used to change anything. Reported.

Every method is decided by the production code path, :func:`parley_cache.guard.judge`; the
baseline is what naive semantic caches do: cosine of the last message alone, nothing else.

Prints Markdown: timing, the chosen threshold, precision / recall / hit rate per method and per
kind, the exact-vs-semantic context trade-off, and a threshold sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from parley_cache.embedder import Embedder
from parley_cache.guard import MatchPolicy, check, features, judge
from parley_cache.keying import (
    DEFAULT_SIMILARITY_THRESHOLD,
    CacheKey,
    ContextMode,
    Role,
    Turn,
)

PAIRS_PATH = Path(__file__).with_name("pairs.jsonl")
KINDS = (
    "paraphrase",
    "hard_negative",
    "topical_negative",
    "unrelated",
    "multi_turn_same",
    "multi_turn_different",
)
HEADLINE_KINDS = frozenset({"paraphrase", "hard_negative"})
# The threshold is chosen on every single-turn kind: topical negatives are what it alone stops.
THRESHOLD_KINDS = HEADLINE_KINDS | {"topical_negative", "unrelated"}
SPLITS = ("tune", "test")
TARGET_PRECISION = 0.97
SWEEP = tuple(round(0.70 + 0.02 * i, 2) for i in range(15))  # 0.70 .. 0.98
TUNE_GRID = tuple(round(0.70 + 0.01 * i, 2) for i in range(29))

DEFAULT_BOT = "default"
DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True, slots=True)
class Pair:
    entry: CacheKey  # what the cache holds ("a")
    lookup: CacheKey  # what is asked ("b")
    same: bool
    kind: str
    note: str
    split: str  # "tune" or "test"
    similarity: float = 0.0  # cosine of the question vectors: the last messages
    context_similarity: float | None = None


def _key(side: dict[str, object]) -> CacheKey:
    turns_raw = side["turns"]
    assert isinstance(turns_raw, list)
    return CacheKey.build(
        bot_id=str(side.get("bot_id", DEFAULT_BOT)),
        model=str(side.get("model", DEFAULT_MODEL)),
        system_prompt=str(side.get("system_prompt", DEFAULT_SYSTEM_PROMPT)),
        turns=[Turn(Role(t["role"]), t["content"]) for t in turns_raw],
    )


def load_pairs(path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row["kind"] not in KINDS or row["split"] not in SPLITS:
            raise ValueError(f"{path}:{number}: unknown kind or split in {row!r}")
        pairs.append(
            Pair(
                entry=_key(row["a"]),
                lookup=_key(row["b"]),
                same=bool(row["same"]),
                kind=row["kind"],
                note=str(row.get("note", "")),
                split=row["split"],
            )
        )
    return pairs


# ---------------------------------------------------------------------------------------------
# Embedding and timing.
# ---------------------------------------------------------------------------------------------


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def embed_pairs(embedder: Embedder, pairs: list[Pair]) -> tuple[list[Pair], list[str]]:
    texts: list[str] = []
    for pair in pairs:
        for key in (pair.entry, pair.lookup):
            texts.append(key.question_text)
            if key.has_context:
                texts.append(key.context_text)
    unique = list(dict.fromkeys(texts))
    started = time.perf_counter()
    vectors = dict(zip(unique, await embedder.embed_many(unique), strict=True))
    elapsed = time.perf_counter() - started
    notes = [
        f"embed_many: {len(unique)} texts in {elapsed:.2f} s "
        f"({len(unique) / elapsed:.0f} texts/s, batches of 32)"
    ]

    sample = unique[:32]
    latencies = []
    for text in sample:
        started = time.perf_counter()
        await embedder.embed(text)
        latencies.append(time.perf_counter() - started)
    notes.append(
        f"embed, one caller at a time: median {statistics.median(latencies) * 1000:.1f} ms "
        f"per text ({len(sample)} calls)"
    )
    burst = unique[:64]
    before = embedder.stats
    started = time.perf_counter()
    await asyncio.gather(*(embedder.embed(text) for text in burst))
    elapsed = time.perf_counter() - started
    batches = embedder.stats.batches - before.batches
    notes.append(
        f"embed, {len(burst)} concurrent callers: {elapsed * 1000:.0f} ms in all, "
        f"{batches} micro-batches ({len(burst) / elapsed:.0f} texts/s)"
    )

    embedded: list[Pair] = []
    for pair in pairs:
        context_similarity = None
        if pair.entry.has_context and pair.lookup.has_context:
            context_similarity = _dot(
                vectors[pair.entry.context_text], vectors[pair.lookup.context_text]
            )
        similarity = _dot(vectors[pair.entry.question_text], vectors[pair.lookup.question_text])
        embedded.append(replace(pair, similarity=similarity, context_similarity=context_similarity))
    return embedded, notes


def guard_timing(pairs: list[Pair]) -> str:
    questions = [(p.lookup.question, p.entry.question) for p in pairs]
    features.cache_clear()
    started = time.perf_counter()
    for query, candidate in questions:
        check(query, candidate)
    cold = (time.perf_counter() - started) / len(questions)
    started = time.perf_counter()
    for query, candidate in questions:
        check(query, candidate)
    warm = (time.perf_counter() - started) / len(questions)
    return (
        f"guard.check: {cold * 1e6:.0f} µs per pair extracting both texts, "
        f"{warm * 1e6:.1f} µs with features cached ({len(questions)} pairs)"
    )


# ---------------------------------------------------------------------------------------------
# Methods and metrics.
# ---------------------------------------------------------------------------------------------

Method = Callable[[Pair, float], bool]


def baseline(pair: Pair, threshold: float) -> bool:
    """What naive semantic caches do: cosine of the last message, no context, no checks."""
    return pair.similarity >= threshold


def with_policy(policy: MatchPolicy) -> Method:
    def decide(pair: Pair, threshold: float) -> bool:
        verdict = judge(
            pair.lookup,
            pair.entry,
            similarity=pair.similarity,
            context_similarity=pair.context_similarity,
            policy=replace(policy, threshold=threshold),
        )
        return verdict.hit

    return decide


METHODS: dict[str, Method] = {
    "baseline: last message cosine": baseline,
    "context key, no guard": with_policy(MatchPolicy(guard=False)),
    "context key + guard, no substitution rule": with_policy(
        MatchPolicy(substitution_threshold=0.0)
    ),
    "context key + guard (default)": with_policy(MatchPolicy()),
    "semantic context + guard": with_policy(MatchPolicy(context_mode=ContextMode.SEMANTIC)),
}
DEFAULT_METHOD = "context key + guard (default)"


@dataclass(frozen=True, slots=True)
class Score:
    n: int
    positives: int
    hits: int
    correct: int

    @property
    def wrong(self) -> int:
        return self.hits - self.correct

    @property
    def precision(self) -> float | None:
        return self.correct / self.hits if self.hits else None

    @property
    def recall(self) -> float | None:
        return self.correct / self.positives if self.positives else None

    @property
    def hit_rate(self) -> float:
        return self.hits / self.n if self.n else 0.0


def score(method: Method, pairs: Iterable[Pair], threshold: float) -> Score:
    n = positives = hits = correct = 0
    for pair in pairs:
        n += 1
        positives += pair.same
        if method(pair, threshold):
            hits += 1
            correct += pair.same
    return Score(n, positives, hits, correct)


def choose_threshold(method: Method, pairs: list[Pair]) -> tuple[float, bool]:
    """The threshold with the best F0.5 (precision weighs double) among those that reach the
    precision target, and True; when none does, the best F0.5 overall, and False. Ties go to
    the higher, safer threshold."""
    best: dict[bool, tuple[float, float]] = {}
    for threshold in TUNE_GRID:
        result = score(method, pairs, threshold)
        precision = result.precision if result.precision is not None else 1.0
        recall = result.recall or 0.0
        if precision + recall == 0:
            continue
        f_half = 1.25 * precision * recall / (0.25 * precision + recall)
        for reached in {False, precision >= TARGET_PRECISION}:
            if reached not in best or f_half >= best[reached][1]:
                best[reached] = (threshold, f_half)
    if True in best:
        return best[True][0], True
    return (best[False][0] if best else TUNE_GRID[-1]), False


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------


def report(pairs: list[Pair], *, split: str, threshold: float, show_errors: bool) -> None:
    wanted = set(SPLITS) if split == "all" else {split}
    chosen = [p for p in pairs if p.split in wanted]
    tune = [p for p in pairs if p.split == "tune"]
    headline = [p for p in chosen if p.kind in HEADLINE_KINDS]

    tune_single = [p for p in tune if p.kind in THRESHOLD_KINDS]
    tuned, _ = choose_threshold(METHODS[DEFAULT_METHOD], tune_single)
    tuned_baseline, baseline_reached = choose_threshold(baseline, tune_single)
    print("## Threshold\n")
    print(
        f"- chosen on the tune split (best F0.5 among thresholds with precision >= "
        f"{TARGET_PRECISION} on its single-turn pairs): **{tuned:.2f}** for the default method; "
        f"{tuned_baseline:.2f} for the baseline"
        + ("" if baseline_reached else f" (which never reaches {TARGET_PRECISION}: best F0.5)")
    )
    print(f"- `DEFAULT_SIMILARITY_THRESHOLD` = {DEFAULT_SIMILARITY_THRESHOLD:.2f}")
    print(f"- reported below: threshold {threshold:.2f}, {split} pairs ({len(chosen)})\n")

    print(f"## Paraphrases + hard negatives by split (threshold {threshold:.2f})\n")
    print("| split | pairs | baseline P / R / hit rate | default P / R / hit rate |")
    print("|---|---|---|---|")
    for name in SPLITS:
        subset = [p for p in pairs if p.split == name and p.kind in HEADLINE_KINDS]
        cells = []
        for method in (baseline, METHODS[DEFAULT_METHOD]):
            result = score(method, subset, threshold)
            cells.append(f"{_f(result.precision)} / {_f(result.recall)} / {result.hit_rate:.2f}")
        print(f"| {name} | {len(subset)} | " + " | ".join(cells) + " |")
    print()

    print(f"## Paraphrases + hard negatives ({len(headline)} pairs, threshold {threshold:.2f})\n")
    print("| method | precision | recall | hit rate | wrong hits |")
    print("|---|---|---|---|---|")
    results = {name: score(method, headline, threshold) for name, method in METHODS.items()}
    for name, result in results.items():
        print(
            f"| {name} | {_f(result.precision)} | {_f(result.recall)} | "
            f"{result.hit_rate:.3f} | {result.wrong} |"
        )
    at_own = score(baseline, headline, tuned_baseline)
    print(
        f"| baseline at its own threshold {tuned_baseline:.2f} | {_f(at_own.precision)} | "
        f"{_f(at_own.recall)} | {at_own.hit_rate:.3f} | {at_own.wrong} |"
    )
    base, ours = results["baseline: last message cosine"], results[DEFAULT_METHOD]
    met = (ours.precision or 0) >= TARGET_PRECISION and (ours.recall or 0) >= 0.60
    print(
        f"\nAt {threshold:.2f}: wrong hits {base.wrong} (baseline) -> {ours.wrong} (default); "
        f"precision {_f(base.precision)} -> {_f(ours.precision)}; the default keeps "
        f"{(ours.recall or 0) / max(base.recall or 0, 1e-9):.2f} of the baseline's recall. "
        f"Target precision >= {TARGET_PRECISION} with recall >= 0.60: "
        f"{'met' if met else 'NOT met'}.\n"
    )

    print(f"## All pairs ({len(chosen)}), per method\n")
    print("| method | precision | recall | hit rate | wrong hits |")
    print("|---|---|---|---|---|")
    for name, method in METHODS.items():
        result = score(method, chosen, threshold)
        print(
            f"| {name} | {_f(result.precision)} | {_f(result.recall)} | "
            f"{result.hit_rate:.3f} | {result.wrong} |"
        )

    print(f"\n## Per kind (threshold {threshold:.2f})\n")
    print(
        "Positive kinds: recall (share answered). Negative kinds: false-hit rate "
        "(share wrongly answered, lower is better).\n"
    )
    names = list(METHODS)
    print("| kind | n | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for kind in KINDS:
        subset = [p for p in chosen if p.kind == kind]
        if not subset:
            continue
        cells = []
        for name in names:
            result = score(METHODS[name], subset, threshold)
            share = result.hits / result.n
            cells.append(f"{share:.2f} ({result.hits})")
        print(f"| {kind} | {len(subset)} | " + " | ".join(cells) + " |")

    print(f"\n## Sweep: paraphrases + hard negatives, {split} pairs\n")
    sweep_methods = ["baseline: last message cosine", "context key, no guard", DEFAULT_METHOD]
    print("| threshold | " + " | ".join(f"{n}: P / R / hit rate" for n in sweep_methods) + " |")
    print("|---|" + "---|" * len(sweep_methods))
    for t in SWEEP:
        cells = []
        for name in sweep_methods:
            result = score(METHODS[name], headline, t)
            cells.append(f"{_f(result.precision)} / {_f(result.recall)} / {result.hit_rate:.2f}")
        print(f"| {t:.2f} | " + " | ".join(cells) + " |")

    if show_errors:
        print(f"\n## Errors of the default method at {threshold:.2f}\n")
        policy = MatchPolicy(threshold=threshold)
        for pair in chosen:
            verdict = judge(
                pair.lookup,
                pair.entry,
                similarity=pair.similarity,
                context_similarity=pair.context_similarity,
                policy=policy,
            )
            if verdict.hit != pair.same:
                label = "WRONG HIT" if verdict.hit else "miss"
                print(
                    f"- {label} [{pair.kind}, {pair.split}] {verdict.score:.3f} "
                    f"{pair.entry.question!r} / {pair.lookup.question!r}"
                    f" ({verdict.reason or pair.note})"
                )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_eval", description=__doc__)
    parser.add_argument("--pairs", type=Path, default=PAIRS_PATH)
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="test", help="pairs to report")
    parser.add_argument("--threshold", type=float, default=DEFAULT_SIMILARITY_THRESHOLD)
    parser.add_argument("--show-errors", action="store_true")
    parser.add_argument(
        "--latency",
        action="store_true",
        help="then time lookups with 10k and 100k entries in a Qdrant of its own (minutes)",
    )
    args = parser.parse_args(argv)

    pairs = load_pairs(args.pairs)
    counts = {kind: sum(p.kind == kind for p in pairs) for kind in KINDS}
    print("# Semantic cache evaluation\n")
    print(
        f"{len(pairs)} pairs from {args.pairs.name}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    print()

    started = time.perf_counter()
    # Without the memo of recent vectors: the timings below embed texts embed_many just did.
    embedder = Embedder(memo_size=0)
    load_s = time.perf_counter() - started

    async def run() -> tuple[list[Pair], list[str]]:
        async with embedder:
            return await embed_pairs(embedder, pairs)

    embedded, notes = asyncio.run(run())
    print("## Timing (CPU)\n")
    print(f"- model load ({embedder.model_id}, {embedder.dimension} dimensions): {load_s:.2f} s")
    for note in notes:
        print(f"- {note}")
    print(f"- {guard_timing(embedded)}\n")
    report(embedded, split=args.split, threshold=args.threshold, show_errors=args.show_errors)
    if args.latency:
        from bench.cache_eval import latency

        print()
        latency.main(["--pairs", str(args.pairs)])


if __name__ == "__main__":
    main()
