"""How many MongoDB commands a chat turn costs the session service, counted by its own metrics.

A turn's hot path is StartTurn (a new chat or a next question: the question stored, the context
built) and, a moment later, its result applied from the results topic. Every command there is a
round trip to MongoDB and CPU on both sides, at every turn: these bounds (what the service does
today, down from 10, 11 and 7) catch a change that quietly adds one.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import pytest

from parley.v1 import envelopes_pb2, session_pb2, types_pb2
from parley_common.kafka import SCHEMA_VERSION

if TYPE_CHECKING:
    from conftest import Service

pytestmark = pytest.mark.integration

NEW_CHAT = 2  # insert the chat (its question counted), insert the question
NEXT_TURN = 3  # reserve the ordinal (and read the chat), insert the question, read the history
# insert the answer, count it in the chat, finish an async completion, add tokens to the rate
# limit's minute and to the budgets
RESULT = 5


def result_of(
    user_id: str, turn: session_pb2.StartTurnResponse, text: str
) -> envelopes_pb2.CompletionResult:
    return envelopes_pb2.CompletionResult(
        schema_version=SCHEMA_VERSION,
        request_id=turn.user_message.request_id,
        chat_id=turn.chat.chat_id,
        user_id=user_id,
        model="parley-tiny",
        kind=envelopes_pb2.COMPLETION_KIND_CHAT,
        text=text,
        finish_reason=types_pb2.FINISH_REASON_STOP,
        usage=types_pb2.Usage(prompt_tokens=12, completion_tokens=4),
        user_message_ordinal=turn.user_message.ordinal,
        user_message_id=turn.user_message.message_id,
        worker_id="test",
    )


class Commands:
    """The commands run between two readings of the service's metrics."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._before = service.commands()

    def since(self) -> Counter[str]:
        now = self._service.commands()
        ran, self._before = now - self._before, now
        return ran


async def test_commands_of_a_turn_and_of_its_result(service: Service) -> None:
    alice = await service.user("alice")
    commands = Commands(service)

    first = await service.turn(alice, "What is the capital of France?")
    new_chat = commands.since()
    await service.results(result_of(alice, first, "Paris."))
    applied = commands.since()
    second = await service.turn(alice, "And of Italy?", first.chat.chat_id)
    next_turn = commands.since()
    await service.results(result_of(alice, second, "Rome."))
    applied_again = commands.since()

    assert sum(new_chat.values()) <= NEW_CHAT, new_chat
    assert sum(next_turn.values()) <= NEXT_TURN, next_turn
    assert sum(applied.values()) <= RESULT, applied
    assert sum(applied_again.values()) <= RESULT, applied_again
    # And what they did is what the turns need.
    assert (first.user_message.ordinal, second.user_message.ordinal) == (0, 2)
    assert [m.content for m in second.context.messages][1:] == [
        "What is the capital of France?",
        "Paris.",
        "And of Italy?",
    ]
    assert second.chat.message_count == 3
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=alice, chat_id=first.chat.chat_id, include_messages=True)
    )
    assert [(m.ordinal, m.content) for m in got.messages] == [
        (0, "What is the capital of France?"),
        (1, "Paris."),
        (2, "And of Italy?"),
        (3, "Rome."),
    ]
    assert got.chat.message_count == 4


async def test_a_redelivered_result_costs_little_and_stores_nothing(service: Service) -> None:
    bob = await service.user("bob")
    turn = await service.turn(bob, "Is this stored once?")
    await service.results(result_of(bob, turn, "Yes."))
    commands = Commands(service)
    await service.results(result_of(bob, turn, "Yes, again."))
    redelivered = commands.since()
    # The answer's insert is refused by the unique index; the chat is left alone.
    assert redelivered["insert"] == 1
    assert "aggregate" not in redelivered
    assert sum(redelivered.values()) <= RESULT - 1, redelivered
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=bob, chat_id=turn.chat.chat_id, include_messages=True)
    )
    assert [m.content for m in got.messages] == ["Is this stored once?", "Yes."]
    assert got.chat.message_count == 2
