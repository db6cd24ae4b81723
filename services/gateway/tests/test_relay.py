"""What a client is sent of a worker's chunks: after a redelivery it still ends with the answer
that is stored (the final chunk's full_text), whatever the chunks of the two generations were."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from parley.v1 import envelopes_pb2, types_pb2
from parley_gateway.relay import AnswerRelay, Reset, TextChunk, TextEvent


def chunk(seq: int, text: str) -> envelopes_pb2.CompletionChunk:
    return envelopes_pb2.CompletionChunk(request_id="r", seq=seq, text=text)


def final(seq: int, full_text: str | None) -> envelopes_pb2.CompletionChunk:
    done = envelopes_pb2.CompletionChunk(
        request_id="r", seq=seq, done=True, finish_reason=types_pb2.FINISH_REASON_STOP
    )
    if full_text is not None:
        done.full_text = full_text
    return done


def generation(*texts: str) -> list[envelopes_pb2.CompletionChunk]:
    return [chunk(seq, text) for seq, text in enumerate(texts)]


def client_text(events: Sequence[TextEvent]) -> str:
    """What a client that honours `reset` shows: the text after the last reset."""
    text = ""
    for event in events:
        text = "" if isinstance(event, Reset) else text + event.text
    return text


def run(
    chunks: Sequence[envelopes_pb2.CompletionChunk], done: envelopes_pb2.CompletionChunk
) -> tuple[list[TextEvent], str]:
    relay = AnswerRelay()
    events: list[TextEvent] = []
    for c in chunks:
        events += relay.add(c)
    answer, tail = relay.finish(done)
    return events + tail, answer


def test_one_generation_is_relayed_as_it_comes() -> None:
    events, answer = run(generation("Hel", "lo", " there"), final(3, "Hello there"))

    assert events == [TextChunk("Hel"), TextChunk("lo"), TextChunk(" there")]
    assert answer == "Hello there"


def test_a_different_regeneration_resets_the_client_and_the_answer_is_the_stored_one() -> None:
    first = generation("The cat", " sat")  # its worker dies here
    second = generation("A dog", " ran", " away")

    events, answer = run([*first, *second], final(3, "A dog ran away"))

    assert events == [
        TextChunk("The cat"),
        TextChunk(" sat"),
        Reset(),
        TextChunk("A dog"),
        TextChunk(" ran"),
        TextChunk(" away"),
    ]
    assert answer == client_text(events) == "A dog ran away"


def test_the_same_regeneration_continues_seamlessly_even_cut_into_other_chunks() -> None:
    first = generation("Once ", "upon a", " ti")
    second = generation("Once upon", " a time", ", a king")

    events, answer = run([*first, *second], final(3, "Once upon a time, a king"))

    assert Reset() not in events
    assert events[3:] == [TextChunk("me"), TextChunk(", a king")]
    assert answer == client_text(events) == "Once upon a time, a king"


def test_a_regeneration_that_agrees_then_differs_resets_once_it_differs() -> None:
    first = generation("Yes, ", "it is ", "blue")
    second = generation("Yes, ", "it is ", "green", ".")

    relay = AnswerRelay()
    seen = [relay.add(c) for c in [*first, *second]]

    assert seen[3:5] == [[], []]  # still the text the client has
    assert seen[5] == [Reset(), TextChunk("Yes, it is green")]
    assert seen[6] == [TextChunk(".")]
    answer, tail = relay.finish(final(4, "Yes, it is green."))
    assert (answer, tail) == ("Yes, it is green.", [])


def test_a_shorter_regeneration_within_the_text_sent_resets_at_the_end() -> None:
    first = generation("Stop", " here and", " there")
    second = generation("Stop", " here")

    events, answer = run([*first, *second], final(2, "Stop here"))

    assert events[-2:] == [Reset(), TextChunk("Stop here")]
    assert answer == client_text(events) == "Stop here"


def test_the_stored_answer_wins_over_chunks_that_disagree_with_it() -> None:
    # Two live workers' chunks interleaved, or one lost: the final text decides.
    events, answer = run(generation("ab", "cd"), final(2, "abXY"))

    assert events[-2:] == [Reset(), TextChunk("abXY")]
    assert answer == client_text(events) == "abXY"


def test_a_lost_tail_is_completed_from_the_final_text() -> None:
    events, answer = run(generation("Good ", "mor"), final(3, "Good morning"))

    assert events[-1] == TextChunk("ning")
    assert Reset() not in events
    assert answer == "Good morning"


def test_an_empty_final_answer_after_text_resets_to_nothing() -> None:
    events, answer = run(generation("partial"), final(1, ""))

    assert events == [TextChunk("partial"), Reset()]
    assert answer == client_text(events) == ""


@pytest.mark.parametrize("duplicate", [1, 2])
def test_a_chunk_sent_twice_is_relayed_once(duplicate: int) -> None:
    chunks = generation("a", "b", "c")
    chunks.insert(duplicate + 1, chunk(duplicate, "bc"[duplicate - 1]))

    events, answer = run(chunks, final(3, "abc"))

    assert events == [TextChunk("a"), TextChunk("b"), TextChunk("c")]
    assert answer == "abc"


def test_without_full_text_the_followed_generation_is_the_answer() -> None:
    first = generation("old", " text")
    second = generation("new", " words")

    events, answer = run([*first, *second], final(2, None))

    assert answer == client_text(events) == "new words"


def test_a_regeneration_that_has_not_caught_up_by_the_end_without_full_text() -> None:
    first = generation("same ", "start and more")
    second = generation("same ")

    events, answer = run([*first, *second], final(1, None))

    assert answer == client_text(events) == "same "
    assert events[-2:] == [Reset(), TextChunk("same ")]
