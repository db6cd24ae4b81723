"""Workers that fail, seen from the clients of the public API.

A platform of this module's own (its own stack; fake engine, 20 tokens a second, two workers
whose text tells them apart: worker-0 says " a", worker-1 " b"; a message with FAIL_CUE makes
the engine fail every time).

- A worker killed with SIGKILL mid-generation: its requests are generated a second time by the
  other worker, with other text. Every client ends with exactly one answer, the one its chat
  stores: a JSON answer is that text; a stream says `reset` and starts over (OpenAI's stream,
  which cannot, ends with an error); each chat stores one assistant message.
- An engine that fails on a request, attempt after attempt: every API answers a clear error,
  and nothing but the question is stored.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from httpx_ws import connect_ws

from parley.v1 import envelopes_pb2
from parley_common.kafka import Topics
from parley_devstack.platform import Platform, ServiceProcess
from parley_devstack.stack import LocalStack
from tests.conftest import eventually, parse_sse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOKENS = 40  # two seconds of generation at 20 tokens a second
WORDS = (" a", " b")  # the text of worker-0, of worker-1
FAIL_CUE = "[fail]"
ANSWERS = {word * TOKENS for word in WORDS}


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
            service_env={
                "worker": {
                    "FAKE_TOKENS_PER_S": "20",
                    "MAX_CONCURRENCY": "8",
                    "FAKE_FAIL_ON": FAIL_CUE,
                    # Failing requests are this module's point: no worker gives up on its engine.
                    "ENGINE_FAILURE_LIMIT": "1000",
                }
            },
        )
        for worker, word in zip(platform.workers, WORDS, strict=True):
            worker.env["FAKE_TOKEN"] = word
        with platform:
            yield platform


@pytest.fixture
def key(fake_platform: Platform) -> str:
    admin = {"Authorization": f"Bearer {fake_platform.admin_api_key}"}
    with httpx.Client(base_url=fake_platform.gateway_url, timeout=30) as http:
        user = http.post("/admin/users", json={"name": "kill-9"}, headers=admin)
        assert user.status_code == 201, user.text
        created = http.post(
            f"/admin/users/{user.json()['user_id']}/keys", json={"name": "t"}, headers=admin
        )
        assert created.status_code == 201, created.text
        api_key: str = created.json()["api_key"]
        return api_key


def connect(platform: Platform, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=platform.gateway_url, timeout=120, headers={"Authorization": f"Bearer {key}"}
    )


@pytest.fixture
def client(fake_platform: Platform, key: str) -> Iterator[httpx.Client]:
    with connect(fake_platform, key) as http:
        yield http


def both_workers(platform: Platform) -> ServiceProcess:
    """Worker-0, restarted if an earlier test killed it."""
    doomed = platform.workers[0]
    if not doomed.running:
        doomed.start()
        platform.wait_ready([doomed], timeout=60)
    return doomed


def after_last_reset(texts: list[tuple[str, str]]) -> str:
    """What a client that honours `reset` shows: (kind, text) pairs, kind chunk or reset."""
    shown = ""
    for kind, text in texts:
        shown = "" if kind == "reset" else shown + text
    return shown


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
    doomed = both_workers(fake_platform)
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
        # One worker's answer, never the start of one and the rest of the other.
        assert turn["answer"]["content"] in ANSWERS
        messages = stored(client, chat_id)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == turn["answer"]["content"]
    for chat_id, events in streams.items():
        kinds = [kind for kind, _ in events]
        assert kinds.count("done") == 1
        assert kinds[-1] == "done"
        request_ids.add(str(events[0][1]["request_id"]))
        done = events[-1][1]
        text = after_last_reset(
            [(kind, data.get("text", "")) for kind, data in events if kind in ("chunk", "reset")]
        )
        assert text == done["content"] in ANSWERS
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
        assert final["answer"]["content"] in ANSWERS
        messages = stored(client, completion["chat_id"])
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["content"] == final["answer"]["content"]

    # On the results topic each request has at least one result; the killed worker did not
    # finish the requests it was generating.
    results = results_for(fake_platform.session.env["KAFKA_ADDR"], request_ids)
    assert {r.request_id for r in results} == request_ids
    answered_by_doomed = {r.request_id for r in results if r.worker_id == "worker-0"}
    assert answered_by_doomed < request_ids


LONG_TOKENS = 300  # fifteen seconds: still generating when its worker is killed


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-sent events as they arrive: (event, data)."""
    kind, data = "message", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and data:
            yield kind, json.loads(data) if data != "[DONE]" else {"done": True}
            kind, data = "message", ""


class OnDoomedWorker(threading.Thread):
    """Starts a streamed turn again and again until worker-0 generates it (its first text is
    worker-0's), then reads it to the end. `kind`: sse, ws, v1 or async (its event stream)."""

    def __init__(self, platform: Platform, key: str, kind: str) -> None:
        super().__init__(name=f"stream-{kind}", daemon=True)
        self.platform, self.key, self.kind = platform, key, kind
        self.on_doomed = threading.Event()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 90
            while not self.on_doomed.is_set() and time.monotonic() < deadline:
                self.events = []
                {"sse": self._sse, "ws": self._ws, "v1": self._v1, "async": self._async}[
                    self.kind
                ]()
        except BaseException as exc:
            self.error = exc

    def _first(self, text: str) -> bool:
        """Whether to read on: the text is worker-0's (from now on), or came after that."""
        if not self.on_doomed.is_set():
            if text != WORDS[0]:
                return False  # worker-1's: closing the stream cancels it; try another chat
            self.on_doomed.set()
        return True

    def _sse(self) -> None:
        body = {"message": f"sse {secrets.token_hex(4)}", "stream": True}
        with (
            connect(self.platform, self.key) as http,
            http.stream(
                "POST", "/chat", json={**body, "max_tokens": LONG_TOKENS, "no_cache": True}
            ) as got,
        ):
            for kind, data in sse_events(got):
                self.events.append((kind, data))
                if kind == "chunk" and not self._first(data["text"]):
                    return

    def _ws(self) -> None:
        message = {"type": "message", "message": f"ws {secrets.token_hex(4)}"}
        with (
            connect(self.platform, self.key) as http,
            connect_ws(f"{self.platform.gateway_url}/chat/ws", http) as socket,
        ):
            assert socket.receive_json(timeout=10)["type"] == "ready"
            socket.send_json({**message, "max_tokens": LONG_TOKENS, "no_cache": True})
            while True:
                frame: dict[str, Any] = socket.receive_json(timeout=120)
                self.events.append((frame["type"], frame))
                if frame["type"] == "chunk" and not self._first(frame["text"]):
                    return
                if frame["type"] in ("done", "error"):
                    return

    def _async(self) -> None:
        body = {"message": f"async {secrets.token_hex(4)}", "max_tokens": LONG_TOKENS}
        with connect(self.platform, self.key) as http:
            got = http.post("/chat?mode=async", json={**body, "no_cache": True})
            assert got.status_code == 202, got.text
            completion_id = got.json()["completion_id"]
            with http.stream("GET", f"/completions/{completion_id}/events") as events:
                for kind, data in sse_events(events):
                    self.events.append((kind, data))
                    if kind == "chunk" and not self._first(data["text"]):
                        http.post(f"/completions/{completion_id}/cancel")
                        return

    def _v1(self) -> None:
        body = {
            "model": "fake",
            "messages": [{"role": "user", "content": f"v1 {secrets.token_hex(4)}"}],
            "stream": True,
            "max_tokens": LONG_TOKENS,
            "no_cache": True,
        }
        with (
            connect(self.platform, self.key) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as got,
        ):
            for _, data in sse_events(got):
                self.events.append(("data", data))
                content = (
                    data["choices"][0]["delta"].get("content") if data.get("choices") else None
                )
                if content and not self._first(content):
                    return


def test_streams_on_a_killed_worker_start_over_and_end_with_the_stored_answer(
    fake_platform: Platform, key: str, client: httpx.Client
) -> None:
    doomed = both_workers(fake_platform)
    streams = {
        kind: OnDoomedWorker(fake_platform, key, kind) for kind in ("sse", "ws", "v1", "async")
    }
    for stream in streams.values():
        stream.start()
    for stream in streams.values():
        assert stream.on_doomed.wait(100), f"no {stream.kind} stream landed on worker-0"

    doomed.kill()
    for stream in streams.values():
        stream.join(150)
        assert not stream.is_alive()
        assert stream.error is None, repr(stream.error)

    # Only " b": worker-1 generated each request again, from the start.
    stored_answer = WORDS[1] * LONG_TOKENS
    sse = streams["sse"].events
    kinds = [kind for kind, _ in sse]
    assert kinds[0] == "chat"
    assert kinds[-1] == "done"
    assert kinds.count("reset") == 1
    before_reset = "".join(
        data["text"] for kind, data in sse[: kinds.index("reset")] if kind == "chunk"
    )
    assert before_reset
    assert set(before_reset.split()) == {"a"}
    texts = [(kind, data.get("text", "")) for kind, data in sse if kind in ("chunk", "reset")]
    assert after_last_reset(texts) == sse[-1][1]["content"] == stored_answer
    messages = stored(client, sse[0][1]["chat_id"])
    assert [m["content"] for m in messages][1:] == [stored_answer]

    ws = streams["ws"].events
    kinds = [kind for kind, _ in ws]
    assert kinds[0] == "chat"
    assert kinds[-1] == "done"
    assert kinds.count("reset") == 1
    texts = [(kind, frame.get("text", "")) for kind, frame in ws if kind in ("chunk", "reset")]
    assert after_last_reset(texts) == ws[-1][1]["answer"]["content"] == stored_answer
    messages = stored(client, ws[0][1]["chat_id"])
    assert [m["content"] for m in messages][1:] == [stored_answer]

    # The asynchronous completion's event stream, on the replica that accepted it.
    events = streams["async"].events
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "state"
    assert kinds[-1] == "done"
    assert kinds.count("reset") == 1
    texts = [(kind, data.get("text", "")) for kind, data in events if kind in ("chunk", "reset")]
    completion = events[-1][1]
    assert completion["state"] == "done"
    assert after_last_reset(texts) == completion["answer"]["content"] == stored_answer

    # OpenAI's stream cannot take back the " a" it sent: it ends with an error, not a finish.
    v1 = [data for _, data in streams["v1"].events]
    contents = [d["choices"][0]["delta"].get("content") or "" for d in v1 if d.get("choices")]
    assert set("".join(contents).split()) == {"a"}
    assert all(d["choices"][0]["finish_reason"] is None for d in v1 if d.get("choices"))
    error = v1[-1]["error"]
    assert (error["type"], error["code"]) == ("server_error", "answer_restarted")
    assert "retry the request" in error["message"]
    assert {"done": True} not in v1


def test_an_engine_that_keeps_failing_is_a_clear_error_on_every_api(
    fake_platform: Platform, key: str, client: httpx.Client
) -> None:
    both_workers(fake_platform)
    gateway_log = fake_platform.gateways[0].log_path
    log_start = gateway_log.stat().st_size
    message = f"please {FAIL_CUE} {secrets.token_hex(3)}"
    results: dict[str, Any] = {}

    def json_turn() -> None:
        results["json"] = client.post("/chat", json={"message": message, "request_id": "json-1"})

    def sse_turn() -> None:
        got = client.post("/chat", json={"message": message, "stream": True})
        results["sse"] = parse_sse(got.text)

    def ws_turn() -> None:
        with connect_ws(f"{fake_platform.gateway_url}/chat/ws", client) as socket:
            assert socket.receive_json(timeout=10)["type"] == "ready"
            socket.send_json({"type": "message", "message": message})
            frames = [socket.receive_json(timeout=60)]
            while frames[-1]["type"] not in ("done", "error"):
                frames.append(socket.receive_json(timeout=60))
            results["ws"] = frames

    def v1_turn(stream: bool) -> None:
        body = {"model": "fake", "messages": [{"role": "user", "content": message}]}
        results[f"v1-{stream}"] = client.post(
            "/v1/chat/completions", json={**body, "stream": stream}
        )

    threads = [threading.Thread(target=turn) for turn in (json_turn, sse_turn, ws_turn)]
    threads += [threading.Thread(target=v1_turn, args=(stream,)) for stream in (False, True)]
    for thread in threads:
        thread.start()
    submitted = client.post("/chat?mode=async", json={"message": message})
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive()

    reason = "the engine failed on it 3 times; last error: RuntimeError"
    json_error = results["json"]
    assert json_error.status_code == 502, json_error.text
    error = json_error.json()["error"]
    assert error["type"] == "generation_failed"
    assert error["message"].startswith(f"the model could not answer ({reason}(")
    assert "same request id (json-1) to retry" in error["message"]
    assert "Traceback" not in json_error.text

    sse = results["sse"]
    assert [kind for kind, _ in sse] == ["chat", "error"]
    assert sse[1][1]["type"] == "generation_failed"
    assert reason in sse[1][1]["message"]

    ws = results["ws"]
    assert [frame["type"] for frame in ws] == ["chat", "error"]
    assert ws[1]["request_id"] == ws[0]["request_id"]
    assert ws[1]["error"]["type"] == "generation_failed"
    assert reason in ws[1]["error"]["message"]

    v1 = results["v1-False"]
    assert v1.status_code == 502, v1.text
    assert v1.json()["error"]["code"] == "generation_failed"
    assert v1.json()["error"]["type"] == "server_error"
    assert reason in v1.json()["error"]["message"]
    assert "retry the request" in v1.json()["error"]["message"]

    v1_stream = [
        json.loads(line.removeprefix("data: "))
        for line in results["v1-True"].text.split("\n\n")
        if line.startswith("data: {")
    ]
    assert v1_stream[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert v1_stream[-1]["error"]["code"] == "generation_failed"
    assert "data: [DONE]" not in results["v1-True"].text

    assert submitted.status_code == 202, submitted.text
    completion_id = submitted.json()["completion_id"]

    def failed() -> dict[str, Any] | None:
        found: dict[str, Any] = client.get(f"/completions/{completion_id}").json()
        return found if found["state"] != "queued" and found["state"] != "running" else None

    final = eventually(failed, timeout=60, what="the asynchronous completion to fail")
    assert final["state"] == "failed"
    assert final["error"]["type"] == "generation_failed"
    assert reason in final["error"]["message"]

    # The advice holds: the same request id again is the same turn (failing again here).
    again = client.post("/chat", json={"message": message, "request_id": "json-1"})
    assert again.status_code == 502, again.text
    chats = client.get("/chats").json()["chats"]
    assert len(chats) == 4  # json (twice, one chat), sse, ws, async; /v1 stores none
    for chat in chats:
        messages = client.get(f"/chat/{chat['chat_id']}").json()["messages"]
        assert [(m["role"], m["content"]) for m in messages] == [("user", message)]
    with gateway_log.open("rb") as log:
        log.seek(log_start)
        assert b"Traceback" not in log.read()
