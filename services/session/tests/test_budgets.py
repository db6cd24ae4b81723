"""Budgets on the real MongoDB through the service's gRPC API: a request is reserved atomically
(concurrent first requests of a new user cannot together pass the budget), a refusal names the
budget and its reset, a user's and a tenant's budgets both hold, and results add their tokens."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from parley.v1 import session_pb2
from parley_common.ids import new_id


def _consume(user_id: str, tenant_id: str = "", **budgets: int) -> session_pb2.ConsumeQuotaRequest:
    return session_pb2.ConsumeQuotaRequest(
        user_id=user_id, tenant_id=tenant_id, budgets=session_pb2.Budgets(**budgets)
    )


async def test_fifty_concurrent_first_requests_against_a_budget_of_ten(service: Any) -> None:
    user_id = await service.user("new")
    request = _consume(user_id, period_s=3600, user_requests=10)
    answers = await asyncio.gather(
        *(service.stub.ConsumeQuota(request, timeout=60) for _ in range(50))
    )
    allowed = [a for a in answers if a.allowed]
    assert len(allowed) == 10
    refused = [a for a in answers if not a.allowed]
    assert {a.exceeded for a in refused} == {"user_requests"}
    period_end_ms = (int(time.time()) // 3600 + 1) * 3600 * 1000
    assert all(a.resets_at_ms == period_end_ms for a in refused)
    assert all(0 < a.retry_after_ms <= 3600 * 1000 for a in refused)


async def test_a_tenant_budget_holds_for_all_its_users_and_refusals_cost_nothing(
    service: Any,
) -> None:
    tenant = f"t-{new_id()[:8]}"
    users = []
    for name in ("a", "b"):
        created = await service.stub.CreateUser(
            session_pb2.CreateUserRequest(name=name, tenant_id=tenant), timeout=10
        )
        users.append(created.user_id)
    budgets = {"period_s": 3600, "user_requests": 3, "tenant_requests": 4}
    outcomes = []
    for user_id in (users[0], users[0], users[0], users[0], users[1], users[1]):
        answer = await service.stub.ConsumeQuota(_consume(user_id, tenant, **budgets), timeout=10)
        outcomes.append(answer.exceeded or "ok")
    # a's fourth is refused by a's own budget and gives back nothing of the tenant's: b gets
    # the tenant's fourth request, then the tenant's budget is spent.
    assert outcomes == ["ok", "ok", "ok", "user_requests", "ok", "tenant_requests"]


async def test_results_add_their_tokens_to_the_budget(service: Any) -> None:
    user_id = await service.user("spender")
    budgets = {"period_s": 3600, "user_tokens": 100}
    first = await service.stub.ConsumeQuota(_consume(user_id, **budgets), timeout=10)
    assert first.allowed
    await service.completions.settle_budgets(user_id, 60 + 40, int(time.time() * 1000))
    spent = await service.stub.ConsumeQuota(_consume(user_id, **budgets), timeout=10)
    assert (spent.allowed, spent.exceeded) == (False, "user_tokens")


async def test_a_users_tokens_count_in_their_tenants_budget(service: Any) -> None:
    tenant = f"t-{new_id()[:8]}"
    a, b = [
        (
            await service.stub.CreateUser(
                session_pb2.CreateUserRequest(name=name, tenant_id=tenant), timeout=10
            )
        ).user_id
        for name in ("a", "b")
    ]
    budgets = {"period_s": 3600, "tenant_tokens": 100}
    assert (await service.stub.ConsumeQuota(_consume(a, tenant, **budgets), timeout=10)).allowed
    await service.completions.settle_budgets(a, 150, int(time.time() * 1000))
    refused = await service.stub.ConsumeQuota(_consume(b, tenant, **budgets), timeout=10)
    assert (refused.allowed, refused.exceeded) == (False, "tenant_tokens")
