"""Which offsets may be committed, and how many times each request has been tried.

Requests of one partition finish out of order; an offset is committed only once every request
before it has finished (at-least-once). The commit also carries, in the offset's metadata, the
number of times each request past the commit point has been started. That number survives a
crashed worker: the next owner of the partition reads it on assignment, so a request that kills
every worker that runs it is recognised and set aside instead of being retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition

__all__ = ["ATTEMPTS_METADATA_MAX_CHARS", "OffsetTracker", "decode_attempts", "encode_attempts"]

# Kafka refuses commits whose metadata is over offset.metadata.max.bytes (4096 by default).
ATTEMPTS_METADATA_MAX_CHARS = 3000
_PREFIX = "attempts.v1"

Commit = tuple[int, str]


def encode_attempts(base: int, attempts: dict[int, int]) -> str:
    """Attempt counts of offsets at or past `base`, compact, the lowest offsets kept if too many.

    >>> encode_attempts(100, {100: 1, 103: 2, 99: 5})
    'attempts.v1 100 0=1,3=2'
    """
    text = f"{_PREFIX} {base} "
    parts: list[str] = []
    size = len(text)
    for offset in sorted(o for o in attempts if o >= base and attempts[o] > 0):
        part = f"{offset - base}={attempts[offset]}"
        size += len(part) + 1
        if size > ATTEMPTS_METADATA_MAX_CHARS:
            break
        parts.append(part)
    return text + ",".join(parts) if parts else ""


def decode_attempts(metadata: str | None) -> dict[int, int]:
    """The counts written by `encode_attempts`; anything else (another tool's metadata) is {}.

    >>> decode_attempts('attempts.v1 100 0=1,3=2')
    {100: 1, 103: 2}
    """
    if not metadata:
        return {}
    fields = metadata.split(" ")
    if len(fields) != 3 or fields[0] != _PREFIX:
        return {}
    try:
        base = int(fields[1])
        out: dict[int, int] = {}
        for part in fields[2].split(","):
            delta, _, count = part.partition("=")
            out[base + int(delta)] = int(count)
    except ValueError:
        return {}
    return {offset: count for offset, count in out.items() if count > 0}


@dataclass
class _Partition:
    open: set[int] = field(default_factory=set)  # fetched, not finished: the commit barrier
    running: set[int] = field(default_factory=set)  # started here, not finished
    done: set[int] = field(default_factory=set)  # finished, not yet below the commit point
    attempts: dict[int, int] = field(default_factory=dict)
    committed: Commit | None = None
    fetched_upto: int = -1


class OffsetTracker:
    """Per partition: what is open, running and done, and the commits that follow from it.

    >>> t = OffsetTracker(); tp = TopicPartition("t", 0)
    >>> t.fetched(tp, 5); t.fetched(tp, 6); t.started(tp, 5), t.started(tp, 6)
    (1, 1)
    >>> t.finished(tp, 6); t.commits()
    {TopicPartition(topic='t', partition=0): (5, 'attempts.v1 5 0=1')}
    >>> t.finished(tp, 5); t.commits()
    {TopicPartition(topic='t', partition=0): (7, '')}
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _Partition] = {}

    def load(self, tp: TopicPartition, committed_offset: int, metadata: str | None) -> None:
        """A newly assigned partition, with what its previous owners committed.

        A partition that is still tracked (a rebalance gave it straight back) keeps its state:
        its requests are still running here.
        """
        if tp in self._partitions:
            return
        attempts = {o: n for o, n in decode_attempts(metadata).items() if o >= committed_offset}
        self._partitions[tp] = _Partition(attempts=attempts)

    def tracked(self) -> set[TopicPartition]:
        return set(self._partitions)

    def handled(self, tp: TopicPartition, offset: int) -> bool:
        """Open, done or committed here: fetched again after a rebalance gave the partition back."""
        part = self._partitions.get(tp)
        if part is None:
            return False
        below_commit = part.committed is not None and offset < part.committed[0]
        return below_commit or offset in part.open or offset in part.done

    def resume_at(self, tp: TopicPartition) -> int | None:
        """Where fetching goes on after a rebalance gave the partition back (None: not tracked)."""
        part = self._partitions.get(tp)
        return part.fetched_upto + 1 if part is not None and part.fetched_upto >= 0 else None

    def prior_attempts(self, tp: TopicPartition, offset: int) -> int:
        part = self._partitions.get(tp)
        return part.attempts.get(offset, 0) if part is not None else 0

    def fetched(self, tp: TopicPartition, offset: int) -> None:
        part = self._partitions.setdefault(tp, _Partition())
        part.open.add(offset)
        part.fetched_upto = max(part.fetched_upto, offset)

    def started(self, tp: TopicPartition, offset: int) -> int:
        """Counts a new attempt at the request; returns its number (1 for the first)."""
        part = self._partitions.setdefault(tp, _Partition())
        part.open.add(offset)
        part.running.add(offset)
        part.attempts[offset] = part.attempts.get(offset, 0) + 1
        return part.attempts[offset]

    def finished(self, tp: TopicPartition, offset: int) -> None:
        """The request is answered (or set aside): its offset may be passed."""
        part = self._partitions.get(tp)
        if part is None:
            return
        part.open.discard(offset)
        part.running.discard(offset)
        part.attempts.pop(offset, None)
        part.done.add(offset)

    def commits(
        self, partitions: set[TopicPartition] | None = None, *, hand_back: bool = False
    ) -> dict[TopicPartition, Commit]:
        """(next offset, metadata) per partition whose committed state would change.

        `hand_back`: the running requests are about to be abandoned (shutdown, rebalance), which
        is no failure of theirs, so their current attempt is not counted.
        """
        out: dict[TopicPartition, Commit] = {}
        for tp, part in self._partitions.items():
            if partitions is not None and tp not in partitions:
                continue
            if part.open:
                next_offset = min(part.open)
            elif part.done:
                next_offset = max(part.done) + 1
            else:
                continue
            attempts = dict(part.attempts)
            if hand_back:
                for offset in part.running:
                    attempts[offset] -= 1
            commit = (next_offset, encode_attempts(next_offset, attempts))
            if commit != part.committed:
                out[tp] = commit
        return out

    def committed(self, commits: dict[TopicPartition, Commit]) -> None:
        for tp, commit in commits.items():
            part = self._partitions.get(tp)
            if part is None:
                continue
            part.committed = commit
            next_offset = commit[0]
            part.done = {o for o in part.done if o >= next_offset}
            part.attempts = {o: n for o, n in part.attempts.items() if o >= next_offset}

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions taken away: their new owner redoes what was not committed."""
        for tp in partitions:
            self._partitions.pop(tp, None)

    def open_count(self, tp: TopicPartition) -> int:
        part = self._partitions.get(tp)
        return len(part.open) if part is not None else 0
