"""Admission control: refuse a turn early and clearly rather than queue it without bound.

- `RateLimiter`: requests and tokens per minute per user, and budgets of requests and tokens
  per period per user and per tenant, counted by the session service in MongoDB, so the limits
  hold across every gateway replica (429 with Retry-After; a budget's names its reset time). A
  turn's budgets are reserved once its prompt is known (`reserve`): the request and its tokens
  (the prompt's and the reply's cap) in one step, settled from its result.
- `QueueMonitor`: the depth of the queue to the workers, read from Kafka as the lag of the
  workers' consumer group (requests queued or being generated; a worker commits a request only
  once its result is out), refreshed in the background; over `max_depth`, 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from parley.v1 import session_pb2, types_pb2
from parley_common.ids import new_id
from parley_common.timeutil import now_ms
from parley_gateway.auth import Principal
from parley_gateway.errors import ApiError
from parley_gateway.session_client import SessionClient

__all__ = ["QueueMonitor", "RateLimiter"]

log = logging.getLogger(__name__)

_STALE_AFTER_S = 10.0


class RateLimiter:
    def __init__(
        self,
        session: SessionClient,
        *,
        requests_per_minute: int,
        tokens_per_minute: int,
        budgets: session_pb2.Budgets | None = None,
    ) -> None:
        self._session = session
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.budgets = budgets or session_pb2.Budgets()

    @property
    def budgeted(self) -> bool:
        b = self.budgets
        return bool(b.user_requests or b.user_tokens or b.tenant_requests or b.tenant_tokens)

    @property
    def _token_budgeted(self) -> bool:
        return bool(self.budgets.user_tokens or self.budgets.tenant_tokens)

    async def admit(self, principal: Principal, *, budgets: bool = False) -> None:
        """Count one request of `principal` against the per-minute limits, and with `budgets`
        against the request budgets too (a request no turn follows: embeddings); raise 429
        when it is over a limit."""
        budgets = budgets and self.budgeted
        if not (self.requests_per_minute or self.tokens_per_minute or budgets):
            return
        decision = await self._session.consume_quota(
            session_pb2.ConsumeQuotaRequest(
                user_id=principal.user_id,
                requests_per_minute=self.requests_per_minute,
                tokens_per_minute=self.tokens_per_minute,
                tenant_id=principal.tenant_id,
                budgets=self.budgets if budgets else None,
            )
        )
        if not decision.allowed:
            raise self._refusal(decision)

    async def reserve(
        self, principal: Principal, *, tokens: int, hold_s: float, saved: bool
    ) -> types_pb2.BudgetHold | None:
        """Reserve a turn against the budgets: one request and, with a token budget, `tokens`
        (its prompt and its reply's cap), held for at most `hold_s` unless its result settles
        them first. None when no token is held. `saved`: the question is stored (said in the
        429, as the turn can be retried with the same request id)."""
        if not self.budgeted:
            return None
        hold = (
            types_pb2.BudgetHold(hold_id=new_id(), tokens=tokens) if self._token_budgeted else None
        )
        decision = await self._session.consume_quota(
            session_pb2.ConsumeQuotaRequest(
                user_id=principal.user_id,
                tenant_id=principal.tenant_id,
                budgets=self.budgets,
                reserve_tokens=hold.tokens if hold else 0,
                hold_id=hold.hold_id if hold else "",
                hold_expires_unix_ms=now_ms() + int(hold_s * 1000) if hold else 0,
            )
        )
        if not decision.allowed:
            raise self._refusal(decision, needs=tokens, saved=saved)
        return hold

    def _refusal(
        self, decision: session_pb2.ConsumeQuotaResponse, *, needs: int = 0, saved: bool = False
    ) -> ApiError:
        retry_after = max(1, math.ceil(decision.retry_after_ms / 1000))
        if decision.exceeded in _BUDGETS:
            return self._over_budget(decision, retry_after, needs=needs, saved=saved)
        if decision.exceeded == "tokens":
            message = (
                f"rate limit reached: {self.tokens_per_minute} tokens per minute; "
                f"retry after {retry_after} s"
            )
        else:
            message = (
                f"rate limit reached: {self.requests_per_minute} requests per minute; "
                f"retry after {retry_after} s"
            )
        return ApiError(
            429,
            "rate_limited",
            message,
            retry_after_s=retry_after,
            code=f"{decision.exceeded or 'requests'}_per_minute",
        )

    def _over_budget(
        self,
        decision: session_pb2.ConsumeQuotaResponse,
        retry_after: int,
        *,
        needs: int,
        saved: bool,
    ) -> ApiError:
        whose, what = decision.exceeded.split("_", 1)
        limit = getattr(self.budgets, decision.exceeded)
        resets = datetime.fromtimestamp(decision.resets_at_ms / 1000, UTC)
        spent = "is spent"
        if what == "tokens" and needs:
            spent = (
                f"has fewer than the {needs} tokens this request may use (its prompt and its "
                "reply's max_tokens) left, counting those held by requests in flight"
            )
        retry = "your message was saved: retry with the same request_id after" if saved else ""
        return ApiError(
            429,
            "budget_exceeded",
            f"the {whose}'s budget of {limit} {what} per {_period(self.budgets.period_s)} "
            f"{spent}; {retry or 'it resets at'} {resets.isoformat(timespec='seconds')} "
            f"(in {retry_after} s)",
            retry_after_s=retry_after,
            code=f"{whose}_{what}_budget",
            details=[
                {
                    "budget": decision.exceeded,
                    "limit": str(limit),
                    "period_s": str(self.budgets.period_s),
                    "resets_at": resets.isoformat(timespec="seconds"),
                    **({"tokens_needed": str(needs)} if what == "tokens" and needs else {}),
                }
            ],
        )


_BUDGETS = frozenset({"user_requests", "user_tokens", "tenant_requests", "tenant_tokens"})


def _period(seconds: int) -> str:
    for unit, length in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds == length:
            return unit
        if seconds % length == 0:
            return f"{seconds // length} {unit}s"
    return f"{seconds} s"


class QueueMonitor:
    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str,
        group: str,
        max_depth: int,
        refresh_s: float,
        local_in_flight: Callable[[], int],
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._group = group
        self.max_depth = max_depth
        self._refresh_s = refresh_s
        self._local = local_in_flight
        self._lag = 0
        self._measured_at = 0.0
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.max_depth:
            return
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, request_timeout_ms=5_000
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, request_timeout_ms=5_000
        )
        await self._admin.start()
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="queue-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    @property
    def depth(self) -> int:
        """The workers' queue as last measured, or this gateway's own requests in flight when
        they are more (they count at once, the lag only at the next measurement)."""
        fresh = time.monotonic() - self._measured_at < _STALE_AFTER_S
        return max(self._lag if fresh else 0, self._local())

    def check(self) -> None:
        """Raise 503 when the queue to the workers is deeper than allowed."""
        if not self.max_depth:
            return
        depth = self.depth
        if depth >= self.max_depth:
            raise ApiError(
                503,
                "overloaded",
                f"the workers are busy ({depth} requests queued or running, the limit is "
                f"{self.max_depth}); retry after the Retry-After delay",
                retry_after_s=max(2, math.ceil(2 * self._refresh_s)),
            )

    async def _run(self) -> None:
        while True:
            try:
                self._lag = await asyncio.wait_for(self._measure(), timeout=5.0)
                self._measured_at = time.monotonic()
            except Exception as exc:
                log.warning("could not read the workers' lag", extra={"error": repr(exc)})
            await asyncio.sleep(self._refresh_s)

    async def _measure(self) -> int:
        assert self._admin is not None
        assert self._consumer is not None
        described = await self._admin.describe_topics([self._topic])
        tps = [
            TopicPartition(self._topic, p["partition"])
            for topic in described
            if topic["error_code"] == 0
            for p in topic["partitions"]
        ]
        if not tps:
            return 0
        committed = await self._admin.list_consumer_group_offsets(self._group, partitions=tps)
        ends = await self._consumer.end_offsets(tps)
        missing = [tp for tp in tps if tp not in committed or committed[tp].offset < 0]
        starts = await self._consumer.beginning_offsets(missing) if missing else {}
        lag = 0
        for tp in tps:
            done = committed[tp].offset if tp not in starts else starts[tp]
            lag += max(0, ends[tp] - done)
        return lag
