from __future__ import annotations

import pytest

from parley_cache.freshness import asks_for_variety, is_time_sensitive
from parley_cache.tuning import FeedbackTuner
from parley_cache.verifier import Calibration


@pytest.mark.parametrize(
    "question",
    [
        "What's the weather today?",
        "Latest version of Python?",
        "Who won the game last night? score right now",
        "Quel temps fait-il aujourd'hui ?",
        "Was kostet Bitcoin jetzt?",
        "¿Qué pasó hoy en Madrid?",
        "What happened on 2026-12-03?",
        "Best phones of 2026",
    ],
)
def test_time_sensitive_questions_are_recognised(question: str) -> None:
    assert is_time_sensitive(question)


@pytest.mark.parametrize(
    "question", ["Why is the sky blue?", "How do I reverse a list?", "Explain 42 in binary"]
)
def test_timeless_questions_are_not(question: str) -> None:
    assert not is_time_sensitive(question)


def test_variety_is_asked_above_the_temperature() -> None:
    assert asks_for_variety(1.0, 0.7)
    assert not asks_for_variety(0.7, 0.7)
    assert not asks_for_variety(0.0, 0.7)


TABLE = Calibration(
    rows=(
        (0.6, 0.80, 0.9, 500),
        (0.7, 0.86, 0.7, 400),
        (0.8, 0.92, 0.5, 300),
        (0.9, 0.99, 0.2, 150),
    ),
    positives=400,
    pairs=1000,
)


async def test_rejected_hits_raise_their_scope_threshold_only() -> None:
    tuner = FeedbackTuner(TABLE)
    assert await tuner.threshold("user:a", 0.15) == 0.7
    for _ in range(10):
        tuner.served("user:a")
    for _ in range(6):
        tuner.rejected("user:a")
    assert await tuner.threshold("user:a", 0.15) > 0.7
    assert await tuner.threshold("user:b", 0.15) == 0.7
    tuner.rejected("")  # an entry gone before its rejection: no scope to count it in
    assert await tuner.threshold("user:b", 0.15) == 0.7


async def test_one_rejection_among_many_hits_changes_nothing() -> None:
    tuner = FeedbackTuner(TABLE)
    for _ in range(50):
        tuner.served("user:a")
    tuner.rejected("user:a")
    assert await tuner.threshold("user:a", 0.15) == 0.7


async def test_a_single_rejection_right_after_a_hit_only_evicts() -> None:
    tuner = FeedbackTuner(TABLE)
    tuner.served("user:a")
    tuner.rejected("user:a")
    assert await tuner.threshold("user:a", 0.15) == 0.7
