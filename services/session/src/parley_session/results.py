"""Applies completion results: a chat answer becomes the assistant's message, a summary the
chat's summary. Once each in effect, whatever is redelivered, and in order whatever the arrival:
an answer has its place (its question's ordinal + 1) and a summary replaces only an older one."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.vocabulary import FinishReason
from parley_session.domain import ToolCall
from parley_session.stores import Stores
from parley_session.summaries import retry_delay
from parley_session.tokens import TokenCounter

__all__ = ["ResultRecorder"]

log = logging.getLogger(__name__)

# What an answer may end with: an expired request generated nothing.
_ANSWER_ENDINGS = frozenset(
    {
        FinishReason.STOP,
        FinishReason.LENGTH,
        FinishReason.CANCELLED,
        FinishReason.ERROR,
        FinishReason.TOOL_CALLS,
    }
)


class ResultRecorder:
    def __init__(self, store: Stores, tokens: TokenCounter, *, summary_retry_s: float) -> None:
        self._store = store
        self._tokens = tokens
        self._summary_retry_s = summary_retry_s

    async def __call__(self, result: envelopes_pb2.CompletionResult) -> None:
        if result.kind == envelopes_pb2.COMPLETION_KIND_SUMMARY:
            await self._summary(result)
        elif result.kind == envelopes_pb2.COMPLETION_KIND_CHAT:
            await self._answer(result)

    async def _answer(self, result: envelopes_pb2.CompletionResult) -> None:
        finish = FinishReason.from_pb(result.finish_reason)
        if (
            finish is None
            or finish not in _ANSWER_ENDINGS
            or (not result.text and finish is FinishReason.ERROR)
        ):
            return  # nothing was generated (expired or failed): no assistant message
        created = await self._store.chats.append_answer(
            chat_id=result.chat_id,
            question_ordinal=result.user_message_ordinal,
            question_id=result.user_message_id,
            user_id=result.user_id,
            content=result.text,
            token_count=result.usage.completion_tokens or self._tokens.count(result.text),
            request_id=result.request_id,
            finish_reason=finish.value,
            model=result.model,
            cache_entry_id=result.cache_entry_id,
            cache_score=round(result.cache_score, 6),
            cache_reason=result.cache_reason,
            worker_id=result.worker_id,
            tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in result.tool_calls),
        )
        if not created:
            log.info(
                "result already stored, or its chat deleted",
                extra={"request_id": result.request_id},
            )

    async def _summary(self, result: envelopes_pb2.CompletionResult) -> None:
        usable = result.finish_reason in (
            types_pb2.FINISH_REASON_STOP,
            types_pb2.FINISH_REASON_LENGTH,
        ) and bool(result.text.strip())
        if usable:
            stored = await self._store.summaries.store_summary(
                result.chat_id,
                request_id=result.request_id,
                text=result.text.strip(),
                through_ordinal=result.summary_through_ordinal,
                token_count=self._tokens.count(result.text.strip()),
            )
            log.info(
                "summary stored" if stored else "summary already covered, or its chat is gone",
                extra={
                    "chat_id": result.chat_id,
                    "request_id": result.request_id,
                    "through_ordinal": result.summary_through_ordinal,
                },
            )
            return
        job = await self._store.summaries.summary_job(result.chat_id)
        if job is None or job.request_id != result.request_id:
            return  # a stale attempt: a newer one is in charge
        retry_at = datetime.now(UTC) + retry_delay(self._summary_retry_s, job.attempts)
        await self._store.summaries.fail_summary_job(result.chat_id, result.request_id, retry_at)
        log.warning(
            "summary failed; a later turn retries it",
            extra={
                "chat_id": result.chat_id,
                "request_id": result.request_id,
                "finish_reason": types_pb2.FinishReason.Name(result.finish_reason),
                "error": result.error,
                "retry_at": retry_at.isoformat(),
            },
        )
