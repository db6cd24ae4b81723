"""A user's export (every branch) and the deletion of their data; the admin's usage per bot
and per day, aggregated in MongoDB (real MongoDB)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from parley.v1 import session_pb2
from parley_common.ids import new_id

if TYPE_CHECKING:
    from conftest import Service

pytestmark = pytest.mark.integration


async def test_export_has_every_branch_and_deletion_leaves_nothing(service: Service) -> None:
    alice = await service.user("alice")
    bob = await service.user("bob")
    first = await service.turn(alice, "Hello there")
    await service.answer(first, "Hi")
    chat_id = first.chat.chat_id
    edit = await service.turn(
        alice, "Hello again", chat_id, edit_message_id=first.user_message.message_id
    )
    await service.answer(edit, "Hi again")
    kept = await service.turn(bob, "Bob's chat")

    exported = [
        c
        async for c in service.stub.ExportChats(
            session_pb2.ExportChatsRequest(user_id=alice), timeout=10
        )
    ]
    assert [c.chat.chat_id for c in exported] == [chat_id]
    contents = [m.content for m in exported[0].messages]
    assert contents == ["Hello there", "Hi", "Hello again", "Hi again"]
    by_id = {m.message_id: m for m in exported[0].messages}
    leaf = by_id[exported[0].active_leaf_id]
    assert leaf.content == "Hi again"
    assert by_id[leaf.parent_id].content == "Hello again"

    deleted = await service.stub.DeleteUserData(
        session_pb2.DeleteUserDataRequest(user_id=alice), timeout=10
    )
    assert deleted.chats_deleted == 1
    db = service.store.db
    assert await db["messages"].count_documents({"chat_id": chat_id}) == 0
    assert await db["chats"].count_documents({"user_id": alice}) == 0
    assert await db["messages"].count_documents({"chat_id": kept.chat.chat_id}) == 1  # bob's stays


async def test_usage_per_bot_and_day(service: Service) -> None:
    alice = await service.user("alice")
    bot = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(
            user_id=alice, bot=session_pb2.BotProfile(name="Poet", system_prompt="Rhyme.")
        ),
        timeout=10,
    )
    start = int(datetime.now(UTC).timestamp() * 1000) - 1000
    turns = []
    for i in range(3):
        turn = await service.turn(alice, f"Question {i}", bot_id=bot.bot_id)
        await service.store.chats.append_answer(
            chat_id=turn.chat.chat_id,
            question_ordinal=turn.user_message.ordinal,
            content="An answer",
            token_count=5,
            request_id=turn.user_message.request_id,
            finish_reason="stop",
            cache_entry_id=new_id() if i == 0 else "",
        )
        turns.append(turn)
    other = await service.turn(alice, "Elsewhere")
    await service.answer(other, "Sure")
    answers = [
        (
            await service.stub.GetChat(
                session_pb2.GetChatRequest(
                    user_id=alice, chat_id=t.chat.chat_id, include_messages=True
                ),
                timeout=10,
            )
        )
        .messages[1]
        .message_id
        for t in turns
    ]
    for answer_id, turn, rating in zip(
        answers,
        turns,
        [session_pb2.RATING_UP, session_pb2.RATING_UP, session_pb2.RATING_DOWN],
        strict=True,
    ):
        await service.stub.SubmitFeedback(
            session_pb2.SubmitFeedbackRequest(
                user_id=alice, chat_id=turn.chat.chat_id, message_id=answer_id, rating=rating
            ),
            timeout=10,
        )

    usage = await service.stub.GetUsage(
        session_pb2.GetUsageRequest(since_unix_ms=start), timeout=10
    )
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    rows = {r.bot_id: r for r in usage.rows if r.day == today}
    poet = rows[bot.bot_id]
    assert (poet.turns, poet.completion_tokens, poet.cache_hits) == (3, 15, 1)
    assert poet.prompt_tokens == sum(t.user_message.token_count for t in turns)
    assert poet.cache_hit_ratio == pytest.approx(1 / 3)
    assert (poet.thumbs_up, poet.thumbs_down) == (2, 1)
    assert rows[other.chat.bot_id].turns == 1
    only = await service.stub.GetUsage(
        session_pb2.GetUsageRequest(since_unix_ms=start, bot_id=bot.bot_id), timeout=10
    )
    assert {r.bot_id for r in only.rows} == {bot.bot_id}
