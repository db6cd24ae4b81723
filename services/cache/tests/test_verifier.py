"""The verifier's signals, its calibration table and the match policy built on them."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from parley_cache.embedder import Embedder
from parley_cache.keying import CacheKey, ContextMode, Role, Turn
from parley_cache.lookup import _judge
from parley_cache.policy import MatchPolicy, judge, select_hit
from parley_cache.signals import (
    FEATURE_NAMES,
    MAX_CHARS,
    difference,
    pair_features,
    same_words,
    text_signals,
)
from parley_cache.store import Candidate
from parley_cache.verifier import Calibration, Verifier, default_verifier


def features(a: str, b: str, cosine: float = 0.95) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, pair_features(a, b, cosine), strict=True))


@pytest.mark.parametrize(
    ("a", "b", "signal"),
    [
        ("x+1", "x-1", "symbols_differ"),
        ("a // b", "a / b", "symbols_differ"),
        ("git reset --hard", "git reset --soft", "few_words_swapped"),
        ("Je sais", "Je ne sais pas", "negation_differs"),
        ("Kocht man Reis mit Salz?", "Kocht man Reis ohne Salz?", "negation_differs"),
        ("Why does it compile?", "Why doesn't it compile?", "negation_differs"),
        ("Write a poem", "Write a sad poem", "one_side_adds_words"),
        ("Is 17 prime?", "Is 18 prime?", "numbers_differ"),
        ("Que veut dire pêche ?", "Que veut dire péché ?", "few_words_swapped"),
    ],
)
def test_signals_see_what_the_embedding_misses(a: str, b: str, signal: str) -> None:
    assert features(a, b)[signal] == 1.0
    assert features(a, a)[signal] == 0.0


def test_the_tokenizer_reads_any_script() -> None:
    assert set(text_signals("Что такое café?").words) == {"что", "такое", "café"}


def test_long_texts_are_read_up_to_a_cap() -> None:
    long = "word " * 20_000
    started = time.perf_counter()
    pair_features(long + "one", long + "two", 0.99)
    assert time.perf_counter() - started < 0.05
    assert text_signals(long).length <= MAX_CHARS


@pytest.mark.parametrize(
    ("a", "b", "differ"),
    [
        ("x+1 is", "x-1 is", (["+"], ["-"])),
        ("7 // 2", "7 / 2", (["//"], ["/"])),
        ("a poem", "a sad poem", ([], ["sad"])),
        ("Write a poem", "write  a poem.", ([], [])),
        ("a poem", "a poems", (["poem"], ["poems"])),
    ],
)
def test_the_differing_span_is_whole_tokens(
    a: str, b: str, differ: tuple[list[str], list[str]]
) -> None:
    diff = difference(a, b)
    assert (diff.stored, diff.asked) == differ
    assert same_words(a, b) == (differ == ([], []))


def test_one_word_changed_in_the_middle_of_a_long_prompt_is_seen() -> None:
    # Beyond the characters the other checks read, at any length up to the gateway's limit.
    filler = "The service reads orders from a queue and stores them. " * 280
    a = filler + "Rewrite the validation in Python. " + filler
    b = filler + "Rewrite the validation in Rust. " + filler
    assert len(a) > 30_000
    near = features(a, b, 0.997)
    assert near["differing_tokens"] == 1 / 8
    assert near["differing_share"] < 0.001
    assert near["few_differ_in_long_text"] > 0.99
    assert features(a, a + " ", 0.999)["differing_tokens"] == 0.0
    # Equal at both ends, as far as the word checks read: not the same words.
    assert not same_words(a, b)
    assert same_words(a, a.replace("in Python.", "in  python"))
    # Differences far apart (here at both ends) make one long span, not read whole: not taken
    # for the same words, whatever lies between.
    assert not same_words(a, "Also: " + a + " thanks")
    assert default_verifier().score(a, b, 0.997) < default_verifier().score(a, a + "!", 0.999)


@pytest.mark.parametrize(
    ("changed", "into", "signal"),
    [
        ("the deadline is March 14.", "the deadline is March 4.", "near_copy_changed_number"),
        ("if total > 50: discount()", "if total >= 50: discount()", "near_copy_changed_symbol"),
        ("Que veut dire pêcher ?", "Que veut dire pécher ?", "near_copy_changed_accents"),
    ],
)
def test_what_the_differing_span_holds_is_read_over_the_whole_text(
    changed: str, into: str, signal: str
) -> None:
    filler = "Please keep the tone of the original and do not add anything. " * 40
    near = features(filler + changed + " " + filler, filler + into + " " + filler, 1.0)
    assert near[signal] > 0.99
    others = {"near_copy_changed_number", "near_copy_changed_symbol", "near_copy_changed_accents"}
    assert all(near[name] == 0.0 for name in others - {signal})
    # A changed word that is none of these leaves all three at zero; in a rewrite they weigh
    # little (the texts are not near copies).
    word = features(filler + "in Python. " + filler, filler + "in Rust. " + filler, 1.0)
    assert all(word[name] == 0.0 for name in others)
    assert features("What is a cat?", "Why is 4 > 3 true?", 0.3)["near_copy_changed_number"] < 0.5


def test_the_differing_span_costs_little_at_the_gateways_limit() -> None:
    filler = "word " * 6_400
    pairs = [
        (filler + "one " + filler, filler + "two " + filler),  # one word in the middle
        ("Please " + filler + "end.", "please " + filler + "end"),  # both ends, trivially
        ("x" * 32_000, "x" * 15_000 + "y" + "x" * 16_999),  # no whitespace at all
        (filler, "".join(reversed(filler)) + "z"),  # different throughout
    ]
    started = time.perf_counter()
    for a, b in pairs:
        difference(a, b)
    assert (time.perf_counter() - started) / len(pairs) < 0.002


async def test_a_changed_operator_negation_or_number_lowers_the_score(embedder: Embedder) -> None:
    # Beside the same question reworded, the one that differs in the detail scores lower, at the
    # cosines the real model gives (how much lower is fitted: see verifier.json).
    verifier = default_verifier()
    for base, reworded, changed in [
        ("What does x += 1 do in C?", "What does x += 1 do in C", "What does x -= 1 do in C?"),
        ("Why does my code compile?", "Why does my code compile", "Why doesn't my code compile?"),
        ("Is 17 a prime number?", "is 17 a prime number", "Is 18 a prime number?"),
    ]:
        a, b, c = await embedder.embed_many([base, reworded, changed])
        scores = [
            verifier.score(base, other, sum(x * y for x, y in zip(a, vector, strict=True)))
            for other, vector in ((reworded, b), (changed, c))
        ]
        assert scores[1] < scores[0], (base, scores)
    assert verifier.score("Same text", "Same text", 0.2) == 1.0


def test_the_threshold_keeps_measured_precision_at_and_above_it() -> None:
    table = Calibration(
        rows=(
            (0.6, 0.80, 0.9, 500),
            (0.7, 0.90, 0.7, 400),
            (0.8, 0.96, 0.5, 300),
            (0.9, 0.99, 0.2, 150),
            (0.95, 0.50, 0.01, 4),  # too few hits to say anything
        ),
        positives=400,
        pairs=1000,
    )
    assert table.threshold_for(0.05) == 0.8
    assert table.threshold_for(0.10) == 0.7
    assert table.threshold_for(0.001) == 1.0  # nothing is safe enough: identical questions only
    assert table.measured(0.85) == (0.96, 0.5)


def test_the_shipped_table_is_monotone_enough_to_choose_from() -> None:
    table = default_verifier().weights.calibration
    assert table.threshold_for(0.30) <= table.threshold_for(0.20) <= table.threshold_for(0.15)


def key(*turns: str, system: str = "s") -> CacheKey:
    roles = [Role.USER if i % 2 == 0 else Role.ASSISTANT for i in range(len(turns))]
    return CacheKey.build(
        bot_id="b",
        model="m",
        system_prompt=system,
        turns=[Turn(r, t) for r, t in zip(roles, turns, strict=True)],
    )


def test_every_verdict_carries_its_score_and_a_reason() -> None:
    policy = MatchPolicy(threshold=0.5)
    hit = judge(key("What is a monad?"), key("What's a monad?"), similarity=0.97, policy=policy)
    assert hit.hit
    assert hit.score > 0.5
    assert hit.reason.startswith("verifier ")
    assert ">=" in hit.reason
    miss = judge(key("x+1"), key("x-1"), similarity=0.9, policy=MatchPolicy(threshold=0.999))
    assert not miss.hit
    assert "below 0.999" in miss.reason


def test_other_scope_or_context_never_matches() -> None:
    policy = MatchPolicy(threshold=0.1)
    q = key("hi", "hello", "What is it?")
    assert not judge(q, key("What is it?", system="other"), similarity=1.0, policy=policy).hit
    assert not judge(q, key("yo", "hello", "What is it?"), similarity=1.0, policy=policy).hit
    earlier = ("a", "b", "c", "d", "e", "f")
    long_q = key("My name is Ana", "Hi", *earlier, "What is my name?")
    long_e = key("My name is Ben", "Hi", *earlier, "What is my name?")
    for mode in ContextMode:
        verdict = judge(
            long_q, long_e, similarity=1.0, context_similarity=1.0,
            policy=MatchPolicy(threshold=0.1, context_mode=mode),
        )  # fmt: skip
        assert not verdict.hit
        assert "context" in verdict.reason


def test_select_hit_picks_the_best_accepted_or_reports_the_best_miss() -> None:
    policy = MatchPolicy(threshold=0.6)
    q = key("How do I reverse a list in Python?")
    candidates = [
        (key("How do I reverse a list in Rust?"), 0.90, None),
        (key("How can I reverse a Python list?"), 0.93, None),
    ]
    index, verdict = select_hit(q, candidates, policy=policy)
    assert index == 1
    assert verdict is not None
    assert verdict.hit
    index, verdict = select_hit(q, candidates, policy=MatchPolicy(threshold=0.9999))
    assert index is None
    assert verdict is not None
    assert not verdict.hit


class _ThreadNoting(Verifier):
    """The shipped verifier, noting the thread each score is computed on."""

    def __init__(self) -> None:
        super().__init__(default_verifier().weights)
        self.threads: set[int] = set()

    def score(self, stored: str, asked: str, cosine: float) -> float:
        self.threads.add(threading.get_ident())
        return super().score(stored, asked, cosine)


@pytest.mark.parametrize("length", [20, 32_000])
async def test_the_decision_runs_off_the_event_loop(length: int) -> None:
    verifier = _ThreadNoting()
    question = ("word " * length)[:length]
    candidates = [
        Candidate(entry_id=str(n), key=key(question + f" {n}"), answer="a", score=0.95)
        for n in range(5)
    ]
    policy = MatchPolicy(threshold=0.8, verifier=verifier)
    await _judge(key(question + " x"), candidates, policy)
    assert verifier.threads
    assert threading.get_ident() not in verifier.threads


def test_memoized_signals_are_held_in_shapes_the_garbage_collector_does_not_walk() -> None:
    # Thousands are memoized: Counters and frozensets there were walked by every young collection
    # (the decision's p99). Plain dicts of str → int are never tracked; tuples of str are
    # untracked at their first collection.
    held = text_signals("Does the Eiffel Tower weigh 10,100 tonnes? I can't say x >= 2 " * 40)
    gc.collect(0)
    for part in (held.words, held.symbols, held.numbers, held.trigrams, held.tokens, held.names):
        assert part
        assert not gc.is_tracked(part), type(part)
