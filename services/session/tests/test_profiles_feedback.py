"""Bot profiles and feedback through the SessionService over gRPC, on a real MongoDB."""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from parley.v1 import session_pb2, types_pb2
from parley_common.timeutil import now_ms

if TYPE_CHECKING:
    from conftest import Service, ServiceFactory

pytestmark = pytest.mark.integration

UP, DOWN = session_pb2.RATING_UP, session_pb2.RATING_DOWN
PNG = b"\x89PNG\r\n\x1a\n" + bytes(24)  # the signature is what is checked


def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def profile(**fields: object) -> session_pb2.BotProfile:
    return session_pb2.BotProfile(**fields)  # type: ignore[arg-type]


async def names(service: Service, user_id: str = "", admin: bool = False) -> list[str]:
    listed = await service.stub.ListBots(session_pb2.ListBotsRequest(user_id=user_id, admin=admin))
    return [b.name for b in listed.bots]


async def refused(call: object, code: grpc.StatusCode, starts: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == code, error.value.details()
    details = error.value.details() or ""
    assert details.startswith(starts), details
    return details


async def test_profiles_belong_to_their_user_shared_ones_to_the_admin(service: Service) -> None:
    alice, bob = await service.user("alice"), await service.user("bob")
    assert await names(service, alice) == ["Assistant"]
    support = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(
            admin=True,
            bot=profile(
                name="Support",
                system_prompt="You answer questions about Parley.",
                cache_scope=types_pb2.CACHE_SCOPE_TENANT,
            ),
        )
    )
    assert support.shared
    assert support.cache_scope == types_pb2.CACHE_SCOPE_TENANT
    pirate = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(
            user_id=alice,
            bot=profile(
                name="Pirate",
                avatar="🏴‍☠️",
                description="Arr.",
                system_prompt="Talk like a pirate.",
                sampling=types_pb2.SamplingParams(max_tokens=64, temperature=0.7, top_p=0.9),
                history_policy=session_pb2.HISTORY_POLICY_SUMMARIZE,
                history=session_pb2.HistoryParams(summarize_at=0.6),
                cache_scope=types_pb2.CACHE_SCOPE_DISABLED,
            ),
        )
    )
    assert not pirate.shared
    assert not pirate.builtin
    assert pirate.sampling.temperature == pytest.approx(0.7)  # float32 on the wire
    assert pirate.sampling.top_p == pytest.approx(0.9)
    assert pirate.model == "parley-tiny"  # empty: the served model
    assert pirate.history.summarize_at == pytest.approx(0.6)
    assert pirate.history.keep_recent == pytest.approx(0.25)  # the deployment's default
    assert await names(service, alice) == ["Assistant", "Support", "Pirate"]
    assert await names(service, bob) == ["Assistant", "Support"]
    assert await names(service, admin=True) == ["Assistant", "Support"]

    get = session_pb2.GetBotRequest
    await refused(
        service.stub.GetBot(get(user_id=bob, bot_id=pirate.bot_id)), grpc.StatusCode.NOT_FOUND
    )
    await refused(
        service.stub.GetBot(get(admin=True, bot_id=pirate.bot_id)), grpc.StatusCode.NOT_FOUND
    )
    update = session_pb2.UpdateBotRequest
    rename = field_mask_pb2.FieldMask(paths=["name"])
    await refused(
        service.stub.UpdateBot(
            update(user_id=alice, bot=profile(bot_id=support.bot_id, name="x"), update_mask=rename)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "shared profiles are managed with the admin key",
    )
    await refused(
        service.stub.UpdateBot(
            update(user_id=alice, bot=profile(bot_id="default", name="x"), update_mask=rename)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await refused(
        service.stub.UpdateBot(
            update(user_id=bob, bot=profile(bot_id=pirate.bot_id, name="x"), update_mask=rename)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # A partial update: name changed, temperature cleared, the rest untouched.
    changed = await service.stub.UpdateBot(
        update(
            user_id=alice,
            bot=profile(bot_id=pirate.bot_id, name="Captain"),
            update_mask=field_mask_pb2.FieldMask(paths=["name", "sampling.temperature"]),
        )
    )
    assert changed.name == "Captain"
    assert not changed.sampling.HasField("temperature")
    assert changed.sampling.top_p == pytest.approx(0.9)
    assert changed.system_prompt == "Talk like a pirate."
    assert changed.updated_unix_ms >= pirate.updated_unix_ms
    await refused(
        service.stub.UpdateBot(
            update(
                user_id=alice,
                bot=profile(bot_id=pirate.bot_id),
                update_mask=field_mask_pb2.FieldMask(paths=["owner"]),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "update_mask: cannot change owner",
    )


async def test_profile_fields_are_checked(make_service: ServiceFactory) -> None:
    service = await make_service(context_window=512, max_bots_per_user=2)
    carol = await service.user("carol")
    create = session_pb2.CreateBotRequest
    bad = [
        (profile(name=""), "name"),
        (profile(name="x", model="gpt-4"), "model"),
        (profile(name="x", cache_scope=types_pb2.CACHE_SCOPE_GLOBAL), "cache_scope"),
        (
            profile(name="x", sampling=types_pb2.SamplingParams(temperature=3)),
            "sampling.temperature",
        ),
        (
            profile(name="x", sampling=types_pb2.SamplingParams(max_tokens=512)),
            "sampling.max_tokens",
        ),
        (
            profile(name="x", history=session_pb2.HistoryParams(summarize_at=0.3, keep_recent=0.5)),
            "history.keep_recent",
        ),
        (profile(name="x", system_prompt="Be brief and kind. " * 200), "system_prompt"),
        (profile(name="x", avatar="not a url and far too long for an emoji"), "avatar"),
        # Data URL avatars are checked by their bytes: what they say, a raster image, small.
        (profile(name="x", avatar=_data_url("image/jpeg", PNG)), "avatar"),
        (profile(name="x", avatar=_data_url("image/png", b"<html><script>")), "avatar"),
        (profile(name="x", avatar=_data_url("image/svg", b"<svg onload=alert(1)>")), "avatar"),
        (profile(name="x", avatar=_data_url("image/png", PNG + bytes(40_000))), "avatar"),
        (profile(name="x", avatar="data:image/png;base64,not base64!"), "avatar"),
        (profile(name="x", cache_max_error_rate=-0.1), "cache_max_error_rate"),
        (profile(name="x", cache_max_error_rate=1), "cache_max_error_rate"),
    ]
    for bot, field in bad:
        await refused(
            service.stub.CreateBot(create(user_id=carol, bot=bot)),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field}: ",
        )
    # The admin may share a profile's cache more widely; users may not.
    for media_type, data in (("image/png", PNG), ("image/webp", b"RIFF\0\0\0\0WEBPVP8 ")):
        made = profile(name="Pictured", avatar=_data_url(media_type, data))
        created = await service.stub.CreateBot(create(user_id=carol, bot=made))
        assert created.avatar == made.avatar
        await service.stub.DeleteBot(
            session_pb2.DeleteBotRequest(user_id=carol, bot_id=created.bot_id)
        )
    shared = await service.stub.CreateBot(
        create(admin=True, bot=profile(name="Wide", cache_scope=types_pb2.CACHE_SCOPE_GLOBAL))
    )
    assert shared.cache_scope == types_pb2.CACHE_SCOPE_GLOBAL
    for n in range(2):
        await service.stub.CreateBot(create(user_id=carol, bot=profile(name=f"Mine {n}")))
    await refused(
        service.stub.CreateBot(create(user_id=carol, bot=profile(name="One too many"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bot: at most 2 profiles",
    )


async def test_a_chat_keeps_its_profile(service: Service) -> None:
    dave, erin = await service.user("dave"), await service.user("erin")
    pirate = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(
            user_id=dave,
            bot=profile(
                name="Pirate",
                system_prompt="Talk like a pirate.",
                sampling=types_pb2.SamplingParams(max_tokens=64, temperature=0.7, top_p=0.9),
                history_policy=session_pb2.HISTORY_POLICY_SUMMARIZE,
                cache_scope=types_pb2.CACHE_SCOPE_DISABLED,
                cache_max_error_rate=0.02,
            ),
        )
    )
    assert pirate.cache_max_error_rate == pytest.approx(0.02)
    first = await service.turn(dave, "Ahoy?", bot_id=pirate.bot_id)
    assert first.cache_max_error_rate == pytest.approx(0.02)
    assert first.chat.bot_id == pirate.bot_id
    assert first.model == "parley-tiny"
    assert first.system_prompt == "Talk like a pirate."
    assert first.sampling.max_tokens == 64
    assert first.sampling.temperature == pytest.approx(0.7)
    assert first.sampling.top_p == pytest.approx(0.9)
    assert first.cache_scope == types_pb2.CACHE_SCOPE_DISABLED
    assert first.context.policy == session_pb2.HISTORY_POLICY_SUMMARIZE
    assert first.context.messages[0].content == "Talk like a pirate."
    await service.answer(first, "Arr!")
    # Continuing takes no bot_id: the chat's profile, edited since, is the one used.
    await service.stub.UpdateBot(
        session_pb2.UpdateBotRequest(
            user_id=dave,
            bot=profile(bot_id=pirate.bot_id, system_prompt="Talk like an old pirate."),
            update_mask=field_mask_pb2.FieldMask(paths=["system_prompt"]),
        )
    )
    second = await service.turn(dave, "Where be the treasure?", first.chat.chat_id)
    assert second.system_prompt == "Talk like an old pirate."
    await service.answer(second, "Buried.")
    # A deleted profile: its chats go on with it; nobody can start a new one with it.
    await service.stub.DeleteBot(session_pb2.DeleteBotRequest(user_id=dave, bot_id=pirate.bot_id))
    third = await service.turn(dave, "Still there?", first.chat.chat_id)
    assert third.system_prompt == "Talk like an old pirate."
    assert third.sampling.max_tokens == 64
    await refused(
        service.turn(dave, "New chat", bot_id=pirate.bot_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "bot_id: ",
    )
    assert await names(service, dave) == ["Assistant"]
    # Another user's profile cannot be picked.
    other = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(user_id=dave, bot=profile(name="Private"))
    )
    await refused(
        service.turn(erin, "Hi", bot_id=other.bot_id), grpc.StatusCode.INVALID_ARGUMENT, "bot_id: "
    )


async def test_feedback_is_stored_once_per_answer_queryable_and_exportable(
    service: Service,
) -> None:
    frank, grace = await service.user("frank"), await service.user("grace")
    helper = await service.stub.CreateBot(
        session_pb2.CreateBotRequest(admin=True, bot=profile(name="Helper", system_prompt="Help."))
    )
    chats: list[tuple[str, session_pb2.StartTurnResponse]] = []
    for user, bot_id, question in (
        (frank, "", "What is two plus two?"),
        (grace, helper.bot_id, "Name a green pigment."),
        (grace, "", "How long is a week?"),
    ):
        turn = await service.turn(user, question, bot_id=bot_id)
        await service.answer(turn, f"Answer to: {question}")
        chats.append((user, turn))

    async def answer_id(user: str, turn: session_pb2.StartTurnResponse) -> str:
        got = await service.stub.GetChat(
            session_pb2.GetChatRequest(
                user_id=user, chat_id=turn.chat.chat_id, include_messages=True
            )
        )
        return got.messages[1].message_id

    submit = session_pb2.SubmitFeedbackRequest
    before = now_ms()
    user, turn = chats[0]
    first = await service.stub.SubmitFeedback(
        submit(
            user_id=user,
            chat_id=turn.chat.chat_id,
            message_id=await answer_id(user, turn),
            rating=UP,
            comment="right",
            tags=["Math", "math", " correct "],
        )
    )
    assert first.rating == UP
    assert list(first.tags) == ["math", "correct"]
    assert first.request_id == turn.user_message.request_id
    await asyncio.sleep(0.01)
    middle = now_ms()
    await asyncio.sleep(0.01)
    # Given again: replaced, not added.
    again = await service.stub.SubmitFeedback(
        submit(
            user_id=user,
            chat_id=turn.chat.chat_id,
            message_id=await answer_id(user, turn),
            rating=DOWN,
            comment="actually wrong",
        )
    )
    assert again.feedback_id == first.feedback_id
    assert again.rating == DOWN
    assert again.created_unix_ms == first.created_unix_ms
    assert again.updated_unix_ms > first.updated_unix_ms
    for user, turn in chats[1:]:
        await service.stub.SubmitFeedback(
            submit(
                user_id=user,
                chat_id=turn.chat.chat_id,
                message_id=await answer_id(user, turn),
                rating=UP,
            )
        )

    user, turn = chats[0]
    await refused(
        service.stub.SubmitFeedback(
            submit(
                user_id=user,
                chat_id=turn.chat.chat_id,
                message_id=turn.user_message.message_id,
                rating=UP,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "message_id: ",
    )
    await refused(
        service.stub.SubmitFeedback(
            submit(user_id=user, chat_id=turn.chat.chat_id, message_id="0" * 32, rating=UP)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await refused(
        service.stub.SubmitFeedback(
            submit(user_id=user, chat_id=turn.chat.chat_id, message_id=await answer_id(user, turn))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rating: ",
    )

    listed = await service.stub.ListFeedback(session_pb2.ListFeedbackRequest())
    assert [f.answer for f in listed.feedback] == [
        "Answer to: How long is a week?",
        "Answer to: Name a green pigment.",
        "Answer to: What is two plus two?",
    ]
    assert listed.feedback[0].question == "How long is a week?"
    by_bot = await service.stub.ListFeedback(session_pb2.ListFeedbackRequest(bot_id=helper.bot_id))
    assert [f.question for f in by_bot.feedback] == ["Name a green pigment."]
    early = await service.stub.ListFeedback(
        session_pb2.ListFeedbackRequest(since_unix_ms=before, until_unix_ms=middle)
    )
    assert list(early.feedback) == []  # frank's was changed after `middle`: it counts then
    late = await service.stub.ListFeedback(session_pb2.ListFeedbackRequest(since_unix_ms=middle))
    assert len(late.feedback) == 3
    # Pages follow the cursor without gaps or repeats.
    seen: list[str] = []
    cursor = ""
    while True:
        page = await service.stub.ListFeedback(
            session_pb2.ListFeedbackRequest(limit=1, cursor=cursor)
        )
        seen.extend(f.feedback_id for f in page.feedback)
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == [f.feedback_id for f in listed.feedback]

    exported = [f async for f in service.stub.ExportFeedback(session_pb2.ExportFeedbackRequest())]
    assert [(f.question, f.answer, f.rating) for f in exported] == [
        (f.question, f.answer, f.rating) for f in listed.feedback
    ]
    assert {f.comment for f in exported} == {"", "actually wrong"}

    # Deleting a chat deletes its feedback.
    await service.stub.DeleteChat(
        session_pb2.DeleteChatRequest(user_id=frank, chat_id=chats[0][1].chat.chat_id)
    )
    remaining = await service.stub.ListFeedback(session_pb2.ListFeedbackRequest())
    assert len(remaining.feedback) == 2
