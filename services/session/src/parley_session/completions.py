"""Stateless (OpenAI-style) completions, asynchronous completions and the shared rate limits,
in plain values: `wire.py` converts them from and to protobuf, `stores/completions.py` and
`stores/quotas.py` keep them, `quotas.py` holds the limits' arithmetic."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from parley.v1 import envelopes_pb2
from parley_common.vocabulary import CompletionState, FinishReason, Role
from parley_session.domain import InvalidArgumentError, ModelNotFoundError, ToolCall
from parley_session.quotas import Budgets, QuotaDecision
from parley_session.retry import RetryPolicy
from parley_session.stores import Stores
from parley_session.stores._mongo import from_ms
from parley_session.stores.budgets import BudgetLimit, BudgetStore, Period
from parley_session.stores.completions import CompletionDoc, CompletionStore, FinishedCompletion
from parley_session.stores.quotas import QuotaStore
from parley_session.tokens import TokenCounter

__all__ = [
    "CompletionService",
    "ContextLengthExceededError",
    "ModelInfo",
    "PreparedCompletion",
    "ResultTracker",
    "TokenHold",
]

log = logging.getLogger(__name__)

MAX_MESSAGES = 1000
MAX_MESSAGE_CHARS = 100_000


class ContextLengthExceededError(InvalidArgumentError):
    """The client's messages and the reply budget do not fit the model's context window."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    created_ms: int
    context_window: int


@dataclass(frozen=True, slots=True)
class TokenHold:
    """Tokens to reserve with a request (its prompt's and its reply's cap), under `hold_id`
    until its result settles them or `expires_ms` passes."""

    hold_id: str
    tokens: int
    expires_ms: int


@dataclass(frozen=True, slots=True)
class PreparedCompletion:
    """A stateless completion checked against the model: its messages, what they cost, and the
    reply budget."""

    messages: list[tuple[str, str]]  # (role, content)
    prompt_tokens: int
    model: str
    max_tokens: int


def client_messages(messages: Sequence[tuple[Role | None, str]]) -> list[tuple[str, str]]:
    """A client's messages, checked; a role of None is one the wire did not know."""
    if not messages:
        raise InvalidArgumentError("messages", "at least one message is needed")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgumentError("messages", f"at most {MAX_MESSAGES} messages")
    converted: list[tuple[str, str]] = []
    for index, (role, content) in enumerate(messages):
        if role is None:
            raise InvalidArgumentError(
                f"messages[{index}].role", "must be system, user or assistant"
            )
        if len(content) > MAX_MESSAGE_CHARS:
            raise InvalidArgumentError(
                f"messages[{index}].content", f"longer than {MAX_MESSAGE_CHARS} characters"
            )
        converted.append((role.value, content))
    return converted


class CompletionService:
    """What the servicer's completion, model and quota RPCs do (the rules, not the wire)."""

    def __init__(
        self,
        stores: Stores,
        tokens: TokenCounter,
        *,
        model_name: str,
        context_window: int,
        default_max_tokens: int,
        retry: RetryPolicy,
        retention_s: float = 86_400.0,
    ) -> None:
        self.completions = CompletionStore(stores.db, retry=retry, retention_s=retention_s)
        self.quotas = QuotaStore(stores.db, retry=retry)
        self.budgets = BudgetStore(stores.db, retry=retry)
        self._stores = stores
        self._tokens = tokens
        self._model = model_name
        self._window = context_window
        self._default_max_tokens = default_max_tokens
        self._started_ms = int(time.time() * 1000)

    @classmethod
    def for_store(
        cls,
        store: Stores,
        tokens: TokenCounter,
        *,
        model_name: str,
        context_window: int,
        default_max_tokens: int,
        retention_s: float = 86_400.0,
    ) -> CompletionService:
        """The service on the session store's database, under its retry policy."""
        return cls(
            store,
            tokens,
            model_name=model_name,
            context_window=context_window,
            default_max_tokens=default_max_tokens,
            retry=store.retry,
            retention_s=retention_s,
        )

    async def ensure_indexes(self) -> None:
        await self.completions.ensure_indexes()
        await self.quotas.ensure_indexes()
        await self.budgets.ensure_indexes()

    def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(self._model, self._started_ms, self._window)]

    def prepare(
        self, model: str, messages: Sequence[tuple[Role | None, str]], max_tokens: int
    ) -> PreparedCompletion:
        if model and model != self._model:
            raise ModelNotFoundError(
                f"the model {model!r} does not exist; this platform serves {self._model!r}"
            )
        checked = client_messages(messages)
        max_tokens = max_tokens or self._default_max_tokens
        if max_tokens >= self._window:
            raise ContextLengthExceededError(
                "max_tokens", f"{max_tokens} does not fit this model's {self._window}-token window"
            )
        prompt_tokens = self._tokens.prompt_tokens(checked)
        if prompt_tokens + max_tokens > self._window:
            raise ContextLengthExceededError(
                "messages",
                f"this model's context window is {self._window} tokens; the messages are "
                f"{prompt_tokens} tokens and {max_tokens} are asked for the reply",
            )
        return PreparedCompletion(checked, prompt_tokens, self._model, max_tokens)

    async def create(
        self,
        user_id: str,
        completion_id: str,
        *,
        chat_id: str,
        message_id: str,
        model: str,
        request_params: bytes = b"",
    ) -> tuple[CompletionDoc, bool]:
        """Record an asynchronous completion before its request is queued; (it, whether this
        call recorded it). `request_params`: the submitting API's, kept as they are."""
        if not completion_id or len(completion_id) > 128:
            raise InvalidArgumentError("completion_id", "must be 1 to 128 characters")
        queued = CompletionDoc(
            completion_id,
            chat_id,
            message_id,
            model,
            CompletionState.QUEUED,
            request_params=request_params,
        )
        if chat_id:
            # The turn was answered before (a retry of a synchronous request): done already,
            # and no result will come again to finish it.
            messages = self._stores.messages
            answer = await messages.find_message(chat_id, completion_id, Role.ASSISTANT.value)
            if answer is not None:
                queued = CompletionDoc(
                    completion_id,
                    chat_id,
                    message_id,
                    model,
                    CompletionState.DONE,
                    content=answer.content,
                    finish_reason=FinishReason.parse(answer.finish_reason) or FinishReason.STOP,
                    completion_tokens=answer.token_count,
                    request_params=request_params,
                )
        return await self.completions.create(user_id, queued)

    async def get(self, user_id: str, completion_id: str) -> CompletionDoc | None:
        return await self.completions.get(user_id, completion_id)

    async def mark_running(self, user_id: str, completion_id: str) -> CompletionDoc | None:
        return await self.completions.mark_running(user_id, completion_id)

    async def consume_quota(
        self,
        user_id: str,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        tenant_id: str = "",
        budgets: Budgets | None = None,
        hold: TokenHold | None = None,
    ) -> QuotaDecision:
        """Reserve one request, and the `hold`'s tokens, against the budgets (the user's, then
        the tenant's), then count it against the per-minute limits; a refusal by a later one
        gives back the earlier reservations, so a refused request costs nothing. The tokens
        reserved are recorded under the hold's id, for the result to settle."""
        if not user_id:
            raise InvalidArgumentError("user_id", "required")
        if hold is not None and not hold.hold_id:
            raise InvalidArgumentError("hold_id", "required to reserve tokens")
        budgets = budgets or Budgets()
        limits = self._budget_limits(user_id, tenant_id, budgets)
        period = Period.now(budgets.period_s) if limits else None
        reserved: list[BudgetLimit] = []
        for limit in limits:
            assert period is not None
            tokens = hold.tokens if hold is not None and limit.tokens else 0
            exceeded = await self.budgets.reserve(limit, period, user_id, tokens)
            if exceeded == "tokens" and await self.budgets.release_expired(
                BudgetStore.key(limit, period), from_ms(int(time.time() * 1000))
            ):
                exceeded = await self.budgets.reserve(limit, period, user_id, tokens)
            if exceeded:
                await self._release(reserved, period, hold)
                resets_at = period.ends_at.timestamp()
                return QuotaDecision(
                    allowed=False,
                    exceeded=f"{limit.scope}_{exceeded}",
                    retry_after_s=max(0.0, resets_at - time.time()),
                    resets_at_s=resets_at,
                )
            reserved.append(limit)
        if requests_per_minute or tokens_per_minute:
            decision = await self.quotas.consume(
                user_id,
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
            )
            if not decision.allowed:
                if period is not None:
                    await self._release(reserved, period, hold)
                return decision
        else:
            decision = QuotaDecision(allowed=True)
        held = [BudgetStore.key(limit, period) for limit in reserved if limit.tokens and period]
        if hold is not None and held:
            await self.budgets.hold(
                hold.hold_id,
                user_id=user_id,
                keys=held,
                tokens=hold.tokens,
                expires_at=from_ms(hold.expires_ms),
            )
        return decision

    async def _release(
        self, reserved: list[BudgetLimit], period: Period, hold: TokenHold | None
    ) -> None:
        for limit in reserved:
            tokens = hold.tokens if hold is not None and limit.tokens else 0
            await self.budgets.release(limit, period, tokens)

    @staticmethod
    def _budget_limits(user_id: str, tenant_id: str, budgets: Budgets) -> list[BudgetLimit]:
        if budgets.period_s <= 0:
            return []
        limits = []
        if budgets.user_requests or budgets.user_tokens:
            limits.append(BudgetLimit("user", user_id, budgets.user_requests, budgets.user_tokens))
        if tenant_id and budgets.tenant_enabled:
            limits.append(
                BudgetLimit("tenant", tenant_id, budgets.tenant_requests, budgets.tenant_tokens)
            )
        return limits

    async def settle_budgets(self, result: envelopes_pb2.CompletionResult) -> None:
        """A result's tokens, counted in the budgets of its user and the user's tenant: its
        hold's budgets count what the answer used in place of what was held. A cached answer
        used no model time and costs nothing; a cancelled, failed or expired one what it used
        before it stopped (its usage)."""
        used = 0 if result.worker_id == "cache" else _used(result)
        if result.budget_hold.hold_id:
            await self.budgets.settle_hold(result.budget_hold.hold_id, used)
            return
        # A request queued without a hold (no token budget, or the session's own): what it
        # used is added to the budgets open when it finished.
        if not result.user_id or used <= 0:
            return
        at = from_ms(result.completed_unix_ms or int(time.time() * 1000))
        await self.budgets.settle(result.user_id, used, at)

    async def add_tokens(self, user_id: str, tokens: int) -> None:
        if not user_id:
            raise InvalidArgumentError("user_id", "required")
        await self.quotas.add_tokens(user_id, tokens, 0)


Handler = Callable[[envelopes_pb2.CompletionResult], Awaitable[None]]


def _used(result: envelopes_pb2.CompletionResult) -> int:
    return result.usage.prompt_tokens + result.usage.completion_tokens


def _finished(result: envelopes_pb2.CompletionResult) -> FinishedCompletion | None:
    """What a result sets on its completion; None for one that is no completion's."""
    finish = FinishReason.from_pb(result.finish_reason)
    if finish is None or not result.user_id:
        return None
    expired = finish is FinishReason.EXPIRED
    return FinishedCompletion(
        user_id=result.user_id,
        completion_id=result.request_id,
        finish_reason=finish,
        content=result.text,
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        error=result.error
        or ("the deadline passed before a worker could start it" if expired else ""),
        cached=result.worker_id == "cache",
        tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in result.tool_calls),
        cache_score=round(result.cache_score, 6),
        cache_reason=result.cache_reason,
    )


class ResultTracker:
    """The results topic's handler around the chat's own: after the answer is stored in its
    chat, the completion (if the request was asynchronous) is finished and the user's tokens of
    the minute are counted. Stateless results (no chat) only do the latter two."""

    def __init__(self, chats: Handler, service: CompletionService) -> None:
        self._chats = chats
        self._service = service

    async def __call__(self, result: envelopes_pb2.CompletionResult) -> None:
        if result.chat_id:
            await self._chats(result)
        done = _finished(result)
        if done is not None and await self._service.completions.finish(done):
            log.info("completion finished", extra={"request_id": result.request_id})
        await self._service.quotas.add_tokens(
            result.user_id, _used(result), result.completed_unix_ms
        )
        await self._service.settle_budgets(result)
