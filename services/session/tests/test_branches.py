"""Branches: edits and regenerations as siblings, the active path, deleting a branch, and the
tree kept whole when many of them race on one chat (real MongoDB)."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from parley.v1 import session_pb2, types_pb2
from parley_common.ids import new_id

if TYPE_CHECKING:
    from conftest import Service

pytestmark = pytest.mark.integration


async def answer_slot(
    service: Service, turn: session_pb2.StartTurnResponse, text: str, request_id: str = ""
) -> bool:
    """Store the answer of a turn as the results consumer would: after the turn's
    `answer_slot`, under the request id it was started with (a regeneration's own)."""
    return await service.store.chats.append_answer(
        chat_id=turn.chat.chat_id,
        question_ordinal=turn.answer_slot,
        content=text,
        token_count=service.tokens.count(text),
        request_id=request_id or turn.user_message.request_id,
        finish_reason="stop",
    )


async def regenerate(
    service: Service, user_id: str, chat_id: str, message_id: str, request_id: str
) -> session_pb2.StartTurnResponse:
    return await service.turn(
        user_id, "", chat_id, regenerate_message_id=message_id, request_id=request_id
    )


async def path(service: Service, user_id: str, chat_id: str) -> list[session_pb2.Message]:
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=user_id, chat_id=chat_id, include_messages=True),
        timeout=10,
    )
    return list(got.messages)


async def check_tree(service: Service, chat_id: str) -> None:
    """Every parent exists in the chat, ordinals grow along every edge, answers follow
    questions, and the active path runs from a first question to the active leaf."""
    docs = {d["_id"]: d async for d in service.store.db["messages"].find({"chat_id": chat_id})}
    chat = await service.store.db["chats"].find_one({"_id": chat_id})
    assert chat is not None
    for doc in docs.values():
        parent_id = doc.get("parent_id")
        if parent_id is None:
            assert doc["role"] in ("user", "gap"), doc
            continue
        assert parent_id in docs, f"orphan {doc['_id']}: parent {parent_id} missing"
        parent = docs[parent_id]
        assert parent["ordinal"] < doc["ordinal"]
        if doc["role"] == "assistant":
            assert parent["role"] == "user"
    seen = set()
    node = docs[chat["active_leaf"]]
    while node.get("parent_id") is not None:
        assert node["_id"] not in seen  # no cycle
        seen.add(node["_id"])
        node = docs[node["parent_id"]]
    assert node["role"] == "user"


async def test_edit_regenerate_select_and_delete(service: Service) -> None:
    user = await service.user()
    first = await service.turn(user, "My name is Ada.")
    chat_id = first.chat.chat_id
    await service.answer(first, "Hello Ada.")
    second = await service.turn(user, "What is my name?", chat_id)
    await service.answer(second, "Ada.")
    old = await path(service, user, chat_id)
    assert [m.content for m in old] == ["My name is Ada.", "Hello Ada.", "What is my name?", "Ada."]
    assert old[1].parent_id == old[0].message_id
    assert old[2].parent_id == old[1].message_id

    # regenerate the last answer: a sibling, and the context ends at its question
    rid = new_id()
    again = await regenerate(service, user, chat_id, old[3].message_id, rid)
    assert again.user_message.message_id == old[2].message_id
    assert again.answer_slot > old[3].ordinal
    assert [m.content for m in again.context.messages][-1] == "What is my name?"
    assert await answer_slot(service, again, "Your name is Ada.", rid)
    now = await path(service, user, chat_id)
    assert [m.content for m in now][-1] == "Your name is Ada."
    assert (now[-1].sibling_count, now[-1].sibling_index) == (2, 1)
    siblings = await service.stub.ListSiblings(
        session_pb2.ListSiblingsRequest(
            user_id=user, chat_id=chat_id, message_id=now[-1].message_id
        ),
        timeout=10,
    )
    assert [m.content for m in siblings.siblings] == ["Ada.", "Your name is Ada."]
    assert siblings.active_message_id == now[-1].message_id

    # a retried regeneration is the same one
    retried = await regenerate(service, user, chat_id, old[3].message_id, rid)
    assert retried.replayed
    assert retried.existing_answer.content == "Your name is Ada."

    # edit the first question: a new branch from the start, the context follows it
    edit = await service.turn(user, "My name is Bob.", chat_id, edit_message_id=old[0].message_id)
    assert [m.content for m in edit.context.messages if m.role == types_pb2.ROLE_USER] == [
        "My name is Bob."
    ]
    await service.answer(edit, "Hello Bob.")
    follow = await service.turn(user, "And my name?", chat_id)
    users = [m.content for m in follow.context.messages if m.role == types_pb2.ROLE_USER]
    assert users == ["My name is Bob.", "And my name?"]
    await service.answer(follow, "Bob.")

    # back to the first branch: its newest leaf
    chosen = await service.stub.SelectBranch(
        session_pb2.SelectBranchRequest(
            user_id=user, chat_id=chat_id, message_id=old[0].message_id
        ),
        timeout=10,
    )
    assert [m.content for m in chosen.messages][-1] == "Your name is Ada."
    preview = await service.stub.BuildContext(
        session_pb2.BuildContextRequest(user_id=user, chat_id=chat_id, content="Again?"), timeout=10
    )
    assert "Bob" not in " ".join(m.content for m in preview.messages)

    # delete the Bob branch: its messages go, the active path stays
    remaining = await service.stub.DeleteBranch(
        session_pb2.DeleteBranchRequest(
            user_id=user, chat_id=chat_id, message_id=edit.user_message.message_id
        ),
        timeout=10,
    )
    assert [m.content for m in remaining.messages][-1] == "Your name is Ada."
    contents = [d["content"] async for d in service.store.db["messages"].find({"chat_id": chat_id})]
    assert not [c for c in contents if "Bob" in c]
    await check_tree(service, chat_id)


async def test_bad_and_foreign_ids(service: Service) -> None:
    owner = await service.user("owner")
    other = await service.user("other")
    first = await service.turn(owner, "Hi")
    await service.answer(first, "Hello")
    chat_id = first.chat.chat_id
    elsewhere = await service.turn(owner, "Another chat")
    messages = await path(service, owner, chat_id)

    async def code_of(call: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value.code()

    # another user's chat: NOT_FOUND, whatever the message
    assert (
        await code_of(regenerate(service, other, chat_id, messages[1].message_id, new_id()))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(service.turn(other, "x", chat_id, edit_message_id=messages[0].message_id))
        == grpc.StatusCode.NOT_FOUND
    )
    select = session_pb2.SelectBranchRequest(
        user_id=other, chat_id=chat_id, message_id=messages[0].message_id
    )
    assert await code_of(service.stub.SelectBranch(select, timeout=10)) == grpc.StatusCode.NOT_FOUND
    # a message of another chat, or of the wrong role: INVALID_ARGUMENT / NOT_FOUND
    foreign = elsewhere.user_message.message_id
    assert (
        await code_of(service.turn(owner, "x", chat_id, edit_message_id=foreign))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        await code_of(regenerate(service, owner, chat_id, messages[0].message_id, new_id()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    select = session_pb2.SelectBranchRequest(user_id=owner, chat_id=chat_id, message_id=foreign)
    assert await code_of(service.stub.SelectBranch(select, timeout=10)) == grpc.StatusCode.NOT_FOUND
    delete = session_pb2.DeleteBranchRequest(
        user_id=owner, chat_id=chat_id, message_id=messages[0].message_id
    )
    assert (
        await code_of(service.stub.DeleteBranch(delete, timeout=10))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_concurrent_edits_keep_the_tree_whole(service: Service) -> None:
    user = await service.user()
    first = await service.turn(user, "Question 0")
    chat_id = first.chat.chat_id
    await service.answer(first, "Answer 0")
    for k in range(1, 4):
        turn = await service.turn(user, f"Question {k}", chat_id)
        await service.answer(turn, f"Answer {k}")
    messages = await path(service, user, chat_id)
    questions = [m.message_id for m in messages if m.role == types_pb2.ROLE_USER]
    answers = [m.message_id for m in messages if m.role == types_pb2.ROLE_ASSISTANT]
    rng = random.Random(16)

    async def one(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.05)
        kind = i % 4
        try:
            if kind == 0:
                turn = await service.turn(
                    user, f"edit {i}", chat_id, edit_message_id=rng.choice(questions)
                )
                assert await answer_slot(service, turn, f"edited answer {i}")
            elif kind == 1:
                rid = new_id()
                turn = await regenerate(service, user, chat_id, rng.choice(answers), rid)
                assert await answer_slot(service, turn, f"regenerated {i}", rid)
            elif kind == 2:
                turn = await service.turn(user, f"next {i}", chat_id)
                await asyncio.sleep(rng.random() * 0.05)  # answers arrive late, out of order
                assert await answer_slot(service, turn, f"next answer {i}")
            else:
                await service.stub.SelectBranch(
                    session_pb2.SelectBranchRequest(
                        user_id=user, chat_id=chat_id, message_id=rng.choice(questions + answers)
                    ),
                    timeout=20,
                )
        except grpc.aio.AioRpcError as exc:
            refused.append(exc.code())

    refused: list[grpc.StatusCode] = []
    await asyncio.gather(*(one(i) for i in range(24)))
    assert refused == []
    await check_tree(service, chat_id)
    final = await path(service, user, chat_id)
    assert final
    assert final[0].parent_id == ""
    for before, after in itertools.pairwise(final):
        assert after.parent_id == before.message_id
    # nothing lost: 8 messages before, then 6 edits and 6 next turns of two, 6 regenerations
    stored = service.store.db["messages"].count_documents(
        {"chat_id": chat_id, "role": {"$ne": "gap"}}
    )
    assert await stored == 8 + 6 * 2 + 6 * 2 + 6


async def test_a_chat_stored_as_a_line_becomes_a_chain(service: Service) -> None:
    user = await service.user()
    chat_id = new_id()
    at = datetime.now(UTC)
    db = service.store.db
    await db["chats"].insert_one(
        {
            "_id": chat_id,
            "user_id": user,
            "title": "old",
            "bot_id": "",
            "created_at": at,
            "updated_at": at,
            "message_count": 4,
            "next_ordinal": 4,
        }
    )
    for ordinal, (role, content) in enumerate(
        [("user", "Old question"), ("assistant", "Old answer")] * 2
    ):
        await db["messages"].insert_one(
            {
                "_id": new_id(),
                "chat_id": chat_id,
                "ordinal": ordinal,
                "role": role,
                "content": f"{content} {ordinal // 2}",
                "token_count": 3,
                "request_id": f"r{ordinal // 2}",
                "created_at": at,
                "finish_reason": "stop" if role == "assistant" else "",
            }
        )
    assert await service.store.branches.migrate_linear_chats() == 1
    assert await service.store.branches.migrate_linear_chats() == 0  # once
    await check_tree(service, chat_id)
    messages = await path(service, user, chat_id)
    assert [m.content for m in messages] == [
        "Old question 0",
        "Old answer 0",
        "Old question 1",
        "Old answer 1",
    ]
    turn = await service.turn(user, "New question", chat_id)
    assert [m.content for m in turn.context.messages][1:] == [
        *(m.content for m in messages),
        "New question",
    ]
    assert turn.user_message.parent_id == messages[-1].message_id
