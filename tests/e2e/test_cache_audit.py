"""Every answer the semantic cache serves carries its decision (score and reason) on each surface
of the chat API and in the stored message; a bot profile's error rate sets the cache's threshold;
regenerating a served answer rejects its entry; a sampled hit is generated again and compared. Through the public API of the running platform."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_ws import connect_ws

from parley_cache.verifier import default_verifier
from parley_devstack.platform import Platform
from tests.conftest import eventually, parse_sse
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
COLLECTION = "parley_cache_all_minilm_l6_v2"


def _entries(platform: Platform, user: httpx.Client, bot_id: str = "") -> list[dict[str, Any]]:
    must: list[dict[str, Any]] = [
        {"key": "scope_key", "match": {"value": f"user:{user.user_id}"}}  # type: ignore[attr-defined]
    ]
    if bot_id:
        must.append({"key": "bot_id", "match": {"value": bot_id}})
    scroll = httpx.post(
        f"http://{platform.cache.env['QDRANT_ADDR']}/collections/{COLLECTION}/points/scroll",
        json={"filter": {"must": must}, "limit": 20, "with_payload": True},
    )
    assert scroll.status_code == 200, scroll.text
    points: list[dict[str, Any]] = scroll.json()["result"]["points"]
    return points


def _cached_hit(user: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    def hit() -> httpx.Response | None:
        asked = user.post("/chat", json=body)
        assert asked.status_code == 200, asked.text
        return asked if asked.json()["answer"]["cached"] else None

    return eventually(hit, timeout=60, what="a cache hit")


def _assistant_messages(user: httpx.Client, chat_id: str) -> list[dict[str, Any]]:
    def stored() -> list[dict[str, Any]] | None:
        messages = user.get(f"/chat/{chat_id}").json()["messages"]
        return [m for m in messages if m["role"] == "assistant"] or None

    return eventually(stored, what="the stored answer")


def test_a_hit_carries_its_score_and_reason_everywhere(
    platform: Platform, new_user: NewUser
) -> None:
    ida = new_user("ida")
    question = {"message": "How many moons does Jupiter have?", "max_tokens": 8}
    first = ida.post("/chat", json=question)
    assert first.status_code == 200, first.text
    assert "X-Parley-Cache-Score" not in first.headers
    assert _assistant_messages(ida, first.json()["chat_id"])[0]["cached"] is False

    # JSON: the answer's fields and the headers agree.
    hit = _cached_hit(ida, {**question, "request_id": "audit-json"})
    answer = hit.json()["answer"]
    assert answer["cache_reason"].startswith("verifier ")
    assert hit.headers["X-Parley-Cache-Score"] == f"{answer['cache_score']:.4f}"
    assert hit.headers["X-Parley-Cache-Reason"] == answer["cache_reason"]

    # The stored message keeps the decision (GET /chat/{id}), and so does a retry's replay.
    stored = _assistant_messages(ida, hit.json()["chat_id"])[0]
    assert stored["cached"] is True
    assert stored["cache_score"] == pytest.approx(answer["cache_score"], abs=1e-4)
    assert stored["cache_reason"] == answer["cache_reason"]
    replay = ida.post("/chat", json={**question, "request_id": "audit-json"})
    assert replay.status_code == 200, replay.text
    assert replay.json()["answer"]["cache_reason"] == answer["cache_reason"]
    assert replay.headers["X-Parley-Cache-Reason"] == answer["cache_reason"]

    # SSE: the headers come before the stream, the done event has the fields.
    streamed = ida.post("/chat", json={**question, "stream": True})
    assert streamed.status_code == 200, streamed.text
    done = next(data for event, data in parse_sse(streamed.text) if event == "done")
    assert done["cached"] is True
    assert streamed.headers["X-Parley-Cache-Reason"] == done["cache_reason"]
    assert streamed.headers["X-Parley-Cache-Score"] == f"{done['cache_score']:.4f}"

    # WebSocket: the done frame's answer.
    key = ida.headers["Authorization"].removeprefix("Bearer ")
    with httpx.Client() as plain, connect_ws(f"{platform.gateway_url}/chat/ws", plain) as ws:
        ws.send_json({"type": "auth", "api_key": key})
        assert ws.receive_json(timeout=10)["type"] == "ready"
        ws.send_json({"type": "message", **question})
        while (frame := ws.receive_json(timeout=30))["type"] != "done":
            assert frame["type"] in ("chat", "chunk"), frame
    assert frame["answer"]["cached"] is True
    assert frame["answer"]["cache_reason"].startswith("verifier ")
    assert frame["answer"]["cache_score"] > 0

    # An asynchronous completion's answer.
    submitted = ida.post("/chat", json=question, headers={"Prefer": "respond-async"})
    assert submitted.status_code == 202, submitted.text
    location = submitted.headers["Location"]

    def finished() -> dict[str, Any] | None:
        got: dict[str, Any] = ida.get(location).json()
        return got if got["state"] == "done" else None

    completed = eventually(finished, what="the completion done")["answer"]
    assert completed["cached"] is True
    assert completed["cache_reason"].startswith("verifier ")
    assert completed["cache_score"] > 0


def test_a_bot_profiles_error_rate_sets_the_threshold(
    platform: Platform, new_user: NewUser
) -> None:
    jon = new_user("jon")
    for bad in (0, 1, -0.1, 1.5, "a lot"):
        refused = jon.post("/bots", json={"name": "x", "cache_max_error_rate": bad})
        assert refused.status_code == 422, refused.text
        assert "cache_max_error_rate" in refused.text
    created = jon.post("/bots", json={"name": "Strict", "cache_max_error_rate": 0.001})
    assert created.status_code == 201, created.text
    strict = created.json()
    assert strict["cache_max_error_rate"] == 0.001
    lenient = jon.post("/bots", json={"name": "Lenient", "cache_max_error_rate": 0.4}).json()
    assert lenient["cache_max_error_rate"] == 0.4
    assert jon.get("/bots/default").json()["cache_max_error_rate"] is None
    calibration = default_verifier().weights.calibration
    assert calibration.threshold_for(0.001) == 1.0  # no measured threshold is that precise
    lenient_threshold = calibration.threshold_for(0.4)

    question = {"message": "What colour is a ripe banana?", "max_tokens": 8}
    for bot in (strict, lenient):
        asked = jon.post("/chat", json={**question, "bot_id": bot["bot_id"]})
        assert asked.status_code == 200, asked.text
        eventually(lambda b=bot: _entries(platform, jon, b["bot_id"]), what="the answer cached")
    # Reworded, its answer stored: the strict profile's chats are served only the identical
    # question (score 1.0), the lenient one's this too.
    reworded = {**question, "message": "What is the colour of a ripe banana?"}
    again = jon.post("/chat", json={**reworded, "bot_id": strict["bot_id"]})
    assert again.status_code == 200, again.text
    assert again.json()["answer"]["cached"] is False
    hit = _cached_hit(jon, {**reworded, "bot_id": lenient["bot_id"]})
    assert f">= {lenient_threshold:.3f}" in hit.json()["answer"]["cache_reason"]

    # null resets a profile to the deployment's rate.
    reset = jon.patch(f"/bots/{lenient['bot_id']}", json={"cache_max_error_rate": None})
    assert reset.status_code == 200, reset.text
    assert reset.json()["cache_max_error_rate"] is None
    out_of_range = jon.patch(f"/bots/{lenient['bot_id']}", json={"cache_max_error_rate": 2})
    assert out_of_range.status_code == 422, out_of_range.text


def test_regenerating_a_served_answer_rejects_its_entry(
    platform: Platform, new_user: NewUser
) -> None:
    kim = new_user("kim")
    question = {"message": "Which planet is closest to the sun?", "max_tokens": 8}
    assert kim.post("/chat", json=question).status_code == 200
    [entry] = eventually(lambda: _entries(platform, kim), what="the answer cached")
    hit = _cached_hit(kim, question).json()
    served = _assistant_messages(kim, hit["chat_id"])[0]
    assert served["cached"] is True

    regenerated = kim.post(f"/chat/{hit['chat_id']}/messages/{served['message_id']}/regenerate")
    assert regenerated.status_code == 200, regenerated.text
    assert regenerated.json()["answer"]["cached"] is False

    def entry_gone() -> bool:
        return entry["id"] not in {p["id"] for p in _entries(platform, kim)}

    eventually(entry_gone, what="the served entry evicted")


def test_a_sampled_hit_is_generated_again_and_compared(
    platform: Platform, new_user: NewUser, tmp_path: Path
) -> None:
    lea = new_user("lea")
    question = {"message": "Name the largest ocean on Earth.", "max_tokens": 8, "temperature": 0}
    assert lea.post("/chat", json=question).status_code == 200
    [entry] = eventually(lambda: _entries(platform, lea), what="the answer cached")
    env = {"CACHE_SAMPLE_SHARE": "1", "CACHE_TIMEOUT_S": "5"}
    with (
        extra_gateways(platform, tmp_path, 1, env) as [gateway],
        httpx.Client(base_url=gateway_url(gateway), headers=lea.headers, timeout=30) as sampled,
    ):
        hit = _cached_hit(sampled, question).json()

        def compared() -> dict[str, Any] | None:
            for line in gateway.log_path.read_text().splitlines():
                if "sampled cache hit compared" in line:
                    record: dict[str, Any] = json.loads(line)
                    return record
            return None

        record = eventually(compared, timeout=60, what="the sampled hit compared")
    # Greedy decoding of the same conversation: the worker's answer is the one served.
    assert record["entry_id"] == entry["id"]
    assert record["agreed"] is True
    assert record["similarity"] > 0.99
    # The sample is stored nowhere: no chat message, no cache entry of its own.
    assert len(lea.get(f"/chat/{hit['chat_id']}").json()["messages"]) == 2
    assert [p["id"] for p in _entries(platform, lea)] == [entry["id"]]
