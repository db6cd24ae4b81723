"""ContextBuilder: reads what a history policy needs from the store and builds the context."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from parley_common.timeutil import now_ms
from parley_session.domain import (
    BotProfile,
    ContextPlan,
    ContextTooLargeError,
    HistoryPolicy,
    StoredMessage,
    build_context,
    recent_boundary,
    system_with_summary,
)
from parley_session.retry import remaining_s
from parley_session.stores import ChatDoc, LoadedHistory, Stores
from parley_session.summaries import Summarizer
from parley_session.tokens import TokenCounter

__all__ = ["BuiltContext", "ContextBuilder"]

log = logging.getLogger(__name__)

_ANSWER_PENDING_MS = 120_000  # an unanswered question older than this gets no answer any more
_ANSWER_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class BuiltContext:
    plan: ContextPlan
    policy: HistoryPolicy
    dropped_messages: int
    summary_through_ordinal: int | None  # set when the context starts with the chat's summary


class ContextBuilder:
    """`full` reads the whole chat; `truncate` and `summarize` read newest first and stop once
    the window is spent, so a chat of thousands of messages costs what its context needs.

    With `summarize`, a history that passes its share of the window asks the `Summarizer` for a
    summary of the older turns, in the background: meanwhile the chat goes on truncated.

    Answers are stored from the results topic, a moment after the client has read them: a quick
    next question waits briefly (`answer_wait_s`) for the previous answer, so that the model sees
    it. The history is read once; only while that answer is awaited is the store asked again.
    """

    def __init__(
        self,
        store: Stores,
        tokens: TokenCounter,
        *,
        window: int,
        summarizer: Summarizer | None = None,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._window = window
        self._summarizer = summarizer

    async def build(
        self,
        *,
        chat: ChatDoc,
        bot: BotProfile,
        policy: HistoryPolicy,
        reply_budget: int,
        through_ordinal: int,
        leaf_id: str | None,
        draft: StoredMessage | None = None,
        summarize: bool = True,
        known: LoadedHistory | None = None,
        answer_wait_s: float = 0.0,
    ) -> BuiltContext:
        """The context of the turn whose user message is at `through_ordinal` (or of `draft`,
        a message not stored, after everything up to `through_ordinal`). `summarize`: whether a
        long history may ask for a summary (a turn does; a preview does not). `known`: the whole
        history up to `through_ordinal`, when the caller has it (a new chat's first question).
        `leaf_id`: the last message of the path the history follows (None: no history)."""
        summary = chat.summary if policy is HistoryPolicy.SUMMARIZE else None
        if summary is not None and summary.through_ordinal >= through_ordinal:
            summary = None  # a summary of later turns than this one (an old turn's retry)
        after = summary.through_ordinal if summary is not None else -1
        budget = self._window - reply_budget
        if known is not None:
            loaded = known
        elif leaf_id is None:
            loaded = LoadedHistory()
        else:
            loaded = await self._read(chat.chat_id, leaf_id, policy, after, through_ordinal, budget)
            pending = self._answer_pending(loaded, through_ordinal) if answer_wait_s > 0 else None
            if pending is not None and await self._await_answer(leaf_id, pending, answer_wait_s):
                loaded = await self._read(
                    chat.chat_id, leaf_id, policy, after, through_ordinal, budget
                )
        history = [*loaded.messages, *([draft] if draft is not None else [])]
        system = bot.system_prompt
        if summary is not None:
            try:
                plan = self._plan(
                    system_with_summary(system, summary.text), history, policy, reply_budget
                )
                used: int | None = summary.through_ordinal
            except ContextTooLargeError:
                # The summary itself leaves no room for this message: go on without it.
                log.info("summary does not fit with this message", extra={"chat_id": chat.chat_id})
                plan, used = self._plan(system, history, policy, reply_budget), None
        else:
            plan, used = self._plan(system, history, policy, reply_budget), None
        dropped = plan.dropped_messages + loaded.older
        if summarize and policy is HistoryPolicy.SUMMARIZE and self._summarizer is not None:
            self._maybe_summarize(chat, bot, loaded, after)
        return BuiltContext(plan, policy, dropped, used)

    async def _read(
        self,
        chat_id: str,
        leaf_id: str,
        policy: HistoryPolicy,
        after: int,
        through: int,
        budget: int,
    ) -> LoadedHistory:
        messages = self._store.messages
        if policy is HistoryPolicy.FULL:
            return await messages.history(chat_id, leaf_id=leaf_id, after=after, through=through)
        return await messages.history(
            chat_id,
            leaf_id=leaf_id,
            after=after,
            through=through,
            budget=budget,
            cost=self._tokens.message_tokens,
        )

    @staticmethod
    def _answer_pending(loaded: LoadedHistory, ordinal: int) -> str | None:
        """The id of the question just before the one at `ordinal` on its path when that
        question is recent and unanswered (its answer will come between the two)."""
        path = loaded.messages
        if len(path) < 2 or path[-1].ordinal != ordinal or path[-2].role != "user":
            return None
        previous = path[-2].ordinal
        if now_ms() - loaded.created_ms.get(previous, 0) > _ANSWER_PENDING_MS:
            return None
        return loaded.ids.get(previous)

    async def _await_answer(self, question_id: str, previous_id: str, wait_s: float) -> bool:
        """Wait up to `wait_s` (half of the caller's time left at most: the turn needs the rest)
        for the answer to `previous_id` to come before `question_id`; True once it has."""
        left = remaining_s()
        if left is not None:
            wait_s = min(wait_s, left / 2)
        until = time.monotonic() + wait_s
        while time.monotonic() < until:
            await asyncio.sleep(_ANSWER_POLL_S)
            if await self._store.messages.parent_of(question_id) not in (previous_id, None):
                return True
        return False

    def _plan(
        self,
        system: str,
        history: list[StoredMessage],
        policy: HistoryPolicy,
        reply_budget: int,
    ) -> ContextPlan:
        return build_context(
            system_prompt=system,
            history=history,
            policy=policy,
            window=self._window,
            reply_budget=reply_budget,
            fmt=self._tokens,
        )

    def _maybe_summarize(
        self, chat: ChatDoc, bot: BotProfile, loaded: LoadedHistory, after: int
    ) -> None:
        if not loaded.messages:
            return
        costs = [self._tokens.message_tokens(m.role, m.token_count) for m in loaded.messages]
        if loaded.complete and sum(costs) <= bot.history.summarize_at * self._window:
            return
        newest_first = [
            (m.ordinal, m.role, cost)
            for m, cost in zip(reversed(loaded.messages), reversed(costs), strict=True)
        ]
        boundary = recent_boundary(newest_first, int(bot.history.keep_recent * self._window))
        if boundary is None or (loaded.complete and boundary <= loaded.messages[0].ordinal):
            return  # everything unsummarized is recent
        assert self._summarizer is not None
        self._summarizer.request(chat=chat, bot=bot, after=after, before=boundary)
