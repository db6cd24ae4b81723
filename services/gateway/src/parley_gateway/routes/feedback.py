"""Feedback on answers: thumbs up/down with a comment and tags; read and exported by the admin.

A thumbs-down also removes the answer from the user's semantic cache, so that it is not served
again; the cache being down never fails the feedback (it is stored either way).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from parley.v1 import cache_pb2, session_pb2
from parley_common.ids import is_id
from parley_gateway.deps import Admin, PartsDep, User
from parley_gateway.errors import ApiError
from parley_gateway.schemas import ErrorBody, UsageOut, UsageRowOut

__all__ = ["FeedbackBody", "FeedbackOut", "FeedbackRecord", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["feedback"])

Rating = Literal["up", "down"]
_RATING_TO_PB = {"up": session_pb2.RATING_UP, "down": session_pb2.RATING_DOWN}
_RATING_NAMES: dict[int, Rating] = {session_pb2.RATING_UP: "up", session_pb2.RATING_DOWN: "down"}
_EVICT_TIMEOUT_S = 2.0

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, malformed or revoked API key"},
    403: {"model": ErrorBody, "description": "a key of the wrong kind"},
    404: {"model": ErrorBody, "description": "no such chat or message (or not yours)"},
    422: {"model": ErrorBody, "description": "a field is missing or invalid (named)"},
    503: {"model": ErrorBody, "description": "a backing service is down; retry after Retry-After"},
}


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: Rating
    comment: str = Field(default="", max_length=4000)
    tags: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(
        default_factory=list, max_length=10, description="free labels, e.g. `wrong`, `rude`"
    )


class FeedbackOut(BaseModel):
    feedback_id: str
    chat_id: str
    message_id: str
    rating: Rating
    comment: str
    tags: list[str]
    created_at: int = Field(description="Unix milliseconds")
    updated_at: int = Field(description="Unix milliseconds; feedback given again replaces it")
    cache_evicted: int | None = Field(
        default=None,
        description="thumbs-down: cache entries of this answer no longer served to you (deleted, "
        "or hidden from you when shared with others; null: the cache did not answer; the "
        "feedback is stored all the same)",
    )


class FeedbackRecord(BaseModel):
    """One line of the export: the feedback with the question and the answer it judges."""

    feedback_id: str
    chat_id: str
    message_id: str
    user_id: str
    bot_id: str
    model: str
    request_id: str
    rating: Rating
    comment: str
    tags: list[str]
    question: str
    answer: str
    created_at: int
    updated_at: int


class FeedbackPage(BaseModel):
    feedback: list[FeedbackRecord]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page")


def _record(f: session_pb2.Feedback) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=f.feedback_id,
        chat_id=f.chat_id,
        message_id=f.message_id,
        user_id=f.user_id,
        bot_id=f.bot_id,
        model=f.model,
        request_id=f.request_id,
        rating=_RATING_NAMES.get(f.rating, "up"),
        comment=f.comment,
        tags=list(f.tags),
        question=f.question,
        answer=f.answer,
        created_at=f.created_unix_ms,
        updated_at=f.updated_unix_ms,
    )


def _not_found(kind: str, value: str) -> ApiError:
    return ApiError(
        404, "not_found", f"{kind} {value[:64]!r} not found: ids are 32 hexadecimal characters"
    )


@router.post(
    "/chat/{chat_id}/messages/{message_id}/feedback",
    response_model=FeedbackOut,
    responses=_ERRORS,
    summary="Rate an answer",
)
async def give_feedback(
    chat_id: Annotated[str, Path(description="the chat")],
    message_id: Annotated[str, Path(description="the assistant message (from GET /chat/{id})")],
    body: FeedbackBody,
    user: User,
    parts: PartsDep,
) -> FeedbackOut:
    """Thumbs up or down on one of the assistant's answers, with an optional comment and tags.
    Giving it again replaces it. A thumbs-down removes the answer from your semantic cache."""
    if not is_id(chat_id):
        raise _not_found("chat", chat_id)
    if not is_id(message_id):
        raise _not_found("message", message_id)
    stored = await parts.session.submit_feedback(
        session_pb2.SubmitFeedbackRequest(
            user_id=user.user_id,
            chat_id=chat_id,
            message_id=message_id,
            rating=_RATING_TO_PB[body.rating],
            comment=body.comment,
            tags=body.tags,
        )
    )
    out = FeedbackOut(
        feedback_id=stored.feedback_id,
        chat_id=stored.chat_id,
        message_id=stored.message_id,
        rating=_RATING_NAMES.get(stored.rating, body.rating),
        comment=stored.comment,
        tags=list(stored.tags),
        created_at=stored.created_unix_ms,
        updated_at=stored.updated_unix_ms,
    )
    if body.rating == "down":
        out.cache_evicted = await _evict(parts, user.user_id, stored)
    return out


async def _evict(parts: PartsDep, user_id: str, feedback: session_pb2.Feedback) -> int | None:
    if parts.cache is None:
        return None
    try:
        evicted = await parts.cache.Evict(
            cache_pb2.EvictRequest(
                request_id=feedback.request_id,
                user_id=user_id,
                entry_id=feedback.cache_entry_id,
            ),
            timeout=_EVICT_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as exc:
        log.warning(
            "cache eviction after negative feedback failed; the feedback is stored",
            extra={"code": exc.code().name, "request_id": feedback.request_id},
        )
        return None
    return evicted.evicted


def _ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


Since = Annotated[
    datetime | None, Query(description="given (or last changed) at or after: ISO 8601")
]
Until = Annotated[datetime | None, Query(description="and before: ISO 8601")]
BotFilter = Annotated[str, Query(max_length=64, description="one bot profile's feedback")]


@router.get("/feedback", response_model=FeedbackPage, responses=_ERRORS, summary="Read feedback")
async def list_feedback(
    _: Admin,
    parts: PartsDep,
    bot_id: BotFilter = "",
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> FeedbackPage:
    """(admin key) Feedback, most recent first, with the question and answer it judges."""
    page = await parts.session.list_feedback(
        session_pb2.ListFeedbackRequest(
            bot_id=bot_id,
            since_unix_ms=_ms(since),
            until_unix_ms=_ms(until),
            limit=limit,
            cursor=cursor or "",
        )
    )
    return FeedbackPage(
        feedback=[_record(f) for f in page.feedback], next_cursor=page.next_cursor or None
    )


@router.get(
    "/feedback/export",
    responses={
        **_ERRORS,
        200: {
            "description": "JSON Lines: one feedback record a line, most recent first",
            "content": {"application/x-ndjson": {}},
        },
    },
    summary="Export feedback as JSON Lines",
)
async def export_feedback(
    _: Admin,
    parts: PartsDep,
    bot_id: BotFilter = "",
    since: Since = None,
    until: Until = None,
) -> StreamingResponse:
    """(admin key) Every matching feedback with its question and answer, for review and
    retraining, streamed as it is read."""
    stream = parts.session.export_feedback(
        session_pb2.ExportFeedbackRequest(
            bot_id=bot_id, since_unix_ms=_ms(since), until_unix_ms=_ms(until)
        ),
        timeout_s=max(parts.settings.grpc_timeout_s, 600),
    )
    try:
        # The first record (or the end) before the status line: a failure is still a 503/422.
        first: session_pb2.Feedback | None = await anext(stream)
    except StopAsyncIteration:
        first = None

    async def lines() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield _line(first)
        try:
            async for item in stream:
                yield _line(item)
        except ApiError as exc:
            # Too late for a status code: the export ends early, and the log says why.
            log.error("feedback export cut short", extra={"error": exc.type, "detail": exc.message})

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="feedback.jsonl"'},
    )


@router.get("/usage", response_model=UsageOut, responses=_ERRORS, summary="Usage per bot and day")
async def usage(
    _: Admin,
    parts: PartsDep,
    bot_id: BotFilter = "",
    since: Since = None,
    until: Until = None,
) -> UsageOut:
    """(admin key) Per bot profile and UTC day: answers, tokens, cache hits and their ratio,
    thumbs up and down, aggregated in MongoDB."""
    got = await parts.session.get_usage(
        session_pb2.GetUsageRequest(
            bot_id=bot_id, since_unix_ms=_ms(since), until_unix_ms=_ms(until)
        )
    )
    return UsageOut(
        rows=[
            UsageRowOut(
                bot_id=r.bot_id,
                day=r.day,
                turns=r.turns,
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                cache_hits=r.cache_hits,
                cache_hit_ratio=r.cache_hit_ratio,
                thumbs_up=r.thumbs_up,
                thumbs_down=r.thumbs_down,
            )
            for r in got.rows
        ]
    )


def _line(item: session_pb2.Feedback) -> bytes:
    return (json.dumps(_record(item).model_dump(), ensure_ascii=False) + "\n").encode()
