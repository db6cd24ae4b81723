"""Faults against the real servers: MongoDB stopped and restarted under the service (refused
quickly, health NOT_SERVING meanwhile), deadlines, and a graceful shutdown with calls in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.v1 import session_pb2
from parley_devstack.stack import LocalStack

if TYPE_CHECKING:
    from conftest import Service, ServiceFactory

Wait = Callable[..., Awaitable[Any]]
SERVICE = "parley.v1.SessionService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.integration


async def health_of(service: Service, name: str) -> int:
    assert service.channel is not None
    reply = await health_pb2_grpc.HealthStub(service.channel).Check(
        health_pb2.HealthCheckRequest(service=name), timeout=2
    )
    return int(reply.status)


async def test_mongodb_restarted_under_the_service(
    make_service: ServiceFactory, local_stack: LocalStack, wait_for: Wait
) -> None:
    service = await make_service()
    alice = await service.user("alice")
    chat_id = ""
    acknowledged: list[str] = []
    for k in range(3):
        turn = await service.turn(alice, f"question {k}", chat_id)
        chat_id = turn.chat.chat_id
        await service.answer(turn, f"answer {k}")
        acknowledged += [f"question {k}", f"answer {k}"]
    assert await health_of(service, SERVICE) == SERVING

    await asyncio.to_thread(local_stack.mongo.stop)
    try:
        # Whether or not the service has noticed yet, the refusal is quick and says why: one
        # operation's retries are bounded (store_retry_s, 2 s), well within the caller's 20 s.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await service.turn(alice, "while it is down", chat_id, request_id="during-outage")
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "MongoDB" in (down.value.details() or "")
        assert time.monotonic() - started < 3.5

        async def not_serving() -> bool:
            return await health_of(service, SERVICE) == NOT_SERVING

        await wait_for(not_serving, within=10, what="the health check to say NOT_SERVING")
        assert not service.availability.reachable
        # The process itself is fine: the server's overall status (liveness) stays SERVING.
        assert await health_of(service, "") == SERVING
        # Known to be away: refused at once, without waiting on MongoDB.
        for call in (
            service.turn(alice, "still down?", chat_id),
            service.stub.GetChat(
                session_pb2.GetChatRequest(user_id=alice, chat_id=chat_id), timeout=10
            ),
        ):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "MongoDB" in (refused.value.details() or "")
            assert time.monotonic() - started < 0.5
    finally:
        await asyncio.to_thread(local_stack.mongo.start)  # returns once it is primary again

    async def serving() -> bool:
        return await health_of(service, SERVICE) == SERVING

    await wait_for(serving, within=10, what="the health check to say SERVING again")
    # The client retries the refused turn with the same request id: stored once.
    for _ in range(2):
        retried = await service.turn(alice, "while it is down", chat_id, request_id="during-outage")
    assert retried.user_message.ordinal == 6
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=alice, chat_id=chat_id, include_messages=True)
    )
    assert [m.content for m in got.messages] == [*acknowledged, "while it is down"]
    assert got.chat.message_count == 7


async def test_the_wait_for_a_previous_answer_stays_within_the_deadline(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(previous_answer_wait_s=30)
    bob = await service.user("bob")
    first = await service.turn(bob, "first, never answered")
    started = time.monotonic()
    second = await service.turn(bob, "second", first.chat.chat_id, timeout=2)
    assert time.monotonic() - started < 2
    assert [m.content for m in second.context.messages][1:] == ["first, never answered", "second"]


async def test_graceful_shutdown_finishes_the_calls_in_flight(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(previous_answer_wait_s=1.5)
    carol = await service.user("carol")
    first = await service.turn(carol, "first, answer still to come")
    # This call waits for the previous answer (1.5 s): it is in flight when shutdown begins.
    in_flight = asyncio.create_task(service.turn(carol, "second", first.chat.chat_id))
    await asyncio.sleep(0.3)
    stopping = asyncio.create_task(service.server.stop(grace_s=5))
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.ListChats(session_pb2.ListChatsRequest(user_id=carol), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finished = await in_flight
    assert finished.user_message.content == "second"
    assert finished.user_message.ordinal == 2
    await stopping
    stored = await service.store.messages.chat_messages(first.chat.chat_id)
    assert [m.content for m in stored] == ["first, answer still to come", "second"]
