"""The one retry policy for MongoDB's transient failures, and the deadline it must respect.

Every store operation runs through `RetryPolicy.run`: a dropped connection, a restart or a
stepped-down primary is retried with exponential backoff; what is not transient is raised at
once. Each attempt is bounded (PyMongo's client-side operation timeout) by `attempt_timeout_s`,
the whole operation by `total_s` and, inside a `deadline(...)` block (a gRPC call), by the caller's
deadline: MongoDB down is reported as such (`StoreUnavailableError`) while the caller still
listens, and no work outlives its caller. While the service's `Availability` says MongoDB does
not answer its pings, an operation is refused without being tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TypeVar

import pymongo
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from parley_common.backoff import Backoff

__all__ = [
    "Availability",
    "DeadlineExceededError",
    "RetryPolicy",
    "StoreUnavailableError",
    "deadline",
    "is_transient",
    "remaining_s",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Server error codes that mean "not now, try again": shutdown, failover, elections, network.
_TRANSIENT_CODES = frozenset(
    {
        6,  # HostUnreachable
        7,  # HostNotFound
        89,  # NetworkTimeout
        91,  # ShutdownInProgress
        189,  # PrimarySteppedDown
        9001,  # SocketException
        10107,  # NotWritablePrimary
        11600,  # InterruptedAtShutdown
        11602,  # InterruptedDueToReplStateChange
        13435,  # NotPrimaryNoSecondaryOk
        13436,  # NotPrimaryOrSecondary
        134,  # ReadConcernMajorityNotAvailableYet
    }
)

_deadline: ContextVar[float | None] = ContextVar("parley_session_deadline", default=None)


class StoreUnavailableError(Exception):
    """MongoDB stayed unreachable through every attempt of the retry policy."""


class DeadlineExceededError(Exception):
    """The caller's deadline passed before the store answered."""


class Availability(Protocol):
    """What the retry policy asks of the service's MongoDB health check."""

    @property
    def reachable(self) -> bool: ...

    def suspect(self) -> None:
        """An operation just failed as if MongoDB were away: check now, not at the next tick."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionFailure):  # network errors, server selection, not primary
        return True
    if isinstance(exc, OperationFailure):
        return exc.code in _TRANSIENT_CODES or any(
            exc.has_error_label(label)
            for label in ("RetryableWriteError", "TransientTransactionError")
        )
    return False


def remaining_s() -> float | None:
    """Seconds left before the current call's deadline; None outside any deadline."""
    at = _deadline.get()
    return None if at is None else at - time.monotonic()


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Bound every store operation in this block (and this task) by `seconds` from now."""
    if seconds is None:
        yield
        return
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`total_s` bounds one operation, its attempts and pauses included. It is short (2 s) so
    that a caller hears "MongoDB unavailable" well within its own deadline and can say so (503)
    instead of holding its client: a dropped connection or a restart is retried within it, but a
    replica set's failover (an election: a few seconds to 10 s or more) usually is not, and the
    turns of those seconds are refused, to be retried by their clients, rather than held.
    """

    attempts: int = 4
    attempt_timeout_s: float = 2.0
    total_s: float = 2.0
    first_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    availability: Availability | None = None

    async def run(self, operation: Callable[[], Awaitable[T]], what: str = "") -> T:
        """Await `operation()`, again after a transient failure, at most `attempts` times."""
        if self.availability is not None and not self.availability.reachable:
            raise StoreUnavailableError(f"MongoDB is unreachable (it fails its pings): {what}")
        until = time.monotonic() + self.total_s
        backoff = Backoff(self.first_backoff_s, self.max_backoff_s)
        attempt = 1
        while True:
            left = remaining_s()
            if left is not None and left <= 0:
                raise DeadlineExceededError(f"deadline passed before {what}")
            budget = min(self.attempt_timeout_s, until - time.monotonic())
            if left is not None:
                budget = min(budget, left)
            if budget <= 0:
                # The last pause overslept the total (a busy machine): no attempt is left.
                raise StoreUnavailableError(f"MongoDB unavailable: no time left for {what}")
            try:
                # With a client-side timeout PyMongo also waits for a server at most this long
                # (not serverSelectionTimeoutMS): an unreachable MongoDB costs one budget.
                with pymongo.timeout(budget):
                    return await operation()
            except PyMongoError as exc:
                left = remaining_s()
                if left is not None and left <= 0:
                    raise DeadlineExceededError(f"deadline passed during {what}") from exc
                # An attempt out of its own budget, with the caller's time left, is retried.
                if not (is_transient(exc) or exc.timeout):
                    raise
                if self.availability is not None:
                    self.availability.suspect()
                # Jitter keeps the replicas of a service from retrying in lockstep.
                pause = backoff.next_s() * random.uniform(0.5, 1.0)
                if (
                    attempt >= self.attempts
                    or (left is not None and left <= pause)
                    or until - time.monotonic() <= pause
                ):
                    raise StoreUnavailableError(f"MongoDB unavailable: {exc}") from exc
                log.warning(
                    "transient MongoDB error, retrying",
                    extra={"operation": what, "attempt": attempt, "error": repr(exc)},
                )
                await asyncio.sleep(pause)
                attempt += 1
