"""The one exponential backoff: pauses that double from `first_s` up to `max_s`.

backoff = Backoff()
while True:
    try:
        return await send()
    except KafkaError:
        await backoff.sleep()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    first_s: float = 0.2
    max_s: float = 5.0
    _next_s: float = field(init=False)

    def __post_init__(self) -> None:
        self._next_s = self.first_s

    def next_s(self) -> float:
        """The next pause, and the one after it doubled (up to `max_s`)."""
        pause = self._next_s
        self._next_s = min(pause * 2, self.max_s)
        return pause

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_s())
