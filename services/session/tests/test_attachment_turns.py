"""Attachments through the session service's RPCs on the real MongoDB: the chat's limits, the
files sent with questions (documents in the context, images only to a vision model), and which
files a deleted branch takes with it."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import grpc
import pytest
from PIL import Image

from parley.v1 import session_pb2
from parley_common.grpc_errors import error_reason

if TYPE_CHECKING:
    from conftest import Service, ServiceFactory

pytestmark = pytest.mark.integration


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (2, 2), "blue").save(out, format="PNG")
    return out.getvalue()


async def _upload(service: Service, user_id: str, chat_id: str, name: str, data: bytes) -> str:
    added = await service.stub.UploadAttachment(
        session_pb2.UploadAttachmentRequest(user_id=user_id, chat_id=chat_id, name=name, data=data),
        timeout=10,
    )
    return added.attachment_id


async def _files(service: Service, attachment_id: str) -> tuple[int, int]:
    db = service.client[service.database]
    return (
        await db["attachments.files"].count_documents({"_id": attachment_id}),
        await db["attachments.chunks"].count_documents({"files_id": attachment_id}),
    )


async def test_a_chat_holds_a_limited_number_of_files(make_service: ServiceFactory) -> None:
    service = await make_service(attachment_max_per_chat=2, attachment_max_chat_bytes=100)
    alice = await service.user("alice")
    chat_id = (await service.turn(alice, "Hello")).chat.chat_id
    await _upload(service, alice, chat_id, "a.txt", b"a" * 40)
    with pytest.raises(grpc.aio.AioRpcError) as too_big:
        await _upload(service, alice, chat_id, "b.txt", b"b" * 61)
    assert error_reason(too_big.value) == "attachment_limit"
    await _upload(service, alice, chat_id, "b.txt", b"b" * 60)
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await _upload(service, alice, chat_id, "c.txt", b"c")
    assert error_reason(too_many.value) == "attachment_limit"
    assert "2 files" in (too_many.value.details() or "")


async def test_a_deleted_branch_takes_the_files_only_it_was_sent_with(service: Service) -> None:
    alice = await service.user("alice")
    first = await service.turn(alice, "Hello")
    await service.answer(first, "Hi")
    chat_id = first.chat.chat_id
    shared = await _upload(service, alice, chat_id, "shared.txt", b"in two questions")
    own = await _upload(service, alice, chat_id, "own.txt", b"in the last question only")
    second = await service.turn(alice, "Read this", chat_id, attachment_ids=[shared])
    assert "in two questions" in second.context.messages[-1].content
    assert [a.name for a in second.user_message.attachments] == ["shared.txt"]
    await service.answer(second, "Read")
    third = await service.turn(alice, "And these", chat_id, attachment_ids=[shared, own])
    await service.answer(third, "Done")
    await service.stub.DeleteBranch(
        session_pb2.DeleteBranchRequest(
            user_id=alice, chat_id=chat_id, message_id=third.user_message.message_id
        ),
        timeout=10,
    )
    assert await _files(service, own) == (0, 0)
    assert await _files(service, shared) == (1, 1)  # the second question still has it
    await service.stub.DeleteBranch(
        session_pb2.DeleteBranchRequest(
            user_id=alice, chat_id=chat_id, message_id=second.user_message.message_id
        ),
        timeout=10,
    )
    assert await _files(service, shared) == (0, 0)


async def test_images_go_only_to_a_vision_model(make_service: ServiceFactory) -> None:
    service = await make_service(vision_models="parley-tiny")
    alice = await service.user("alice")
    chat_id = (await service.turn(alice, "Hello")).chat.chat_id
    image = await _upload(service, alice, chat_id, "pic.png", _png())
    turn = await service.turn(alice, "What is it?", chat_id, attachment_ids=[image])
    question = turn.context.messages[-1]
    assert question.content == "What is it?"
    assert [(i.media_type, i.data) for i in question.images] == [("image/png", _png())]

    text_only = await make_service()
    bob = await text_only.user("bob")
    chat_id = (await text_only.turn(bob, "Hello")).chat.chat_id
    image = await _upload(text_only, bob, chat_id, "pic.png", _png())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await text_only.turn(bob, "What is it?", chat_id, attachment_ids=[image])
    assert error_reason(refused.value) == "image_input_unsupported"
    assert "parley-tiny" in (refused.value.details() or "")


async def test_files_of_another_chat_or_user_are_not_sent(service: Service) -> None:
    alice, bob = await service.user("alice"), await service.user("bob")
    mine = (await service.turn(alice, "Hello")).chat.chat_id
    other = (await service.turn(alice, "Another")).chat.chat_id
    elsewhere = await _upload(service, alice, other, "a.txt", b"other chat")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await service.turn(alice, "Read", mine, attachment_ids=[elsewhere])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await service.stub.GetAttachment(
            session_pb2.GetAttachmentRequest(user_id=bob, chat_id=other, attachment_id=elsewhere),
            timeout=10,
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
