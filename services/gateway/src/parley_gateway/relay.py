"""What a client is sent of a worker's answer, so that it ends with the answer that is stored.

A worker numbers a request's chunks 0, 1, 2, ... and ends with a final chunk that carries the
whole answer (`full_text`), the text that is stored. A request whose worker died is redelivered
to another worker, which generates it again from chunk 0: with the same tokens (greedy or
seeded sampling) or, at temperature > 0, with others. `AnswerRelay` turns the chunks into the
events a client sees::

    relay = AnswerRelay()
    relay.add(chunk)        # -> [TextChunk("Hel")]
    ...                     # a redelivery starts over at chunk 0, differently:
    relay.add(chunk)        # -> [Reset(), TextChunk("Good")]
    relay.finish(final)     # -> ("Good day", [TextChunk(" day")])

A generation that starts over with the text the client already has is followed silently until
it goes beyond it; one that differs makes a `Reset` (the text sent so far is void; what follows
starts the answer over). At the end the stored answer is what counts: when the text sent differs
from it (a chunk lost, two workers' chunks interleaved), a `Reset` and the whole answer follow.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.v1 import envelopes_pb2

__all__ = ["RESET_MESSAGE", "AnswerRelay", "Reset", "TextChunk", "TextEvent"]

RESET_MESSAGE = (
    "the answer is being generated again (its worker stopped): discard the text received so far"
)


@dataclass(frozen=True, slots=True)
class TextChunk:
    """More text of the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The text sent so far is void: the answer starts over with the chunks that follow."""


TextEvent = TextChunk | Reset


class AnswerRelay:
    """One request's chunks in, the events for its client out (pure: no I/O)."""

    __slots__ = ("_current", "_next_seq", "_sent", "_sent_text")

    def __init__(self) -> None:
        self._sent: list[str] = []  # what the client has; also the followed generation's text
        self._next_seq = 0
        # While a redelivered generation repeats what the client has: its text, and the client's.
        self._current: list[str] | None = None
        self._sent_text = ""

    def add(self, chunk: envelopes_pb2.CompletionChunk) -> list[TextEvent]:
        """A text chunk (not the final one)."""
        if chunk.seq == 0 and self._next_seq > 0:
            # Another worker generates the request again, from the start.
            self._current = []
            self._sent_text = "".join(self._sent)
        elif chunk.seq < self._next_seq:
            return []  # sent twice (a producer's retry)
        self._next_seq = chunk.seq + 1
        if not chunk.text:
            return []
        if self._current is None:
            self._sent.append(chunk.text)
            return [TextChunk(chunk.text)]
        self._current.append(chunk.text)
        current = "".join(self._current)
        if self._sent_text.startswith(current):
            return []  # the same text again: the client has it
        self._current = None
        return self._replace(self._sent_text, current)

    def finish(self, chunk: envelopes_pb2.CompletionChunk) -> tuple[str, list[TextEvent]]:
        """The final chunk: the whole answer, and what the client still needs to end with it."""
        sent = self._sent_text if self._current is not None else "".join(self._sent)
        if chunk.HasField("full_text"):
            answer = chunk.full_text
        else:  # a worker that does not send the whole answer: the followed generation's text
            answer = "".join(self._current) if self._current is not None else sent
        self._current = None
        if answer == sent:
            return answer, []
        return answer, self._replace(sent, answer)

    def _replace(self, sent: str, text: str) -> list[TextEvent]:
        self._sent = [text]
        if text.startswith(sent):
            return [TextChunk(text[len(sent) :])]
        return [Reset(), TextChunk(text)] if text else [Reset()]
