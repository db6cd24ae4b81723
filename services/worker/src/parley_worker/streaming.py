"""How streamed text is cut into Kafka messages: the first piece at once, then by time or size."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ChunkBatcher"]


class ChunkBatcher:
    """Collects text deltas into chunks, numbered 0, 1, 2, ...

    The first delta is sent at once (it is the time to first token the user sees); later ones
    are held until `interval_s` has passed since the previous chunk or `max_chars` are pending,
    so that a fast engine sends tens of messages a second per request, not one per token::

        batcher = ChunkBatcher(interval_s=0.02, max_chars=256)
        batcher.add("Hel")   # -> (0, "Hel")
        batcher.add("lo")    # -> None (held)
        batcher.flush()      # -> (1, "lo")
    """

    __slots__ = ("_clock", "_interval_s", "_last", "_max_chars", "_pending", "_size", "next_seq")

    def __init__(
        self,
        *,
        interval_s: float,
        max_chars: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._interval_s = interval_s
        self._max_chars = max_chars
        self._clock = clock
        self._pending: list[str] = []
        self._size = 0
        self._last: float | None = None
        self.next_seq = 0

    def add(self, text: str) -> tuple[int, str] | None:
        """Take a delta; return a chunk (seq, text) to send now, if one is due."""
        self._pending.append(text)
        self._size += len(text)
        now = self._clock()
        if (
            self._last is None
            or self._size >= self._max_chars
            or now - self._last >= self._interval_s
        ):
            self._last = now
            return self._take()
        return None

    def flush(self) -> tuple[int, str] | None:
        """The held text, if any, as a last chunk."""
        return self._take() if self._pending else None

    def _take(self) -> tuple[int, str]:
        chunk = (self.next_seq, "".join(self._pending))
        self.next_seq += 1
        self._pending.clear()
        self._size = 0
        return chunk
