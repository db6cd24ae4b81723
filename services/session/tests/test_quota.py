"""The sliding-window rate limit (no I/O): what is admitted, and how long a refusal should wait."""

from __future__ import annotations

import pytest

from parley_session.quotas import quota_decision


def _decide(
    previous: tuple[int, int],
    current: tuple[int, int],
    elapsed: float,
    rpm: int = 10,
    tpm: int = 1000,
) -> tuple[bool, str, float, int, int]:
    d = quota_decision(
        previous=previous,
        current=current,
        elapsed=elapsed,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
    )
    return d.allowed, d.exceeded, d.retry_after_s, d.requests_remaining, d.tokens_remaining


def test_within_the_limits() -> None:
    assert _decide((0, 0), (1, 0), 0.2) == (True, "", 0.0, 9, 1000)
    assert _decide((0, 0), (10, 999), 0.9) == (True, "", 0.0, 0, 1)


def test_no_limits_admit_everything() -> None:
    assert _decide((10**6, 10**9), (10**6, 10**9), 0.0, rpm=0, tpm=0)[0]


def test_the_previous_minute_counts_for_what_is_left_of_it() -> None:
    # 10 requests in the previous minute, half of it still inside the last 60 s: 5 + 5 = 10.
    assert _decide((10, 0), (5, 0), 0.5)[:2] == (True, "")
    allowed, exceeded, wait, remaining, _ = _decide((10, 0), (6, 0), 0.5)
    assert (allowed, exceeded, remaining) == (False, "requests", 0)
    # 5 of the previous minute's weight must go: a tenth of a minute.
    assert wait == pytest.approx(6.0)


def test_a_full_current_minute_waits_into_the_next() -> None:
    allowed, exceeded, wait, _, _ = _decide((0, 0), (11, 0), 0.75)
    assert (allowed, exceeded) == (False, "requests")
    # 15 s to the end of this minute, then 10 of these 10 requests must have faded: 1/10 more.
    assert wait == pytest.approx(15 + 6)


def test_at_the_boundary_a_burst_is_still_held() -> None:
    # Right after the minute turned, the previous minute's ten requests still count fully.
    allowed, exceeded, wait, _, _ = _decide((10, 0), (1, 0), 0.001)
    assert (allowed, exceeded) == (False, "requests")
    assert 5 < wait < 7


def test_tokens_are_refused_once_spent() -> None:
    allowed, exceeded, wait, remaining, tokens_left = _decide((0, 0), (3, 1000), 0.5)
    assert (allowed, exceeded, remaining, tokens_left) == (False, "tokens", 7, 0)
    assert wait == pytest.approx(30 + 60 * (1 - 999 / 1000))
    assert _decide((0, 2000), (1, 0), 0.75)[:2] == (True, "")  # 2000 * 0.25 = 500 left
