from __future__ import annotations

from parley_worker.streaming import ChunkBatcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_delta_goes_out_at_once_then_by_interval() -> None:
    clock = Clock()
    b = ChunkBatcher(interval_s=0.02, max_chars=1000, clock=clock)
    assert b.add("a") == (0, "a")
    clock.now += 0.005
    assert b.add("b") is None
    clock.now += 0.005
    assert b.add("c") is None
    clock.now += 0.011
    assert b.add("d") == (1, "bcd")
    assert b.flush() is None
    clock.now += 0.001
    assert b.add("e") is None
    assert b.flush() == (2, "e")
    assert b.next_seq == 3


def test_size_bound_flushes_before_the_interval() -> None:
    clock = Clock()
    b = ChunkBatcher(interval_s=10, max_chars=5, clock=clock)
    assert b.add("x") == (0, "x")
    assert b.add("12") is None
    assert b.add("345") == (1, "12345")


def test_2000_tokens_a_second_make_about_50_messages_a_second() -> None:
    clock = Clock()
    b = ChunkBatcher(interval_s=0.02, max_chars=256, clock=clock)
    sent = []
    for _ in range(2000):  # one second of " tok" at 2,000 tokens/s
        if chunk := b.add(" tok"):
            sent.append(chunk)
        clock.now += 0.0005
    if tail := b.flush():
        sent.append(tail)
    assert [seq for seq, _ in sent] == list(range(len(sent)))
    assert "".join(text for _, text in sent) == " tok" * 2000
    assert 45 <= len(sent) <= 55
