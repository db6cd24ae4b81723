"""Summaries of older turns, made by the workers through the requests topic like any completion.

The session service publishes a `CompletionRequest` of kind SUMMARY (no reply topic: nobody
streams it); a worker answers it on the results topic; `ResultRecorder` stores the summary with
the chat and the range it covers. One request per chat is outstanding at a time (a claim in the
chat document, so service replicas agree); a failed or lost one is redone after a backoff, and
nothing here ever delays a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.envelopes import completion_request
from parley_common.kafka import Topics
from parley_common.timeutil import now_ms
from parley_common.vocabulary import Role
from parley_session.domain import BotProfile, summary_prompt
from parley_session.stores import ChatDoc, Stores
from parley_session.tokens import TokenCounter

__all__ = ["Summarizer", "retry_delay"]

log = logging.getLogger(__name__)

_MAX_RETRY_DELAY_S = 600.0


def retry_delay(first_s: float, attempts: int) -> timedelta:
    """The pause before a chat's next summary attempt after `attempts` failed ones."""
    return timedelta(seconds=min(first_s * 2 ** max(attempts - 1, 0), _MAX_RETRY_DELAY_S))


class Summarizer:
    def __init__(
        self,
        store: Stores,
        tokens: TokenCounter,
        producer: AIOKafkaProducer,
        *,
        topics: Topics,
        window: int,
        timeout_s: float,
        retry_s: float,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._producer = producer
        self._topics = topics
        self._window = window
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def request(self, *, chat: ChatDoc, bot: BotProfile, after: int, before: int) -> None:
        """Summarize the messages with `after` < ordinal < `before` into the chat's summary."""
        if chat.chat_id in self._tasks:
            return
        task = asyncio.create_task(
            self._summarize(chat, bot, after, before), name=f"summary-{chat.chat_id}"
        )
        self._tasks[chat.chat_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(chat.chat_id, None))

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Let the requests being published finish; what is cut short is redone later."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _summarize(self, chat: ChatDoc, bot: BotProfile, after: int, before: int) -> None:
        try:
            await self._publish(chat, bot, after, before)
        except Exception:
            # A summary is an optimisation of later turns: log and let a later turn try again.
            log.exception("could not request a summary", extra={"chat_id": chat.chat_id})

    async def _publish(self, chat: ChatDoc, bot: BotProfile, after: int, before: int) -> None:
        now = datetime.now(UTC)
        job = await self._store.summaries.claim_summary_job(
            chat.chat_id,
            now=now,
            stale_before=now - timedelta(seconds=self._timeout_s + 30),
        )
        if job is None:
            return  # one is in flight, or waiting out its backoff
        loaded = await self._store.messages.history(
            chat.chat_id, leaf_id=chat.active_leaf, after=after, through=before - 1
        )
        prompt = summary_prompt(
            previous_summary=chat.summary.text if chat.summary is not None else "",
            turns=loaded.messages,
            window=self._window,
            max_tokens=bot.history.summary_max_tokens,
            fmt=self._tokens,
        )
        if prompt is None:
            await self._store.summaries.release_summary_job(chat.chat_id, job.request_id)
            return
        request = completion_request(
            request_id=job.request_id,
            chat_id=chat.chat_id,
            user_id=chat.user_id,
            model=bot.model,
            kind=envelopes_pb2.COMPLETION_KIND_SUMMARY,
            messages=[
                types_pb2.ChatMessage(role=Role(role).to_pb(), content=text)
                for role, text in prompt.messages
            ],
            # Greedy: a summary is a record of what was said, not a creative answer.
            sampling=types_pb2.SamplingParams(
                max_tokens=bot.history.summary_max_tokens, temperature=0.0
            ),
            deadline_unix_ms=now_ms() + int(self._timeout_s * 1000),
            enqueued_unix_ms=now_ms(),
            bot_id=bot.bot_id,
            summary_through_ordinal=prompt.through_ordinal,
        )
        try:
            await self._producer.send_and_wait(
                self._topics.requests, request.SerializeToString(), key=chat.chat_id.encode()
            )
        except KafkaError as exc:
            log.warning(
                "summary request not published; it will be redone",
                extra={"chat_id": chat.chat_id, "error": repr(exc)},
            )
            await self._store.summaries.fail_summary_job(
                chat.chat_id, job.request_id, now + retry_delay(self._retry_s, job.attempts)
            )
            return
        log.info(
            "summary requested",
            extra={
                "chat_id": chat.chat_id,
                "request_id": job.request_id,
                "through_ordinal": prompt.through_ordinal,
                "attempt": job.attempts,
            },
        )
