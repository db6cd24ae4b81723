"""The results consumer against a real Kafka: CompletionResult envelopes published by the test
itself, twice, out of order, with MongoDB away for a while."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from parley.v1 import envelopes_pb2, session_pb2, types_pb2
from parley_common.kafka import SCHEMA_VERSION
from parley_devstack.stack import LocalStack

if TYPE_CHECKING:
    from conftest import Service, ServiceFactory

pytestmark = pytest.mark.integration

Wait = Callable[..., Awaitable[Any]]


def result(
    turn: session_pb2.StartTurnResponse,
    text: str,
    finish: types_pb2.FinishReason.ValueType = types_pb2.FINISH_REASON_STOP,
) -> envelopes_pb2.CompletionResult:
    return envelopes_pb2.CompletionResult(
        schema_version=SCHEMA_VERSION,
        request_id=turn.user_message.request_id,
        chat_id=turn.chat.chat_id,
        user_id="someone",
        model="parley-tiny",
        kind=envelopes_pb2.COMPLETION_KIND_CHAT,
        text=text,
        finish_reason=finish,
        usage=types_pb2.Usage(prompt_tokens=10, completion_tokens=3),
        user_message_ordinal=turn.user_message.ordinal,
        worker_id="test",
    )


async def publish(service: Service, *results: envelopes_pb2.CompletionResult) -> None:
    assert service.producer is not None
    for r in results:
        await service.producer.send_and_wait(
            service.topics.results, r.SerializeToString(), key=r.chat_id.encode()
        )


async def contents(service: Service, user_id: str, chat_id: str) -> list[tuple[int, str, str]]:
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=user_id, chat_id=chat_id, include_messages=True)
    )
    return [(m.ordinal, m.content, m.request_id) for m in got.messages]


async def test_results_twice_and_out_of_order_are_stored_once_in_order(
    make_service: ServiceFactory, wait_for: Wait
) -> None:
    service = await make_service(kafka=True, previous_answer_wait_s=0)
    alice = await service.user("alice")
    t0 = await service.turn(alice, "q0")
    chat_id = t0.chat.chat_id
    t1 = await service.turn(alice, "q1", chat_id)
    t2 = await service.turn(alice, "q2", chat_id)
    t3 = await service.turn(alice, "q3", chat_id)
    assert service.producer is not None
    # Garbage on the topic is dead-lettered; it does not block what follows.
    await service.producer.send_and_wait(service.topics.results, b"\x00not protobuf", key=b"x")
    await publish(
        service,
        result(t2, "a2"),
        result(t0, "a0"),
        result(t2, "a2 again, from a redelivery"),
        result(t3, "", types_pb2.FINISH_REASON_EXPIRED),  # nothing generated: no message
        result(t1, "a1"),
        result(t0, "a0 again"),
    )
    expected = [(0, "q0"), (1, "a0"), (2, "q1"), (3, "a1"), (4, "q2"), (5, "a2"), (6, "q3")]

    async def stored() -> bool:
        return [(o, c) for o, c, _ in await contents(service, alice, chat_id)] == expected

    await wait_for(stored, what="three answers in place")
    # A marker published last has been applied: everything before it was seen, nothing more
    # was stored.
    t4 = await service.turn(alice, "q4", chat_id)
    await publish(service, result(t0, "a0 a third time"), result(t4, "a4"))

    async def marker() -> bool:
        return len(await contents(service, alice, chat_id)) == 9

    await wait_for(marker, what="the marker answer")
    final = await contents(service, alice, chat_id)
    assert [(o, c) for o, c, _ in final] == [*expected, (8, "q4"), (9, "a4")]
    assert len({(rid, o % 2) for o, _, rid in final}) == len(final)
    chat = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=alice, chat_id=chat_id))
    assert chat.chat.message_count == 9
    # The answer for a deleted chat leaves nothing behind.
    await service.stub.DeleteChat(session_pb2.DeleteChatRequest(user_id=alice, chat_id=chat_id))
    await publish(service, result(t1, "late answer after the delete"))
    other = await service.turn(alice, "another chat")
    await publish(service, result(other, "its answer"))

    async def other_answered() -> bool:
        return len(await contents(service, alice, other.chat.chat_id)) == 2

    await wait_for(other_answered, what="the other chat's answer")
    assert await service.store.db["messages"].count_documents({"chat_id": chat_id}) == 0


async def test_results_arriving_while_mongodb_is_down_are_stored_once_it_is_back(
    make_service: ServiceFactory, local_stack: LocalStack, wait_for: Wait
) -> None:
    service = await make_service(kafka=True, previous_answer_wait_s=0, mongodb_timeout_ms=500)
    bob = await service.user("bob")
    turns = [await service.turn(bob, "q0")]
    chat_id = turns[0].chat.chat_id
    turns += [await service.turn(bob, f"q{k}", chat_id) for k in (1, 2)]
    await asyncio.to_thread(local_stack.mongo.stop)
    try:
        await publish(service, *(result(t, f"a{k}") for k, t in enumerate(turns)))
        await asyncio.sleep(2)  # the consumer meets the outage and keeps retrying
    finally:
        await asyncio.to_thread(local_stack.mongo.start)

    async def stored() -> bool:
        try:
            return len(await contents(service, bob, chat_id)) == 6
        except grpc.aio.AioRpcError as exc:
            # Refused until the session's next ping finds MongoDB back: a client retries.
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return False

    await wait_for(stored, within=60, what="the answers published during the outage")
    final = await contents(service, bob, chat_id)
    assert [(o, c) for o, c, _ in final] == [
        (0, "q0"),
        (1, "a0"),
        (2, "q1"),
        (3, "a1"),
        (4, "q2"),
        (5, "a2"),
    ]


async def test_summaries_twice_or_late_never_replace_a_newer_one(
    make_service: ServiceFactory, wait_for: Wait
) -> None:
    service = await make_service(kafka=True, previous_answer_wait_s=0)
    carol = await service.user("carol")
    first = await service.turn(carol, "q0")
    chat_id = first.chat.chat_id

    def summary(through: int, text: str, request_id: str) -> envelopes_pb2.CompletionResult:
        return envelopes_pb2.CompletionResult(
            schema_version=SCHEMA_VERSION,
            request_id=request_id,
            chat_id=chat_id,
            kind=envelopes_pb2.COMPLETION_KIND_SUMMARY,
            text=text,
            finish_reason=types_pb2.FINISH_REASON_STOP,
            summary_through_ordinal=through,
        )

    await publish(
        service,
        summary(5, "up to 5", "summary-b"),
        summary(3, "up to 3, arriving late", "summary-a"),
        summary(5, "up to 5, redelivered", "summary-b"),
        summary(7, "", "summary-c"),  # an empty summary is a failure, not a summary
    )
    marker = await service.turn(carol, "marker", chat_id)
    await publish(service, result(marker, "marker answer"))

    async def applied() -> bool:
        return len(await contents(service, carol, chat_id)) == 3

    await wait_for(applied, what="everything published before the marker")
    got = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=carol, chat_id=chat_id))
    assert (got.chat.summary, got.chat.summary_through_ordinal) == ("up to 5", 5)
