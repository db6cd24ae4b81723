"""The retry policy's bounds, without I/O: an operation that keeps failing as an unreachable
MongoDB does is given up within the policy's total time or the caller's deadline, whichever is
first, and not tried at all while MongoDB is known to be away."""

from __future__ import annotations

import time

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from parley_session.retry import (
    DeadlineExceededError,
    RetryPolicy,
    StoreUnavailableError,
    deadline,
)


class Away:
    """An operation that fails like a connection refused, counting its attempts."""

    def __init__(self, *, then: str | None = None, failures: int = 1_000) -> None:
        self.attempts = 0
        self._then = then
        self._failures = failures

    async def __call__(self) -> str:
        self.attempts += 1
        if self.attempts <= self._failures:
            raise AutoReconnect("connection refused")
        assert self._then is not None
        return self._then


class Availability:
    def __init__(self, reachable: bool) -> None:
        self.reachable = reachable
        self.suspected = 0

    def suspect(self) -> None:
        self.suspected += 1


async def test_an_unreachable_mongodb_is_given_up_within_the_total_time() -> None:
    policy = RetryPolicy(attempts=1_000, total_s=0.6, first_backoff_s=0.05, max_backoff_s=0.1)
    away = Away()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="MongoDB unavailable"):
        await policy.run(away, "find")
    took = time.monotonic() - started
    assert 0.4 < took < 0.8
    assert away.attempts > 3  # retried meanwhile, with pauses that fit the total


async def test_a_transient_failure_is_retried_and_reported_as_suspect() -> None:
    availability = Availability(reachable=True)
    policy = RetryPolicy(first_backoff_s=0.01, availability=availability)
    flaky = Away(then="found", failures=2)
    assert await policy.run(flaky, "find") == "found"
    assert flaky.attempts == 3
    assert availability.suspected == 2


async def test_the_callers_deadline_comes_first() -> None:
    policy = RetryPolicy(attempts=1_000, total_s=10, first_backoff_s=0.05, max_backoff_s=0.1)
    started = time.monotonic()
    with deadline(0.5), pytest.raises((DeadlineExceededError, StoreUnavailableError)):
        await policy.run(Away(), "find")
    assert time.monotonic() - started < 0.6


async def test_nothing_is_tried_while_mongodb_is_known_to_be_away() -> None:
    availability = Availability(reachable=False)
    away = Away()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="MongoDB is unreachable"):
        await RetryPolicy(availability=availability).run(away, "find")
    assert away.attempts == 0
    assert time.monotonic() - started < 0.05
    availability.reachable = True
    assert await RetryPolicy(availability=availability).run(Away(then="ok", failures=0)) == "ok"


async def test_what_is_not_transient_is_raised_at_once() -> None:
    attempts = 0

    async def refused() -> None:
        nonlocal attempts
        attempts += 1
        raise OperationFailure("not authorized", code=13)

    with pytest.raises(OperationFailure):
        await RetryPolicy().run(refused, "find")
    assert attempts == 1
