"""Changing a chat: its title, or the bot profile its next turns use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from parley.v1 import session_pb2
from parley_common.ids import is_id
from parley_gateway.deps import PartsDep, User
from parley_gateway.errors import ApiError
from parley_gateway.schemas import ChatSummary, ErrorBody

__all__ = ["ChatPatch", "router"]

router = APIRouter(tags=["chats"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, malformed or revoked API key"},
    404: {"model": ErrorBody, "description": "no such chat (or not yours)"},
    422: {"model": ErrorBody, "description": "a field is missing or invalid (named)"},
    503: {"model": ErrorBody, "description": "a backing service is down; retry after Retry-After"},
}


class ChatPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=200)
    bot_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the bot profile of the chat's next turns (yours, a shared one or `default`)",
    )

    @model_validator(mode="after")
    def _something(self) -> ChatPatch:
        if self.title is None and self.bot_id is None:
            raise ValueError("give a title or a bot_id to change")
        return self


@router.patch(
    "/chat/{chat_id}", response_model=ChatSummary, responses=_ERRORS, summary="Rename a chat"
)
async def update_chat(
    chat_id: Annotated[str, Path(description="a chat id (32 hexadecimal characters)")],
    body: ChatPatch,
    user: User,
    parts: PartsDep,
) -> ChatSummary:
    """Rename a chat (`title`) or move it to another bot profile (`bot_id`)."""
    if not is_id(chat_id):
        raise ApiError(
            404,
            "not_found",
            f"chat {chat_id[:64]!r} not found: chat ids are 32 hexadecimal characters",
        )
    request = session_pb2.UpdateChatRequest(user_id=user.user_id, chat_id=chat_id)
    if body.title is not None:
        request.title = body.title
    if body.bot_id is not None:
        request.bot_id = body.bot_id
    chat = await parts.session.update_chat(request)
    return ChatSummary(
        chat_id=chat.chat_id,
        title=chat.title,
        bot_id=chat.bot_id,
        created_at=chat.created_unix_ms,
        updated_at=chat.updated_unix_ms,
        message_count=chat.message_count,
    )
