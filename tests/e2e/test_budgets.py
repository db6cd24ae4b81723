"""Budgets on two gateway replicas that share them: 50 concurrent first requests of a new user
against a budget of 10 requests a period let 10 through, whichever replica they reach; the 429
names the budget and its reset, with Retry-After."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from parley_devstack.platform import Platform
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
BUDGET = 10
CHEAP = {"message": "hi", "max_tokens": 1, "no_cache": True}


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
