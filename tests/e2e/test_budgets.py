"""Budgets on two gateway replicas that share them: 50 concurrent first requests of a new user
against a budget of 10 requests a period let 10 through, whichever replica they reach; the 429
names the budget and its reset, with Retry-After. Tokens are reserved with the turn (its prompt
and its max_tokens): concurrent requests of a new user cannot together spend more than a token
budget, and a cancelled request gives back what it did not use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from parley_devstack.platform import Platform
from tests.conftest import eventually
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
BUDGET = 10
CHEAP = {"message": "hi", "max_tokens": 1, "no_cache": True}
TOKENS = 1000
# Greedy decoding of the tiny model runs to max_tokens: each answer uses all it reserved.
LONG = {"message": "Go on and on", "temperature": 0, "no_cache": True}


@pytest.fixture(scope="module")
def budgeted(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    env = {"BUDGET_USER_REQUESTS": str(BUDGET), "BUDGET_PERIOD_S": "3600"}
    with extra_gateways(platform, tmp_path_factory.mktemp("budgets"), 2, env) as gateways:
        yield [gateway_url(g) for g in gateways]


def test_fifty_concurrent_first_requests_against_a_budget_of_ten(
    budgeted: list[str], new_user: NewUser
) -> None:
    user = new_user("budgeted")
    auth = {"Authorization": user.headers["Authorization"]}

    def ask(i: int) -> httpx.Response:
        return httpx.post(f"{budgeted[i % 2]}/chat", json=CHEAP, headers=auth, timeout=180)

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(ask, range(50)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == BUDGET, codes
    assert codes.count(429) == 50 - BUDGET, codes
    refused = next(r for r in responses if r.status_code == 429)
    error = refused.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert f"budget of {BUDGET} requests per hour" in error["message"]
    resets_at = datetime.fromisoformat(error["details"][0]["resets_at"])
    assert resets_at.minute == 0
    assert resets_at.second == 0
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # Another user has a budget of their own.
    other = httpx.post(
        f"{budgeted[0]}/chat", json=CHEAP, headers=dict(new_user("other").headers), timeout=180
    )
    assert other.status_code == 200, other.text


@pytest.fixture(scope="module")
def token_budgeted(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[str]]:
    env = {"BUDGET_USER_TOKENS": str(TOKENS), "BUDGET_PERIOD_S": "3600"}
    with extra_gateways(platform, tmp_path_factory.mktemp("tokens"), 2, env) as gateways:
        yield [gateway_url(g) for g in gateways]


def test_concurrent_requests_of_a_new_user_cannot_together_pass_a_token_budget(
    token_budgeted: list[str], new_user: NewUser
) -> None:
    auth = {"Authorization": new_user("token-budgeted").headers["Authorization"]}

    def ask(i: int) -> httpx.Response:
        body = {**LONG, "max_tokens": 200}
        return httpx.post(f"{token_budgeted[i % 2]}/chat", json=body, headers=auth, timeout=300)

    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(ask, range(12)))
    answered = [r.json()["answer"] for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(answered) + len(refused) == 12, [r.text for r in responses]
    used = [a["usage"]["total_tokens"] for a in answered]
    # Each holds its prompt + 200 until its answer, which uses all of them: at most
    # TOKENS // (prompt + 200) pass, and together they stay within the budget.
    prompt = answered[0]["usage"]["prompt_tokens"]
    assert len(answered) == TOKENS // (prompt + 200), used
    assert sum(used) <= TOKENS, used
    error = refused[0].json()["error"]
    assert error["type"] == "budget_exceeded"
    assert f"the user's budget of {TOKENS} tokens per hour" in error["message"]
    assert "retry with the same request_id" in error["message"]  # the question was kept
    details = error["details"][0]
    assert details["budget"] == "user_tokens"
    assert int(details["tokens_needed"]) == prompt + 200
    assert datetime.fromisoformat(details["resets_at"]).minute == 0


def test_a_cancelled_requests_reservation_comes_back(
    token_budgeted: list[str], new_user: NewUser
) -> None:
    user = new_user("token-canceller")
    url = token_budgeted[0]
    auth = {"Authorization": user.headers["Authorization"]}
    with httpx.Client(base_url=url, headers=auth, timeout=120) as client:
        submitted = client.post("/chat?mode=async", json={**LONG, "max_tokens": 900})
        assert submitted.status_code == 202, submitted.text
        completion_id = submitted.json()["completion_id"]
        eventually(
            lambda: client.get(f"/completions/{completion_id}").json()["state"] == "running",
            what="running",
        )
        # Its prompt + 900 are held: another 200 do not fit while it runs.
        held = client.post("/chat", json={**LONG, "max_tokens": 200})
        assert held.status_code == 429, held.text
        assert held.json()["error"]["details"][0]["budget"] == "user_tokens"
        assert client.post(f"/completions/{completion_id}/cancel").status_code == 202

        def final() -> dict[str, Any] | None:
            got: dict[str, Any] = client.get(f"/completions/{completion_id}").json()
            return got if got["state"] == "cancelled" else None

        cancelled = eventually(final, what="cancelled")
        assert cancelled["answer"]["usage"]["completion_tokens"] < 900 - 200
        # What it did not use comes back once its result is stored.
        again = eventually(
            lambda: (
                r
                if (r := client.post("/chat", json={**LONG, "max_tokens": 200})).status_code != 429
                else None
            ),
            timeout=30,
            what="the hold given back",
        )
        assert again.status_code == 200, again.text
