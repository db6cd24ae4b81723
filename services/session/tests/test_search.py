"""Search of a user's own chats on MongoDB's text indexes: titles and messages, ranked, with
highlight ranges, paged, filtered by bot and by time, and never another user's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest

from parley.v1 import session_pb2, types_pb2
from parley_common.timeutil import now_ms

if TYPE_CHECKING:
    from conftest import Service

pytestmark = pytest.mark.integration


async def search(
    service: Service, user_id: str, query: str, **fields: object
) -> session_pb2.SearchChatsResponse:
    return await service.stub.SearchChats(
        session_pb2.SearchChatsRequest(user_id=user_id, query=query, **fields), timeout=10
    )


async def test_search_ranks_highlights_pages_and_filters(service: Service) -> None:
    alice = await service.user("alice")
    bob = await service.user("bob")
    bot = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(
            user_id=alice,
            bot=session_pb2.BotProfile(name="Gardener", system_prompt="You garden."),
        ),
        timeout=10,
    )
    garden = await service.turn(alice, "How do I grow tomatoes on a balcony?", bot_id=bot.bot_id)
    await service.answer(garden, "Tomatoes grow well in large pots with daily sun.")
    before_second = now_ms()
    other = await service.turn(alice, "Write a poem about the sea")
    await service.answer(other, "The sea is wide; a tomato floats by.")
    await service.turn(bob, "Bob's secret tomatoes recipe")

    found = await search(service, alice, "tomatoes")
    chats = {h.chat_id for h in found.hits}
    assert chats == {garden.chat.chat_id, other.chat.chat_id}  # never bob's
    assert all("secret" not in h.snippet for h in found.hits)
    # the title ("How do I grow tomatoes…") and both messages of the garden chat, best first
    scores = [h.score for h in found.hits]
    assert scores == sorted(scores, reverse=True)
    titled = [h for h in found.hits if not h.message_id]
    assert titled
    assert titled[0].chat_title.startswith("How do I grow tomatoes")
    for hit in found.hits:
        assert hit.highlight_starts
        marked = [
            hit.snippet[a:b] for a, b in zip(hit.highlight_starts, hit.highlight_ends, strict=True)
        ]
        assert all(m.lower().startswith("tomat") for m in marked), marked
    answer = next(h for h in found.hits if h.role == types_pb2.ROLE_ASSISTANT)
    assert answer.chat_id in chats

    # paging: one at a time, the same hits in the same order, then no more
    seen = []
    offset = 0
    while True:
        page = await search(service, alice, "tomatoes", limit=1, offset=offset)
        seen.extend((h.chat_id, h.message_id) for h in page.hits)
        if not page.next_offset:
            break
        offset = page.next_offset
    assert seen == [(h.chat_id, h.message_id) for h in found.hits]

    by_bot = await search(service, alice, "tomatoes", bot_id=bot.bot_id)
    assert {h.chat_id for h in by_bot.hits} == {garden.chat.chat_id}
    recent = await search(service, alice, "tomato", since_unix_ms=before_second)
    assert {h.chat_id for h in recent.hits} == {other.chat.chat_id}
    assert (await search(service, bob, "poem")).hits == []


async def test_bad_queries_are_refused(service: Service) -> None:
    alice = await service.user("alice")
    for fields in (
        {"query": "  "},
        {"query": "x" * 201},
        {"query": "a", "limit": 51},
        {"query": "a", "since_unix_ms": 10, "until_unix_ms": 5},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.SearchChats(
                session_pb2.SearchChatsRequest(user_id=alice, **fields), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
