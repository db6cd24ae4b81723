"""Which offsets may be committed when requests of one partition finish out of order."""

from __future__ import annotations

from aiokafka import TopicPartition

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Commit an offset only when every request before it has finished (at-least-once).

    >>> t = OffsetTracker(); tp = TopicPartition("t", 0)
    >>> t.started(tp, 5); t.started(tp, 6); t.finished(tp, 6); t.committable()
    {}
    >>> t.finished(tp, 5); t.committable()
    {TopicPartition(topic='t', partition=0): 7}
    """

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._highest_done: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._in_flight.setdefault(tp, set()).add(offset)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        self._in_flight.get(tp, set()).discard(offset)
        self._highest_done[tp] = max(offset, self._highest_done.get(tp, -1))

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets to commit now (the next offset to read, per partition), not yet committed."""
        out: dict[TopicPartition, int] = {}
        for tp, done in self._highest_done.items():
            pending = self._in_flight.get(tp)
            next_offset = min(pending) if pending else done + 1
            if next_offset > self._committed.get(tp, -1):
                out[tp] = next_offset
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken away by a rebalance: their new owner redoes what was not committed."""
        for tp in partitions:
            self._in_flight.pop(tp, None)
            self._highest_done.pop(tp, None)
            self._committed.pop(tp, None)

    def in_flight(self, tp: TopicPartition) -> int:
        return len(self._in_flight.get(tp, ()))
