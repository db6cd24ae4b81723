"""A worker killed with SIGKILL mid-generation, seen from the clients of the public API.

A platform of this module's own (fake engine, 20 tokens a second, two workers) on the shared
stack. Clients of the JSON, streaming and asynchronous APIs each get exactly one answer, and each
chat stores exactly one assistant message, although the killed worker's requests are generated a
second time by another worker (at-least-once on the results topic).

The topics and consumer groups are the platform's usual ones: when another platform runs on the
same stack its workers join the group, so the assertions do not depend on which worker answers.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from parley.v1 import envelopes_pb2
from parley_common.kafka import Topics
from parley_devstack.platform import Platform, ServiceProcess
from parley_devstack.stack import LocalStack
from tests.conftest import eventually, parse_sse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKENS = 40  # two seconds of generation at 20 tokens a second


@pytest.fixture(scope="module")
def fake_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # A stack of its own: the session-wide platform's worker, in the same consumer group on a
    # shared stack, would take some of this module's requests away from the workers it kills.
    with LocalStack(tmp_path_factory.mktemp("worker-gateway-stack")) as stack:
        platform = Platform(
            stack.addresses,
            run_dir=tmp_path_factory.mktemp("worker-gateway"),
            model_dir=None,
            engine="fake",
            workers=2,
            service_env={"worker": {"FAKE_TOKENS_PER_S": "20", "MAX_CONCURRENCY": "8"}},
        )
        with platform:
            yield platform


@pytest.fixture
def client(fake_platform: Platform) -> Iterator[httpx.Client]:
    admin = {"Authorization": f"Bearer {fake_platform.admin_api_key}"}
    with httpx.Client(base_url=fake_platform.gateway_url, timeout=120) as http:
        user = http.post("/admin/users", json={"name": "kill-9"}, headers=admin)
        assert user.status_code == 201, user.text
        key = http.post(
            f"/admin/users/{user.json()['user_id']}/keys", json={"name": "t"}, headers=admin
        )
        assert key.status_code == 201, key.text
        http.headers["Authorization"] = f"Bearer {key.json()['api_key']}"
        yield http


def in_flight(worker: ServiceProcess) -> int:
    text = httpx.get(worker.ready_url.replace("/healthz/ready", "/metrics"), timeout=2).text
    for line in text.splitlines():
        if line.startswith("parley_worker_in_flight "):
            return int(float(line.split()[1]))
    raise AssertionError("no parley_worker_in_flight in the worker's /metrics")


def stored(client: httpx.Client, chat_id: str) -> list[dict[str, Any]]:
    def answered() -> list[dict[str, Any]] | None:
        got = client.get(f"/chat/{chat_id}")
        assert got.status_code == 200, got.text
        found: list[dict[str, Any]] = got.json()["messages"]
        return found if found and found[-1]["role"] == "assistant" else None

    return eventually(answered, timeout=30, what=f"the answer of {chat_id} stored")


def results_for(kafka_addr: str, request_ids: set[str]) -> list[envelopes_pb2.CompletionResult]:
    async def read() -> list[envelopes_pb2.CompletionResult]:
        consumer = AIOKafkaConsumer(
            Topics().results, bootstrap_servers=kafka_addr, auto_offset_reset="earliest"
        )
        await consumer.start()
        found: list[envelopes_pb2.CompletionResult] = []
        try:
            deadline = time.monotonic() + 20
            while {r.request_id for r in found} < request_ids and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        result = envelopes_pb2.CompletionResult()
                        result.ParseFromString(record.value)
                        if result.request_id in request_ids:
                            found.append(result)
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


def test_kill_9_a_worker_every_client_gets_one_answer(
    fake_platform: Platform, client: httpx.Client
) -> None:
    tag = secrets.token_hex(3)
    body = {"max_tokens": TOKENS, "no_cache": True}
    answers: dict[str, dict[str, Any]] = {}
    streams: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    failures: list[str] = []

    def json_turn(i: int) -> None:
        got = client.post("/chat", json={**body, "message": f"json question {i} {tag}"})
        if got.status_code != 200:
            failures.append(got.text)
            return
        answers[got.json()["chat_id"]] = got.json()

    def stream_turn(i: int) -> None:
        got = client.post(
            "/chat", json={**body, "stream": True, "message": f"stream question {i} {tag}"}
        )
        if got.status_code != 200:
            failures.append(got.text)
            return
        events = parse_sse(got.text)
        streams[str(events[0][1]["chat_id"])] = events

    submitted = []
    for i in range(2):
        got = client.post("/chat?mode=async", json={**body, "message": f"async question {i} {tag}"})
        assert got.status_code == 202, got.text
        submitted.append(got.json())
    threads = [threading.Thread(target=json_turn, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=stream_turn, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()

    doomed = fake_platform.workers[0]
    eventually(lambda: in_flight(doomed) >= 1, timeout=30, what="worker-0 generating")
    doomed.kill()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()

    assert failures == []
    assert len(answers) == 4
    assert len(streams) == 2
    request_ids: set[str] = set()
    for chat_id, turn in answers.items():
        request_ids.add(turn["request_id"])
        assert turn["answer"]["finish_reason"] in ("length", "stop")
        assert turn["answer"]["content"]
        messages = stored(client, chat_id)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == turn["answer"]["content"]
    for chat_id, events in streams.items():
        kinds = [kind for kind, _ in events]
        assert kinds.count("done") == 1
        assert kinds[-1] == "done"
        request_ids.add(str(events[0][1]["request_id"]))
        done = events[-1][1]
        text = "".join(data["text"] for kind, data in events if kind == "chunk")
        assert text == done["content"]
        messages = stored(client, chat_id)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == done["content"]
    for completion in submitted:
        request_ids.add(completion["completion_id"])

        def finished(completion_id: str = completion["completion_id"]) -> dict[str, Any] | None:
            got = client.get(f"/completions/{completion_id}")
            assert got.status_code == 200, got.text
            found: dict[str, Any] = got.json()
            return found if found["state"] in ("done", "failed", "cancelled") else None

        final = eventually(finished, timeout=60, what="the asynchronous completion")
        assert final["state"] == "done"
        messages = stored(client, completion["chat_id"])
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == final["answer"]["content"]

    # On the results topic each request has at least one result; the killed worker did not
    # finish the requests it was generating.
    results = results_for(fake_platform.session.env["KAFKA_ADDR"], request_ids)
    assert {r.request_id for r in results} == request_ids
    answered_by_doomed = {r.request_id for r in results if r.worker_id == "worker-0"}
    assert answered_by_doomed < request_ids
