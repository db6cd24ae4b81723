"""The shared rate limits' arithmetic (no I/O): one window per user and minute with the requests
admitted and the tokens spent; the limit is a sliding window, the previous minute's counts
weighted by the part of it still inside the last 60 s, plus this minute's."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["WINDOW_S", "Budgets", "QuotaDecision", "quota_decision"]

WINDOW_S = 60


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    allowed: bool
    exceeded: str = ""  # "requests" | "tokens"
    retry_after_s: float = 0.0
    requests_remaining: int = 0
    tokens_remaining: int = 0
    resets_at_s: float = 0.0  # a budget's: when its period ends


@dataclass(frozen=True, slots=True)
class Budgets:
    """Requests and tokens a user, and a tenant, may spend per period; 0: no budget."""

    period_s: int = 86_400
    user_requests: int = 0
    user_tokens: int = 0
    tenant_requests: int = 0
    tenant_tokens: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.user_requests or self.user_tokens) or self.tenant_enabled

    @property
    def tenant_enabled(self) -> bool:
        return bool(self.tenant_requests or self.tenant_tokens)


def _wait_s(previous: float, current: float, elapsed: float, budget: float) -> float:
    """Seconds until `previous * weight + current <= budget`, where the previous minute's weight
    falls from 1 - elapsed to 0 over the rest of this minute and `current` then becomes the
    previous minute's count in turn."""
    rest = 1.0 - elapsed
    if current <= budget:
        if previous <= 0:
            return 0.0
        return max(0.0, WINDOW_S * (rest - (budget - current) / previous))
    return WINDOW_S * rest + WINDOW_S * (1.0 - max(budget, 0.0) / current)


def quota_decision(
    *,
    previous: tuple[int, int],
    current: tuple[int, int],
    elapsed: float,
    requests_per_minute: int,
    tokens_per_minute: int,
) -> QuotaDecision:
    """Whether a request whose own count is already in `current` (requests, tokens) may go on.

    `elapsed` is the share of the current minute that has passed. A limit of 0 is no limit.
    """
    weight = 1.0 - elapsed
    requests = previous[0] * weight + current[0]
    tokens = previous[1] * weight + current[1]
    requests_left = max(0, math.floor(requests_per_minute - requests)) if requests_per_minute else 0
    tokens_left = max(0, math.floor(tokens_per_minute - tokens)) if tokens_per_minute else 0
    if requests_per_minute and requests > requests_per_minute:
        wait = _wait_s(previous[0], current[0] - 1, elapsed, requests_per_minute - 1)
        return QuotaDecision(False, "requests", wait, 0, tokens_left)
    if tokens_per_minute and tokens >= tokens_per_minute:
        wait = _wait_s(previous[1], current[1], elapsed, tokens_per_minute - 1)
        return QuotaDecision(False, "tokens", wait, requests_left, 0)
    return QuotaDecision(True, "", 0.0, requests_left, tokens_left)
