"""Rate limits and admission control on two gateway replicas that share one limit: requests and
tokens per minute per user (429 with Retry-After, whichever replica is asked), and a full queue
to the workers (503 with Retry-After) instead of waiting without bound."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from httpx_ws import connect_ws

from parley_devstack.platform import Platform
from tests.conftest import eventually
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
RPM = 6
TPM = 500
DEPTH = 2
CHEAP = {"message": "hi", "max_tokens": 1, "no_cache": True}
LONG = {"message": "count on", "max_tokens": 2000, "temperature": 0, "no_cache": True}


@pytest.fixture(scope="module")
def replicas(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two replicas sharing one rate limit."""
    env = {
        "RATE_LIMIT_REQUESTS_PER_MINUTE": str(RPM),
        "RATE_LIMIT_TOKENS_PER_MINUTE": str(TPM),
    }
    with extra_gateways(platform, tmp_path_factory.mktemp("limits"), 2, env) as gateways:
        yield [gateway_url(g) for g in gateways]


@pytest.fixture(scope="module")
def shallow(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two replicas that refuse work beyond a queue of DEPTH requests."""
    env = {"MAX_QUEUE_DEPTH": str(DEPTH), "QUEUE_DEPTH_REFRESH_S": "0.5"}
    with extra_gateways(platform, tmp_path_factory.mktemp("queue"), 2, env) as gateways:
        yield [gateway_url(g) for g in gateways]


def _as(user: httpx.Client, url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url, headers={"Authorization": user.headers["Authorization"]}, timeout=60
    )


def _refusals(urls: list[str], reason: str) -> float:
    """The replicas' parley_gateway_admission_refusals_total{reason=...}, summed."""
    total = 0.0
    for url in urls:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith(f'parley_gateway_admission_refusals_total{{reason="{reason}"}}'):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _retry_after(response: httpx.Response) -> int:
    value = int(response.headers["Retry-After"])
    assert 1 <= value <= 120
    return value


def test_requests_per_minute_hold_across_replicas(replicas: list[str], new_user: NewUser) -> None:
    user = new_user("limited")
    a, b = (_as(user, url) for url in replicas)
    refused_before = _refusals(replicas, "requests_per_minute")
    for client in itertools.islice(itertools.cycle([a, b]), RPM):
        allowed = client.post("/chat", json=CHEAP)
        assert allowed.status_code == 200, allowed.text
    for client in (a, b):
        refused = client.post("/chat", json=CHEAP)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["type"] == "rate_limited"
        assert f"{RPM} requests per minute" in error["message"]
        _retry_after(refused)
    # Every way of starting a turn is counted; reading is not.
    assert a.post("/chat?mode=async", json=CHEAP).status_code == 429
    with pytest.raises(openai.RateLimitError) as sdk_refused:
        openai.OpenAI(
            base_url=f"{replicas[1]}/v1",
            api_key=user.headers["Authorization"].removeprefix("Bearer "),
            max_retries=0,
        ).chat.completions.create(
            model="parley-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert sdk_refused.value.code == "rate_limit_exceeded"
    assert (sdk_refused.value.body or {})["type"] == "requests"  # type: ignore[index]
    assert int(sdk_refused.value.response.headers["Retry-After"]) >= 1
    with connect_ws(f"{replicas[0]}/chat/ws", user) as socket:
        assert socket.receive_json(timeout=10)["type"] == "ready"
        socket.send_json({"type": "message", **CHEAP})
        frame = socket.receive_json(timeout=10)
        assert frame["error"]["type"] == "rate_limited"
        assert frame["error"]["retry_after_s"] >= 1
    assert a.get("/chats").status_code == 200
    assert len(a.get("/chats").json()["chats"]) == RPM
    assert _refusals(replicas, "requests_per_minute") - refused_before == 5
    # The limit is per user: another user is not held back by this one.
    other = _as(new_user("unlimited"), replicas[1])
    assert other.post("/chat", json=CHEAP).status_code == 200
    # The platform's own gateway has no limit configured.
    assert user.post("/chat", json=CHEAP).status_code == 200
    for client in (a, b, other):
        client.close()


def test_tokens_per_minute(replicas: list[str], new_user: NewUser) -> None:
    user = new_user("spender")
    a, b = (_as(user, url) for url in replicas)
    big = a.post("/chat", json={**LONG, "max_tokens": TPM})
    assert big.status_code == 200, big.text
    usage = big.json()["answer"]["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] > TPM

    # Tokens are counted when the answer is recorded (from the results topic).
    def refused() -> httpx.Response | None:
        response = b.post("/chat", json=CHEAP)
        return response if response.status_code == 429 else None

    response = eventually(refused, timeout=10, what="a 429 for tokens")
    assert f"{TPM} tokens per minute" in response.json()["error"]["message"]
    _retry_after(response)
    sdk = openai.OpenAI(
        base_url=f"{replicas[0]}/v1",
        api_key=user.headers["Authorization"].removeprefix("Bearer "),
        max_retries=0,
    )
    with pytest.raises(openai.RateLimitError) as sdk_refused:
        sdk.chat.completions.create(
            model="parley-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert (sdk_refused.value.body or {})["type"] == "tokens"  # type: ignore[index]
    assert _refusals(replicas, "tokens_per_minute") >= 2
    a.close()
    b.close()


def test_full_queue_is_refused_with_503(shallow: list[str], new_user: NewUser) -> None:
    filler, bystander = new_user("queue-filler"), new_user("bystander")
    a, b = _as(filler, shallow[0]), _as(bystander, shallow[1])
    # What earlier tests left to the workers is done first.
    eventually(lambda: b.post("/chat", json=CHEAP).status_code == 200, what="an idle queue")
    refused_before = _refusals(shallow, "queue_full")
    submitted = []
    for _ in range(DEPTH):
        response = a.post("/chat?mode=async", json=LONG)
        assert response.status_code == 202, response.text
        submitted.append(response.json()["completion_id"])
    try:
        # The replica that queued them knows at once ...
        local = a.post("/chat", json=CHEAP)
        assert local.status_code == 503, local.text
        assert local.json()["error"]["type"] == "overloaded"
        _retry_after(local)
        # ... the other one from the workers' consumer lag in Kafka, read every 0.5 s.
        time.sleep(1.5)
        remote = b.post("/chat", json=CHEAP)
        assert remote.status_code == 503, remote.text
        assert f"the limit is {DEPTH}" in remote.json()["error"]["message"]
        _retry_after(remote)
        with pytest.raises(openai.InternalServerError) as sdk_refused:
            openai.OpenAI(
                base_url=f"{shallow[1]}/v1",
                api_key=bystander.headers["Authorization"].removeprefix("Bearer "),
                max_retries=0,
            ).chat.completions.create(
                model="parley-tiny", messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
        assert sdk_refused.value.status_code == 503
        assert sdk_refused.value.code == "overloaded"
        assert _refusals(shallow, "queue_full") - refused_before == 3
    finally:
        for completion_id in submitted:
            a.post(f"/completions/{completion_id}/cancel")

    def cancelled(completion_id: str) -> bool:
        return bool(a.get(f"/completions/{completion_id}").json()["state"] == "cancelled")

    for completion_id in submitted:
        eventually(lambda c=completion_id: cancelled(c), timeout=20, what="cancelled")  # type: ignore[misc]
    # Room again once the workers are done with them.
    eventually(
        lambda: b.post("/chat", json=CHEAP).status_code == 200, timeout=10, what="room again"
    )
    a.close()
    b.close()
