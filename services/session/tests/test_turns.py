"""Turns through the SessionService over gRPC on a real MongoDB replica set: context policies with
exact token budgets, idempotency, concurrency, ownership and status codes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from parley.v1 import envelopes_pb2, session_pb2, types_pb2
from parley_common.ids import new_id
from parley_session.domain import ToolCall
from parley_session.results import ResultRecorder

if TYPE_CHECKING:
    from conftest import Service, ServiceFactory

pytestmark = pytest.mark.integration

ROLES = {
    types_pb2.ROLE_SYSTEM: "system",
    types_pb2.ROLE_USER: "user",
    types_pb2.ROLE_ASSISTANT: "assistant",
}


@pytest.fixture(scope="module")
def hf(tiny_model: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tiny_model))


def pairs(messages: Sequence[types_pb2.ChatMessage]) -> list[tuple[str, str]]:
    return [(ROLES[m.role], m.content) for m in messages]


def template_tokens(hf: PreTrainedTokenizerBase, messages: Sequence[tuple[str, str]]) -> int:
    ids = hf.apply_chat_template(
        [{"role": r, "content": c} for r, c in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return len(ids)


def field_violations(exc: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest details of an INVALID_ARGUMENT status."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, "no status details"
    status = status_pb2.Status.FromString(raw)
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        out.extend((v.field, v.description) for v in bad.field_violations)
    return out


async def history_of(service: Service, user_id: str, chat_id: str) -> list[session_pb2.Message]:
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=user_id, chat_id=chat_id, include_messages=True)
    )
    return list(got.messages)


async def test_truncate_keeps_the_newest_turns_that_fit_the_window_exactly(
    make_service: ServiceFactory, hf: PreTrainedTokenizerBase
) -> None:
    window, reply = 300, 40
    service = await make_service(context_window=window, default_max_tokens=reply)
    alice = await service.user("alice")
    chat_id = ""
    dropped_seen = False
    for k in range(12):
        turn = await service.turn(
            alice, f"Question {k}: tell me about the weather in town {k}.", chat_id
        )
        chat_id = turn.chat.chat_id
        sent = pairs(turn.context.messages)
        assert turn.context.policy == session_pb2.HISTORY_POLICY_TRUNCATE
        assert sent[0] == ("system", "You are a helpful AI assistant named Parley.")
        assert sent[-1] == ("user", f"Question {k}: tell me about the weather in town {k}.")
        assert turn.context.prompt_tokens == template_tokens(hf, sent)
        assert turn.context.prompt_tokens <= window - reply
        stored = [(ROLES[m.role], m.content) for m in await history_of(service, alice, chat_id)]
        kept = len(sent) - 1
        assert sent[1:] == stored[-kept:]  # the newest turns, verbatim and in order
        assert turn.context.dropped_messages == len(stored) - kept
        if turn.context.dropped_messages:
            dropped_seen = True
            # One more turn would not have fitted: the cut is exact, not cautious.
            older = [sent[0], *stored[-kept - 2 :]]
            assert template_tokens(hf, older) > window - reply
        await service.answer(turn, f"In town {k} it is mild, with clouds and a light wind.")
    assert dropped_seen


async def test_full_sends_every_turn_until_it_no_longer_fits(
    make_service: ServiceFactory, hf: PreTrainedTokenizerBase
) -> None:
    window, reply = 260, 30
    service = await make_service(context_window=window, default_max_tokens=reply)
    bob = await service.user("bob")
    full = session_pb2.HISTORY_POLICY_FULL
    chat_id = ""
    sent_before: list[tuple[str, str]] = [
        ("system", "You are a helpful AI assistant named Parley.")
    ]
    k = 0
    while True:
        question = f"Fact number {k} about bread?"
        if template_tokens(hf, [*sent_before, ("user", question)]) > window - reply:
            break
        turn = await service.turn(bob, question, chat_id, history_policy=full)
        chat_id = turn.chat.chat_id
        assert pairs(turn.context.messages) == [*sent_before, ("user", question)]
        assert turn.context.dropped_messages == 0
        assert turn.context.prompt_tokens == template_tokens(hf, pairs(turn.context.messages))
        answer = "Knead the dough for ten minutes and let it rise."
        await service.answer(turn, answer)
        sent_before += [("user", question), ("assistant", answer)]
        k += 1
    assert k > 2
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.turn(bob, question, chat_id, history_policy=full)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("history_policy: the whole chat is ")
    assert [f for f, _ in field_violations(refused.value)] == ["history_policy"]
    # The refused turn was not stored, nor counted, nor did it move the chat up the list;
    # truncate carries the same chat on, at the next ordinal.
    messages = await history_of(service, bob, chat_id)
    assert [m.content for m in messages] == [c for _, c in sent_before[1:]]
    chat = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=bob, chat_id=chat_id))
    assert chat.chat.message_count == 2 * k
    assert chat.chat.updated_unix_ms == messages[-1].created_unix_ms
    turn = await service.turn(bob, question, chat_id)
    assert turn.context.dropped_messages > 0
    assert turn.user_message.ordinal == 2 * k
    assert turn.chat.message_count == 2 * k + 1


async def test_a_message_too_large_for_the_window_is_refused_and_not_stored(
    make_service: ServiceFactory, hf: PreTrainedTokenizerBase
) -> None:
    window, reply = 200, 50
    service = await make_service(context_window=window, default_max_tokens=reply)
    carol = await service.user("carol")
    empty = template_tokens(
        hf, [("system", "You are a helpful AI assistant named Parley."), ("user", "")]
    )
    # Too long with the reply budget, short enough without most of it.
    big = next(
        text
        for n in range(1, 40)
        if window - reply - empty
        < service.tokens.count(text := "The reading room opens at nine in the morning. " * n)
        < window - empty - 10
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.turn(carol, big)
    count = service.tokens.count(big)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        f"content: message is {count} tokens; this model's window allows "
        f"{window - reply - empty} (a {window}-token window, {reply} of them kept for the reply)"
    )
    listed = await service.stub.ListChats(session_pb2.ListChatsRequest(user_id=carol))
    assert list(listed.chats) == []
    # A smaller reply budget makes room: the numbers in the message were the real limits.
    fits = await service.turn(carol, big, max_tokens=window - empty - count)
    assert fits.context.prompt_tokens == window - (window - empty - count)
    # In a chat that exists, the same: refused, nothing stored or counted.
    chat_id = fits.chat.chat_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.turn(carol, big, chat_id)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    chat = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=carol, chat_id=chat_id, include_messages=True)
    )
    assert [m.content for m in chat.messages] == [big]
    assert chat.chat.message_count == 1
    assert chat.chat.updated_unix_ms == fits.chat.updated_unix_ms
    nxt = await service.turn(carol, "short", chat_id)
    assert nxt.user_message.ordinal == 2


async def test_a_redelivered_turn_is_stored_once(service: Service) -> None:
    dave = await service.user("dave")
    first = await service.turn(dave, "Hello there", request_id="req-1")
    again = await service.turn(dave, "Hello there", request_id="req-1")
    assert again.chat.chat_id == first.chat.chat_id
    assert again.user_message.message_id == first.user_message.message_id
    assert not again.replayed
    await service.answer(first, "Hi! How can I help?")
    third = await service.turn(dave, "Hello there", request_id="req-1")
    assert third.replayed
    assert third.existing_answer.content == "Hi! How can I help?"
    # The result redelivered: no second answer.
    assert not await service.store.chats.append_answer(
        chat_id=first.chat.chat_id,
        question_ordinal=first.user_message.ordinal,
        content="Hi! How can I help?",
        token_count=5,
        request_id="req-1",
        finish_reason="stop",
    )
    messages = await history_of(service, dave, first.chat.chat_id)
    assert [(m.ordinal, m.content) for m in messages] == [
        (0, "Hello there"),
        (1, "Hi! How can I help?"),
    ]
    chats = await service.stub.ListChats(session_pb2.ListChatsRequest(user_id=dave))
    assert [c.message_count for c in chats.chats] == [2]


async def test_turns_submitted_at_once_each_get_their_own_place(service: Service) -> None:
    erin = await service.user("erin")
    first = await service.turn(erin, "Let us plan a trip.")
    chat_id = first.chat.chat_id
    await service.answer(first, "Gladly. Where to?")
    a, b = await asyncio.gather(
        service.turn(erin, "To the sea.", chat_id), service.turn(erin, "In May.", chat_id)
    )
    assert {a.user_message.ordinal, b.user_message.ordinal} == {2, 4}
    earlier, later = sorted((a, b), key=lambda t: t.user_message.ordinal)
    assert pairs(earlier.context.messages)[-1] == ("user", earlier.user_message.content)
    later_sent = pairs(later.context.messages)
    assert later_sent[-1] == ("user", later.user_message.content)
    # The later turn sees the earlier question (its answer is not there yet).
    assert ("user", earlier.user_message.content) in later_sent
    # Answers arrive in the other order; each lands right after its question.
    await service.answer(later, "Answer to the later one.")
    await service.answer(earlier, "Answer to the earlier one.")
    messages = await history_of(service, erin, chat_id)
    assert [m.content for m in messages] == [
        "Let us plan a trip.",
        "Gladly. Where to?",
        earlier.user_message.content,
        "Answer to the earlier one.",
        later.user_message.content,
        "Answer to the later one.",
    ]
    assert [m.ordinal for m in messages] == [0, 1, 2, 3, 4, 5]

    # Eight at once: eight distinct questions, none lost, the count right.
    many = await asyncio.gather(*(service.turn(erin, f"Idea {i}", chat_id) for i in range(8)))
    assert sorted(t.user_message.ordinal for t in many) == list(range(6, 22, 2))
    chat = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=erin, chat_id=chat_id))
    assert chat.chat.message_count == 6 + 8

    # The same new-chat request delivered twice at once: one chat, one message.
    rid = new_id()
    x, y = await asyncio.gather(
        service.turn(erin, "Twice at once", request_id=rid),
        service.turn(erin, "Twice at once", request_id=rid),
    )
    assert x.chat.chat_id == y.chat.chat_id
    assert x.user_message.message_id == y.user_message.message_id
    assert [m.content for m in await history_of(service, erin, x.chat.chat_id)] == ["Twice at once"]
    # The delivery that did not create the chat left no question behind in the chat it tried.
    messages = service.client[service.database]["messages"]
    assert await messages.count_documents({"request_id": rid}) == 1


async def test_another_users_chat_is_not_found_whatever_the_call(service: Service) -> None:
    frank, grace = await service.user("frank"), await service.user("grace")
    turn = await service.turn(frank, "my secret plan")
    await service.answer(turn, "noted")
    chat_id = turn.chat.chat_id
    answer_id = (await history_of(service, frank, chat_id))[1].message_id
    calls = [
        service.stub.GetChat(session_pb2.GetChatRequest(user_id=grace, chat_id=chat_id)),
        service.turn(grace, "let me in", chat_id),
        service.stub.DeleteChat(session_pb2.DeleteChatRequest(user_id=grace, chat_id=chat_id)),
        service.stub.UpdateChat(
            session_pb2.UpdateChatRequest(user_id=grace, chat_id=chat_id, title="mine now")
        ),
        service.stub.BuildContext(
            session_pb2.BuildContextRequest(user_id=grace, chat_id=chat_id, content="peek")
        ),
        service.stub.SubmitFeedback(
            session_pb2.SubmitFeedbackRequest(
                user_id=grace, chat_id=chat_id, message_id=answer_id, rating=session_pb2.RATING_DOWN
            )
        ),
        service.stub.GetChat(session_pb2.GetChatRequest(user_id=frank, chat_id="$where")),
        service.stub.GetChat(session_pb2.GetChatRequest(user_id=frank, chat_id="0" * 32)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
        assert "my secret plan" not in (refused.value.details() or "")
    messages = await history_of(service, frank, chat_id)
    assert [m.content for m in messages] == ["my secret plan", "noted"]
    chat = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=frank, chat_id=chat_id))
    assert chat.chat.title == "my secret plan"


async def test_invalid_arguments_name_their_field(service: Service) -> None:
    henry = await service.user("henry")
    cases = [
        (session_pb2.StartTurnRequest(user_id=henry, content="  ", request_id="r"), "content"),
        (session_pb2.StartTurnRequest(user_id=henry, content="hi", request_id=""), "request_id"),
        (
            session_pb2.StartTurnRequest(
                user_id=henry, content="hi", request_id="r", bot_id="nope"
            ),
            "bot_id",
        ),
        (
            session_pb2.StartTurnRequest(
                user_id=henry, content="hi", request_id="r", max_tokens=5000
            ),
            "max_tokens",
        ),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.StartTurn(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(f"{field}: ")
        assert [f for f, _ in field_violations(refused.value)] == [field]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.stub.ListChats(session_pb2.ListChatsRequest(user_id=henry, cursor="%%%"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("cursor: ")


async def test_a_chat_is_renamed_and_moved_to_another_profile(service: Service) -> None:
    ivy = await service.user("ivy")
    turn = await service.turn(ivy, "first message of a chat")
    chat_id = turn.chat.chat_id
    renamed = await service.stub.UpdateChat(
        session_pb2.UpdateChatRequest(user_id=ivy, chat_id=chat_id, title="  Trip   plans ")
    )
    assert renamed.title == "Trip plans"
    assert renamed.bot_id == "default"
    pirate = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(
            user_id=ivy,
            bot=session_pb2.BotProfile(name="Pirate", system_prompt="Talk like a pirate."),
        )
    )
    moved = await service.stub.UpdateChat(
        session_pb2.UpdateChatRequest(user_id=ivy, chat_id=chat_id, bot_id=pirate.bot_id)
    )
    assert moved.bot_id == pirate.bot_id
    assert moved.title == "Trip plans"
    await service.answer(turn, "ok")
    nxt = await service.turn(ivy, "and now?", chat_id)
    assert nxt.system_prompt == "Talk like a pirate."
    assert pairs(nxt.context.messages)[0] == ("system", "Talk like a pirate.")
    for bad, field in (({"title": " "}, "title"), ({"bot_id": "0" * 32}, "bot_id"), ({}, "title")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.UpdateChat(
                session_pb2.UpdateChatRequest(user_id=ivy, chat_id=chat_id, **bad)
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith(f"{field}: ")


async def test_a_quick_next_question_waits_for_the_previous_answer(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(previous_answer_wait_s=5)
    judy = await service.user("judy")
    first = await service.turn(judy, "Name a colour.")
    started = asyncio.get_running_loop().time()
    second = asyncio.create_task(service.turn(judy, "Another one?", first.chat.chat_id))
    await asyncio.sleep(0.5)
    assert not second.done()  # waiting for the answer, which the results topic has not brought
    await service.answer(first, "Blue.")
    turn = await second
    assert asyncio.get_running_loop().time() - started < 3
    assert pairs(turn.context.messages)[1:] == [
        ("user", "Name a colour."),
        ("assistant", "Blue."),
        ("user", "Another one?"),
    ]
    # Answered already: no wait at all.
    started = asyncio.get_running_loop().time()
    await service.answer(turn, "Green.")
    third = await service.turn(judy, "And a third?", first.chat.chat_id)
    assert asyncio.get_running_loop().time() - started < 1
    assert pairs(third.context.messages)[-2:] == [("assistant", "Green."), ("user", "And a third?")]


async def test_a_tool_turn_follows_the_answers_calls_and_carries_them_to_the_model(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(previous_answer_wait_s=5)
    kim = await service.user("kim")
    first = await service.turn(kim, "What is the weather in Paris?")
    chat_id = first.chat.chat_id
    call = types_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    result = types_pb2.ChatMessage(
        role=types_pb2.ROLE_TOOL, tool_call_id="call_1", content='{"celsius": 21}'
    )
    # The results come before the answer with the calls is stored: the turn waits for it.
    tool_turn = asyncio.create_task(service.turn(kim, "", chat_id, tool_results=[result]))
    await asyncio.sleep(0.3)
    assert not tool_turn.done()
    await ResultRecorder(service.store, service.tokens, summary_retry_s=1)(
        envelopes_pb2.CompletionResult(
            request_id=first.user_message.request_id,
            chat_id=chat_id,
            user_id=kim,
            kind=envelopes_pb2.COMPLETION_KIND_CHAT,
            finish_reason=types_pb2.FINISH_REASON_TOOL_CALLS,
            tool_calls=[call],
            user_message_ordinal=first.answer_slot,
            user_message_id=first.user_message.message_id,
        )
    )
    turn = await tool_turn
    sent = turn.context.messages
    assert [m.role for m in sent[-3:]] == [
        types_pb2.ROLE_USER,
        types_pb2.ROLE_ASSISTANT,
        types_pb2.ROLE_TOOL,
    ]
    assert list(sent[-2].tool_calls) == [call]
    assert sent[-1] == result
    await service.answer(turn, "It is 21 degrees in Paris.")
    later = await service.turn(kim, "Thanks!", chat_id)
    assert [m.role for m in later.context.messages[-5:]] == [
        types_pb2.ROLE_USER,
        types_pb2.ROLE_ASSISTANT,
        types_pb2.ROLE_TOOL,
        types_pb2.ROLE_ASSISTANT,
        types_pb2.ROLE_USER,
    ]
    stored = await history_of(service, kim, chat_id)
    assert [m.role for m in stored] == [
        types_pb2.ROLE_USER,
        types_pb2.ROLE_ASSISTANT,
        types_pb2.ROLE_TOOL,
        types_pb2.ROLE_ASSISTANT,
        types_pb2.ROLE_USER,
    ]
    assert stored[1].finish_reason == types_pb2.FINISH_REASON_TOOL_CALLS
    assert list(stored[1].tool_calls) == [call]
    assert list(stored[2].tool_results) == [result]


async def test_tool_results_must_answer_the_calls_of_the_chats_last_answer(
    service: Service,
) -> None:
    lee = await service.user("lee")
    first = await service.turn(lee, "Hello")
    chat_id = first.chat.chat_id

    async def refused(results: list[types_pb2.ChatMessage], **fields: Any) -> list[str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.turn(lee, fields.pop("content", ""), chat_id, tool_results=results)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return [field for field, _ in field_violations(caught.value)]

    def result(call_id: str) -> types_pb2.ChatMessage:
        return types_pb2.ChatMessage(role=types_pb2.ROLE_TOOL, tool_call_id=call_id, content="1")

    await service.answer(first, "Hi!")
    assert await refused([result("call_1")]) == ["tool_results"]  # the answer made no calls
    asked = await service.turn(lee, "Use get_time", chat_id)
    await service.store.chats.append_answer(
        chat_id=chat_id,
        question_ordinal=asked.user_message.ordinal,
        content="",
        token_count=3,
        request_id=asked.user_message.request_id,
        finish_reason="tool_calls",
        tool_calls=(ToolCall("call_1", "get_time", "{}"),),
    )
    assert await refused([result("call_9")]) == ["tool_results[0].tool_call_id"]
    assert await refused([result("call_1"), result("call_1")]) == ["tool_results[1].tool_call_id"]
    assert await refused([result("call_1")], content="and a question") == ["content"]
    assert await refused([result("")]) == ["tool_results[0].tool_call_id"]
    # Nothing of the refused turns is stored; a right one is.
    assert len(await history_of(service, lee, chat_id)) == 4
    await service.turn(lee, "", chat_id, tool_results=[result("call_1")])
    assert len(await history_of(service, lee, chat_id)) == 5
