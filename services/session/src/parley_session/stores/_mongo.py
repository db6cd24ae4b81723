"""What every store of the session service shares: document times, the one retry style (the
`retried` decorator) and the insert that an earlier attempt may already have made."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from parley_session.retry import RetryPolicy

__all__ = ["Doc", "from_ms", "insert_new", "key_pattern", "ms", "now", "retried"]

Doc = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")


class _Retrying(Protocol):
    @property
    def retry(self) -> RetryPolicy: ...


S = TypeVar("S", bound=_Retrying)


def now() -> datetime:
    """Now, to the millisecond: what MongoDB stores, so that a stored time compares equal."""
    at = datetime.now(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def key_pattern(exc: DuplicateKeyError) -> Any:
    return (exc.details or {}).get("keyPattern")


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def retried(
    method: Callable[Concatenate[S, P], Awaitable[T]],
) -> Callable[Concatenate[S, P], Awaitable[T]]:
    """Run a store method under its store's retry policy: the method must be safe to run again,
    so ids and times are chosen by its caller, before the first attempt."""

    async def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.retry.run(lambda: method(self, *args, **kwargs), method.__name__)

    return functools.update_wrapper(wrapper, method)


async def insert_new(collection: AsyncCollection[Doc], doc: Doc) -> None:
    """Insert a document whose _id is fresh. A duplicate _id can only be an earlier attempt of
    this same insert that landed before its reply was lost: that is success."""
    try:
        await collection.insert_one(doc)
    except DuplicateKeyError as exc:
        if key_pattern(exc) != {"_id": 1}:
            raise
