"""Asynchronous completions: read one, follow it as an event stream, cancel it."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from fastapi.responses import StreamingResponse

from parley_common.vocabulary import CompletionState
from parley_gateway.async_completions import FINAL_STATES, completion_out
from parley_gateway.deps import PartsDep, User
from parley_gateway.errors import ApiError
from parley_gateway.schemas import CompletionOut, ErrorBody

router = APIRouter(prefix="/completions", tags=["completions"])

CompletionId = Annotated[
    str, Path(description="the completion id: the request id of the turn that was submitted")
]
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, malformed or revoked API key"},
    404: {"model": ErrorBody, "description": "no such completion (or not yours)"},
    503: {"model": ErrorBody, "description": "a backing service is down; retry after Retry-After"},
}


def _valid(completion_id: str) -> str:
    if not _VALID_ID.fullmatch(completion_id):
        raise ApiError(404, "not_found", f"completion {completion_id[:140]!r} not found")
    return completion_id


@router.get(
    "/{completion_id}",
    response_model=CompletionOut,
    responses=_ERRORS,
    summary="Read a completion",
)
async def get_completion(completion_id: CompletionId, user: User, parts: PartsDep) -> CompletionOut:
    """The state of a completion submitted with `?mode=async`: `queued`, `running`, `done`,
    `failed` or `cancelled`, and its answer once there is one."""
    found = await parts.async_completions.get(user, _valid(completion_id))
    return completion_out(found)


@router.get(
    "/{completion_id}/events",
    responses={
        **_ERRORS,
        200: {
            "description": "a text/event-stream: `state` events, `chunk` events (`id` 0, 1, ...) "
            "while it is generated (a `reset`, numbered among them, voids the chunks before it: "
            "the answer starts over), and last `done` (the completion) or `error`. After a "
            "reconnect, `Last-Event-ID` resumes after the last chunk received; `done` always "
            "carries the whole answer.",
            "content": {"text/event-stream": {}},
        },
    },
    response_class=StreamingResponse,
    summary="Follow a completion",
)
async def follow_completion(
    completion_id: CompletionId,
    user: User,
    parts: PartsDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=64, description="the last event id received"),
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events of a completion until it is final."""
    first = await parts.async_completions.get(user, _valid(completion_id))
    return StreamingResponse(
        parts.async_completions.events(user, first, last_event_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{completion_id}/cancel",
    response_model=CompletionOut,
    status_code=202,
    responses=_ERRORS,
    summary="Cancel a completion",
)
async def cancel_completion(
    completion_id: CompletionId, user: User, parts: PartsDep
) -> CompletionOut:
    """Ask the workers to stop generating it; the text generated until then is kept (state
    `cancelled`). A completion that is final already is returned as it is."""
    found = await parts.async_completions.get(user, _valid(completion_id))
    if CompletionState.from_pb(found.state) not in FINAL_STATES:
        await parts.turns.cancel(found.completion_id, "cancelled by its user")
    return completion_out(found)
