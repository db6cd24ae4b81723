"""Feedback on an answer: checked (rating, comment, tags, an assistant message of the caller's
chat), then stored once per message and user."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parley_common.ids import is_id
from parley_common.vocabulary import Role
from parley_session.domain import InvalidArgumentError, MessageNotFoundError
from parley_session.stores import FeedbackDoc, Stores
from parley_session.turns import check_chat_id

__all__ = ["FeedbackRequest", "submit_feedback"]

MAX_COMMENT_CHARS = 4000
MAX_TAGS = 10
MAX_TAG_CHARS = 40


@dataclass(frozen=True, slots=True)
class FeedbackRequest:
    user_id: str
    chat_id: str
    message_id: str
    rating: str | None  # "up" | "down"; None: neither was given
    comment: str
    tags: Sequence[str]


def _clean_tags(tags: Sequence[str]) -> list[str]:
    cleaned = list(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
    if len(cleaned) > MAX_TAGS:
        raise InvalidArgumentError("tags", f"at most {MAX_TAGS}")
    for tag in cleaned:
        if len(tag) > MAX_TAG_CHARS:
            raise InvalidArgumentError(
                "tags", f"{tag[:MAX_TAG_CHARS]!r}…: at most {MAX_TAG_CHARS} characters a tag"
            )
    return cleaned


async def submit_feedback(stores: Stores, request: FeedbackRequest) -> FeedbackDoc:
    check_chat_id(request.chat_id)
    if request.rating is None:
        raise InvalidArgumentError("rating", "up or down")
    comment = request.comment.strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidArgumentError("comment", f"at most {MAX_COMMENT_CHARS} characters")
    tags = _clean_tags(request.tags)
    chat = await stores.chats.get_chat(request.user_id, request.chat_id)
    message = (
        await stores.messages.get_message(chat.chat_id, request.message_id)
        if is_id(request.message_id)
        else None
    )
    if message is None:
        raise MessageNotFoundError(request.message_id)
    if message.role != Role.ASSISTANT:
        raise InvalidArgumentError("message_id", "feedback is given on the assistant's answers")
    return await stores.feedback.put_feedback(
        user_id=request.user_id,
        chat=chat,
        message=message,
        rating=request.rating,
        comment=comment,
        tags=tags,
    )
