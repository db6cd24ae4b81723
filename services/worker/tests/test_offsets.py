from __future__ import annotations

from aiokafka import TopicPartition

from parley_worker.offsets import (
    ATTEMPTS_METADATA_MAX_CHARS,
    OffsetTracker,
    decode_attempts,
    encode_attempts,
)

TP = TopicPartition("requests", 0)
OTHER = TopicPartition("requests", 1)


def test_commit_waits_for_the_lowest_open_offset() -> None:
    t = OffsetTracker()
    for offset in (10, 11, 12):
        t.fetched(TP, offset)
        t.started(TP, offset)
    t.finished(TP, 11)
    t.finished(TP, 12)
    assert t.commits()[TP][0] == 10
    t.finished(TP, 10)
    assert t.commits() == {TP: (13, "")}


def test_commits_only_what_changed_and_only_asked_partitions() -> None:
    t = OffsetTracker()
    t.fetched(TP, 0)
    t.started(TP, 0)
    t.finished(TP, 0)
    t.fetched(OTHER, 5)
    t.started(OTHER, 5)
    assert set(t.commits({TP})) == {TP}
    commits = t.commits()
    t.committed(commits)
    assert t.commits() == {}
    t.fetched(TP, 1)
    t.started(TP, 1)
    assert t.commits() == {TP: (1, "attempts.v1 1 0=1")}


def test_metadata_counts_running_attempts_and_hand_back_uncounts_them() -> None:
    t = OffsetTracker()
    t.load(TP, 100, "attempts.v1 100 0=2,1=1")
    assert t.prior_attempts(TP, 100) == 2
    assert t.prior_attempts(TP, 101) == 1
    assert t.prior_attempts(TP, 102) == 0
    t.fetched(TP, 100)
    assert t.started(TP, 100) == 3
    # 101 is not fetched yet: its count must survive this commit.
    assert t.commits() == {TP: (100, "attempts.v1 100 0=3,1=1")}
    assert t.commits(hand_back=True) == {TP: (100, "attempts.v1 100 0=2,1=1")}


def test_finished_requests_drop_out_of_the_metadata() -> None:
    t = OffsetTracker()
    t.load(TP, 7, "attempts.v1 7 0=1,1=1")
    for offset in (7, 8):
        t.fetched(TP, offset)
        t.started(TP, offset)
    t.finished(TP, 8)
    assert t.commits() == {TP: (7, "attempts.v1 7 0=2")}
    t.finished(TP, 7)
    assert t.commits() == {TP: (9, "")}


def test_handled_covers_open_and_done_until_forgotten() -> None:
    t = OffsetTracker()
    t.fetched(TP, 3)
    t.fetched(TP, 4)
    t.started(TP, 3)
    t.finished(TP, 4)
    assert t.handled(TP, 3)
    assert t.handled(TP, 4)
    assert not t.handled(TP, 5)
    # Kept across a rebalance that gives the partition back ...
    t.load(TP, 3, "")
    assert t.handled(TP, 3)
    # ... and dropped when it is lost.
    t.forget({TP})
    assert not t.handled(TP, 3)
    assert t.commits() == {}


def test_a_waiting_request_holds_the_commit_point() -> None:
    t = OffsetTracker()
    t.fetched(TP, 20)  # fetched, waiting to run alone
    t.fetched(TP, 21)
    t.started(TP, 21)
    t.finished(TP, 21)
    assert t.commits()[TP][0] == 20


def test_attempts_codec_round_trip_and_foreign_metadata() -> None:
    attempts = {1000: 1, 1001: 3, 1500: 2}
    assert decode_attempts(encode_attempts(1000, attempts)) == attempts
    assert encode_attempts(1001, attempts) == "attempts.v1 1001 0=3,499=2"
    assert encode_attempts(5, {}) == ""
    for foreign in ("", "hello", "attempts.v1 x 0=1", "attempts.v1 1 a=b", "attempts.v2 1 0=1"):
        assert decode_attempts(foreign) == {}


def test_attempts_metadata_stays_under_kafkas_limit() -> None:
    many = {offset: 1 for offset in range(10_000_000, 10_002_000)}
    text = encode_attempts(10_000_000, many)
    assert len(text) <= ATTEMPTS_METADATA_MAX_CHARS
    kept = decode_attempts(text)
    # The lowest offsets are the ones that hold the partition back: they are kept.
    assert min(kept) == 10_000_000
    assert sorted(kept) == list(range(10_000_000, 10_000_000 + len(kept)))


def test_a_kept_partition_resumes_after_what_was_fetched_and_skips_what_was_committed() -> None:
    t = OffsetTracker()
    for offset in (0, 1):
        t.fetched(TP, offset)
        t.started(TP, offset)
    t.finished(TP, 0)
    t.committed(t.commits())
    assert t.resume_at(TP) == 2
    assert t.resume_at(OTHER) is None
    # The consumer's position went back to an older commit: nothing of it runs twice.
    assert t.handled(TP, 0)
    assert t.handled(TP, 1)
    assert not t.handled(TP, 2)
