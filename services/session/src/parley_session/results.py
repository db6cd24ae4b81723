"""Stores the assistant's answers from the results topic, once each."""

from __future__ import annotations

import logging

from parley.v1 import envelopes_pb2, types_pb2
from parley_session.store import SessionStore

__all__ = ["ResultRecorder"]

log = logging.getLogger(__name__)

_FINISH = {
    types_pb2.FINISH_REASON_STOP: "stop",
    types_pb2.FINISH_REASON_LENGTH: "length",
    types_pb2.FINISH_REASON_CANCELLED: "cancelled",
    types_pb2.FINISH_REASON_ERROR: "error",
}


class ResultRecorder:
    def __init__(self, store: SessionStore) -> None:
        self._store = store

    async def __call__(self, result: envelopes_pb2.CompletionResult) -> None:
        if result.kind != envelopes_pb2.COMPLETION_KIND_CHAT:
            return
        if result.finish_reason not in _FINISH or (
            not result.text and result.finish_reason == types_pb2.FINISH_REASON_ERROR
        ):
            return  # nothing was generated (expired or failed): no assistant message
        created = await self._store.append_answer(
            chat_id=result.chat_id,
            question_ordinal=result.user_message_ordinal,
            content=result.text,
            token_count=result.usage.completion_tokens,
            request_id=result.request_id,
            finish_reason=_FINISH[result.finish_reason],
        )
        if not created:
            log.info(
                "result already stored, or its chat deleted",
                extra={"request_id": result.request_id},
            )
