"""The session service's domain: bot profiles, messages, context building and summaries. No I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

__all__ = [
    "AlreadyExistsError",
    "AttachmentNotFoundError",
    "BotNotFoundError",
    "BotProfile",
    "ChatNotFoundError",
    "CompletionNotFoundError",
    "ContextPlan",
    "ContextTooLargeError",
    "HistoryParams",
    "HistoryPolicy",
    "InvalidArgumentError",
    "MessageNotFoundError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "PromptFormat",
    "StoredMessage",
    "SummaryPrompt",
    "ToolCall",
    "ToolResult",
    "UnauthenticatedError",
    "UserNotFoundError",
    "build_context",
    "check_message_fits",
    "prompt_text",
    "recent_boundary",
    "summary_prompt",
    "system_with_summary",
]


class ChatNotFoundError(LookupError):
    """The chat does not exist or belongs to someone else (the two are not told apart)."""


class BotNotFoundError(LookupError):
    """No bot profile with this id that the caller may see."""


class MessageNotFoundError(LookupError):
    """No such message in the chat."""


class CompletionNotFoundError(LookupError):
    """No asynchronous completion with this id for the caller."""


class UserNotFoundError(LookupError):
    """No such user, or one of another tenant than the caller's (the two are not told apart)."""


class ModelNotFoundError(LookupError):
    """A model this platform does not serve."""


class PermissionDeniedError(PermissionError):
    """The caller may see this object but not change it (a shared or built-in bot profile)."""


class AlreadyExistsError(Exception):
    """An object with this unique name exists (an account's e-mail address)."""


class UnauthenticatedError(Exception):
    """A credential that names no one: an ended session, a wrong password."""


class AttachmentNotFoundError(LookupError):
    """No attachment with this id in this chat (or not the caller's)."""


class InvalidArgumentError(ValueError):
    """`reason`, when set, names the refusal for clients to tell apart (an ErrorInfo reason on
    the wire): "unsupported_media_type", "attachment_limit", "image_input_unsupported"."""

    def __init__(self, field_name: str, message: str, *, reason: str = "") -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.description = message
        self.reason = reason


class ContextTooLargeError(InvalidArgumentError):
    """What must be sent does not fit the model's window (nothing is cut without saying so)."""


class HistoryPolicy(StrEnum):
    FULL = "full"
    TRUNCATE = "truncate"
    SUMMARIZE = "summarize"


@dataclass(frozen=True, slots=True)
class HistoryParams:
    summarize_at: float = 0.75  # share of the window the unsummarized history may fill
    keep_recent: float = 0.25  # share of the window that stays verbatim after a summary
    summary_max_tokens: int = 256


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
    cache_scope: str = "user"  # user | tenant | global | disabled
    cache_max_error_rate: float = 0.0  # the share of wrong cache hits accepted; 0: the deployment's
    avatar: str = ""
    description: str = ""
    history: HistoryParams = HistoryParams()
    owner_user_id: str = ""  # empty: shared (or built in)
    builtin: bool = False
    created_ms: int = 0
    updated_ms: int = 0

    @property
    def shared(self) -> bool:
        return not self.owner_user_id


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function an assistant's answer asked the client to call (arguments: a JSON object)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What the client's call `tool_call_id` returned."""

    tool_call_id: str
    content: str


@dataclass(frozen=True, slots=True)
class StoredMessage:
    ordinal: int
    role: str  # "user" | "assistant"
    content: str
    token_count: int
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's answer that is tool calls
    # A turn that answers the previous answer's tool calls: stored in a question's place (role
    # "user", no content), the model sees one tool message each.
    tool_results: tuple[ToolResult, ...] = ()


def prompt_text(m: StoredMessage) -> str:
    """The message as text, for counting its tokens and for summaries: tool calls and results as
    JSON, about what a chat template makes of them."""
    if m.tool_results:
        return json.dumps(
            [{"tool_call_id": r.tool_call_id, "content": r.content} for r in m.tool_results]
        )
    if m.tool_calls:
        calls = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
        return m.content + json.dumps(calls)
    return m.content


@dataclass(frozen=True, slots=True)
class ContextPlan:
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, content), system first
    prompt_tokens: int = 0
    dropped_messages: int = 0  # left out of the loaded history (the caller adds older ones)
    first_kept_ordinal: int = 0
    # The history's messages in `messages` (their tail), with their tool calls and results.
    kept: tuple[StoredMessage, ...] = ()


class PromptFormat(Protocol):
    """How a model counts: content tokens, and prompts rendered by its chat template."""

    fixed_tokens: int  # the template's tokens around the whole conversation

    def count(self, text: str) -> int: ...

    def message_tokens(self, role: str, content_tokens: int) -> int: ...

    def prompt_tokens(self, messages: Sequence[tuple[str, str]]) -> int: ...


def check_message_fits(
    *,
    system_prompt: str,
    content: str,
    content_tokens: int,
    window: int,
    reply_budget: int,
    fmt: PromptFormat,
) -> None:
    """Refuse a message that cannot fit the window even with no history at all."""
    budget = window - reply_budget
    head = [("system", system_prompt)] if system_prompt else []
    alone = fmt.prompt_tokens([*head, ("user", content)])
    if alone > budget:
        allowed = max(budget - (alone - content_tokens), 0)
        raise ContextTooLargeError(
            "content",
            f"message is {content_tokens} tokens; this model's window allows {allowed} "
            f"(a {window}-token window, {reply_budget} of them kept for the reply)",
        )


def build_context(
    *,
    system_prompt: str,
    history: Sequence[StoredMessage],
    policy: HistoryPolicy,
    window: int,
    reply_budget: int,
    fmt: PromptFormat,
) -> ContextPlan:
    """What the model sees: the system prompt, then as much history as the policy allows.

    `history` is in order and ends with the latest user turn. The prompt, counted exactly with the
    model's chat template, must leave `reply_budget` tokens of `window` for the answer. `truncate`
    (and `summarize`, over what its summary does not cover) keeps the newest whole turns that fit,
    always with the system prompt and the latest user turn; a latest turn that cannot fit even
    alone is refused, never cut. `full` keeps everything, or refuses when it does not fit.
    """
    if not history or history[-1].role != "user":
        raise ValueError("the history must end with the latest user turn")
    budget = window - reply_budget
    head = [("system", system_prompt)] if system_prompt else []

    def render(start: int) -> list[tuple[str, str]]:
        return head + [(m.role, prompt_text(m)) for m in history[start:]]

    check_message_fits(
        system_prompt=system_prompt,
        content=prompt_text(history[-1]),
        content_tokens=history[-1].token_count,
        window=window,
        reply_budget=reply_budget,
        fmt=fmt,
    )
    if policy is HistoryPolicy.FULL:
        messages = render(0)
        total = fmt.prompt_tokens(messages)
        if total > budget:
            raise ContextTooLargeError(
                "history_policy",
                f"the whole chat is {total} tokens; this model's window allows {budget} "
                f"(a {window}-token window, {reply_budget} of them kept for the reply): continue "
                "with the truncate or summarize policy, or start a new chat",
            )
        return ContextPlan(messages, total, 0, history[0].ordinal, tuple(history))

    # Turns start at user messages; a leading answer whose question is gone is not kept, nor are
    # tool results without the calls they answer.
    starts = [i for i, m in enumerate(history) if m.role == "user" and not m.tool_results]
    starts = starts or [len(history) - 1]
    fixed = fmt.fixed_tokens
    if system_prompt:
        fixed += fmt.message_tokens("system", fmt.count(system_prompt))
    suffix = [0] * (len(history) + 1)
    for i in range(len(history) - 1, -1, -1):
        m = history[i]
        suffix[i] = suffix[i + 1] + fmt.message_tokens(m.role, m.token_count)
    at = next((k for k, s in enumerate(starts) if fixed + suffix[s] <= budget), len(starts) - 1)
    total = fmt.prompt_tokens(render(starts[at]))
    while total > budget and at < len(starts) - 1:
        at += 1
        total = fmt.prompt_tokens(render(starts[at]))
    # The per-message estimate may overshoot for templates whose pieces interact: an older turn
    # that fits exactly is taken in.
    while at > 0:
        older = fmt.prompt_tokens(render(starts[at - 1]))
        if older > budget:
            break
        at, total = at - 1, older
    start = starts[at]
    return ContextPlan(render(start), total, start, history[start].ordinal, tuple(history[start:]))


def recent_boundary(newest_first: Sequence[tuple[int, str, int]], keep_tokens: int) -> int | None:
    """The ordinal of the oldest message that stays verbatim after a summary.

    `newest_first` is (ordinal, role, cost) from the latest user turn backwards. The recent block
    holds whole turns within `keep_tokens`, and at least the latest turn. None: no user turn.
    """
    spent = 0
    boundary: int | None = None
    for ordinal, role, cost in newest_first:
        spent += cost
        if boundary is not None and spent > keep_tokens:
            break
        if role == "user":
            boundary = ordinal
    return boundary


# Worded for small models too: SmolLM2-135M writes a real summary with this system prompt and
# task, and copies or invents transcript lines with a longer, more abstract one.
_SUMMARY_SYSTEM = "You are a helpful assistant that summarizes conversations."
_SUMMARY_TASK = (
    "Summarize this conversation in at most {words} words. Keep every name, number, date, fact "
    "and preference of the user."
)
_SUMMARY_HEADER = "Summary of the earlier conversation (older turns are not shown):"


def system_with_summary(system_prompt: str, summary: str) -> str:
    block = f"{_SUMMARY_HEADER}\n{summary.strip()}"
    return f"{system_prompt}\n\n{block}" if system_prompt else block


@dataclass(frozen=True, slots=True)
class SummaryPrompt:
    messages: list[tuple[str, str]]
    through_ordinal: int  # the last message the summary covers (an answer)


def summary_prompt(
    *,
    previous_summary: str,
    turns: Sequence[StoredMessage],
    window: int,
    max_tokens: int,
    fmt: PromptFormat,
) -> SummaryPrompt | None:
    """The request that folds `turns` (oldest first) into the previous summary.

    It covers whole turns up to an answer, as many as fit the window with `max_tokens` left for
    the summary; None when there is no answered turn to summarize. A single turn too long to fit
    is shortened, and the transcript says so.
    """
    answers = [i for i, m in enumerate(turns) if m.role == "assistant"]
    if not answers:
        return None
    # The task comes after the transcript: small models follow the instruction they read last.
    head = f"Summary so far:\n{previous_summary.strip()}\n\n" if previous_summary else ""
    head += "Conversation:\n"
    tail = "\n\n" + _SUMMARY_TASK.format(words=max(int(max_tokens * 0.6), 20))
    budget = window - max_tokens

    def request(upto: int, lines: list[str]) -> SummaryPrompt:
        return SummaryPrompt(
            [("system", _SUMMARY_SYSTEM), ("user", head + "\n".join(lines) + tail)],
            turns[upto].ordinal,
        )

    lines = [_line(m) for m in turns]
    base = fmt.prompt_tokens([("system", _SUMMARY_SYSTEM), ("user", head + tail)])
    # Estimate with the stored counts, then check exactly, dropping whole turns from the end.
    spent = base
    fits = -1
    for k, m in enumerate(turns):
        spent += m.token_count + 3  # the "User: " prefix and the line break
        if spent > budget:
            break
        if m.role == "assistant":
            fits = k
    candidates = [i for i in answers if i <= fits]
    while candidates:
        upto = candidates[-1]
        prompt = request(upto, lines[: upto + 1])
        if fmt.prompt_tokens(prompt.messages) <= budget:
            return prompt
        candidates.pop()
    # Not even the first answered turn fits: shorten its messages, saying so in the transcript.
    upto = answers[0]
    room = max(budget - base, 16)
    share = room / max(sum(m.token_count + 3 for m in turns[: upto + 1]), 1)
    shortened = [_line(m, keep=share) for m in turns[: upto + 1]]
    return request(upto, shortened)


def _line(m: StoredMessage, keep: float = 1.0) -> str:
    speaker = "Assistant" if m.role == "assistant" else "Tool" if m.tool_results else "User"
    content = prompt_text(m).strip()
    if keep < 1.0:
        cut = math.floor(len(content) * keep * 0.9)
        content = content[:cut].rstrip() + f" [… {len(content) - cut} characters cut]"
    return f"{speaker}: {content}"
