"""The session service's domain: chats, messages, bot profiles and context building. No I/O."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "BotProfile",
    "ChatNotFoundError",
    "ContextPlan",
    "HistoryPolicy",
    "InvalidArgumentError",
    "StoredMessage",
    "build_context",
]


class ChatNotFoundError(LookupError):
    """The chat does not exist or belongs to someone else (the two are not told apart)."""


class InvalidArgumentError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class HistoryPolicy(StrEnum):
    FULL = "full"
    TRUNCATE = "truncate"
    SUMMARIZE = "summarize"


@dataclass(frozen=True, slots=True)
class BotProfile:
    bot_id: str
    name: str
    system_prompt: str
    model: str
    history_policy: HistoryPolicy = HistoryPolicy.TRUNCATE
    max_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    cache_scope: str = "user"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    ordinal: int
    role: str  # "user" | "assistant" | "system"
    content: str
    token_count: int


@dataclass(frozen=True, slots=True)
class ContextPlan:
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, content), system first
    prompt_tokens: int = 0
    dropped_messages: int = 0


def build_context(
    *,
    system_prompt: str,
    history: Sequence[StoredMessage],
    policy: HistoryPolicy,
    window: int,
    reply_budget: int,
    count_tokens: Callable[[str], int],
    per_message_overhead: int = 4,
) -> ContextPlan:
    """What the model sees: the system prompt, then as much history as the policy allows.

    `history` is in order and ends with the latest user turn, which is always kept, as is the
    system prompt. `truncate` drops the oldest turns, whole, until the rest fits the window minus
    the reply budget; `full` keeps everything (the engine refuses what does not fit).
    """
    system_cost = count_tokens(system_prompt) + per_message_overhead if system_prompt else 0
    costs = [m.token_count + per_message_overhead for m in history]
    keep_from = 0
    if policy is not HistoryPolicy.FULL and history:
        budget = window - reply_budget - system_cost
        total = sum(costs)
        # Never drop the latest user turn, even when it alone is over budget.
        while total > budget and keep_from < len(history) - 1:
            total -= costs[keep_from]
            keep_from += 1
    kept = history[keep_from:]
    messages: list[tuple[str, str]] = []
    if system_prompt:
        messages.append(("system", system_prompt))
    messages.extend((m.role, m.content) for m in kept)
    return ContextPlan(
        messages=messages,
        prompt_tokens=system_cost + sum(costs[keep_from:]),
        dropped_messages=keep_from,
    )
