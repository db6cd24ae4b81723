"""Budgets on the real MongoDB through the service's gRPC API: a request is reserved atomically
(concurrent first requests of a new user cannot together pass the budget), a refusal names the
budget and its reset, a user's and a tenant's budgets both hold, and results add their tokens.
Tokens are reserved with the request (a hold) and settled once from the result: concurrent
holds cannot together pass the budget, a cancelled or cached answer gives back what it did not
use, and a hold whose result never comes is given back once it expires."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from parley.v1 import envelopes_pb2, session_pb2, types_pb2
from parley_common.envelopes import completion_result
from parley_common.ids import new_id


def _consume(user_id: str, tenant_id: str = "", **budgets: int) -> session_pb2.ConsumeQuotaRequest:
    return session_pb2.ConsumeQuotaRequest(
        user_id=user_id, tenant_id=tenant_id, budgets=session_pb2.Budgets(**budgets)
    )


def _holding(
    user_id: str, tokens: int, *, hold_id: str = "", expires_in_s: float = 600, **budgets: int
) -> session_pb2.ConsumeQuotaRequest:
    request = _consume(user_id, **budgets)
    request.reserve_tokens = tokens
    request.hold_id = hold_id or new_id()
    request.hold_expires_unix_ms = int((time.time() + expires_in_s) * 1000)
    return request


def _result(
    user_id: str,
    used: int = 0,
    *,
    hold: session_pb2.ConsumeQuotaRequest | None = None,
    finish: int = types_pb2.FINISH_REASON_STOP,
    worker_id: str = "w1",
) -> envelopes_pb2.CompletionResult:
    result = completion_result(
        request_id=new_id(),
        chat_id="",
        user_id=user_id,
        model="m",
        kind=envelopes_pb2.COMPLETION_KIND_CHAT,
        text="answer",
        finish_reason=finish,  # type: ignore[arg-type]
        usage=types_pb2.Usage(prompt_tokens=used // 2, completion_tokens=used - used // 2),
        worker_id=worker_id,
        completed_unix_ms=int(time.time() * 1000),
    )
    if hold is not None:
        result.budget_hold.CopyFrom(
            types_pb2.BudgetHold(hold_id=hold.hold_id, tokens=hold.reserve_tokens)
        )
    return result


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
    await service.completions.settle_budgets(_result(user_id, 60 + 40))
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
    await service.completions.settle_budgets(_result(a, 150))
    refused = await service.stub.ConsumeQuota(_consume(b, tenant, **budgets), timeout=10)
    assert (refused.allowed, refused.exceeded) == (False, "tenant_tokens")


async def test_concurrent_holds_cannot_together_pass_a_token_budget(service: Any) -> None:
    user_id = await service.user("holder")
    budgets = {"period_s": 3600, "user_tokens": 1000}
    answers = await asyncio.gather(
        *(
            service.stub.ConsumeQuota(_holding(user_id, 300, **budgets), timeout=60)
            for _ in range(20)
        )
    )
    assert sum(a.allowed for a in answers) == 3  # 3 x 300 held; a fourth would make 1200
    assert {a.exceeded for a in answers if not a.allowed} == {"user_tokens"}
    # More than the whole budget never fits, even for a new user.
    other = await service.user("greedy")
    too_many = await service.stub.ConsumeQuota(_holding(other, 1001, **budgets), timeout=10)
    assert (too_many.allowed, too_many.exceeded) == (False, "user_tokens")


async def test_a_result_settles_its_hold_once_to_what_it_used(service: Any) -> None:
    user_id = await service.user("settler")
    budgets = {"period_s": 3600, "user_tokens": 1000}
    first = _holding(user_id, 900, **budgets)
    assert (await service.stub.ConsumeQuota(first, timeout=10)).allowed
    held = await service.stub.ConsumeQuota(_holding(user_id, 200, **budgets), timeout=10)
    assert (held.allowed, held.exceeded) == (False, "user_tokens")
    # Cancelled after 100 tokens: the other 800 come back, once, however often it arrives.
    cancelled = _result(user_id, 100, hold=first, finish=types_pb2.FINISH_REASON_CANCELLED)
    for _ in range(3):
        await service.completions.settle_budgets(cancelled)
    assert (await service.stub.ConsumeQuota(_holding(user_id, 900, **budgets), timeout=10)).allowed
    refused = await service.stub.ConsumeQuota(_holding(user_id, 1, **budgets), timeout=10)
    assert (refused.allowed, refused.exceeded) == (False, "user_tokens")


async def test_a_cached_answer_costs_nothing(service: Any) -> None:
    user_id = await service.user("cached")
    budgets = {"period_s": 3600, "user_tokens": 1000}
    hold = _holding(user_id, 1000, **budgets)
    assert (await service.stub.ConsumeQuota(hold, timeout=10)).allowed
    await service.completions.settle_budgets(_result(user_id, 40, hold=hold, worker_id="cache"))
    assert (await service.stub.ConsumeQuota(_holding(user_id, 1000, **budgets), timeout=10)).allowed


async def test_a_hold_whose_result_never_comes_is_given_back_after_it_expires(
    service: Any,
) -> None:
    user_id = await service.user("lost")
    budgets = {"period_s": 3600, "user_tokens": 1000}
    lost = _holding(user_id, 800, expires_in_s=1.5, **budgets)
    assert (await service.stub.ConsumeQuota(lost, timeout=10)).allowed
    assert not (
        await service.stub.ConsumeQuota(_holding(user_id, 800, **budgets), timeout=10)
    ).allowed
    await asyncio.sleep(2)
    assert (await service.stub.ConsumeQuota(_holding(user_id, 800, **budgets), timeout=10)).allowed
    # Its result, late after all, counts what it used in full (300): 800 + 300 > 1000.
    await service.completions.settle_budgets(_result(user_id, 300, hold=lost))
    assert not (
        await service.stub.ConsumeQuota(_holding(user_id, 1, **budgets), timeout=10)
    ).allowed
