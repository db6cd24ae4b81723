"""Workers as processes (`python -m parley_worker`, fake engine) on the real Kafka: killed with
SIGKILL, stopped with SIGTERM, two of them sharing the partitions.

Each test has topics and a consumer group of its own (`Bus`), so it sees only its workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from parley.v1 import types_pb2
from parley_devstack.platform import ServiceProcess
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import LocalStack
from parley_worker.offsets import decode_attempts
from tests.integration.worker_bus import Bus, all_committed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
async def bus(local_stack: LocalStack) -> AsyncIterator[Bus]:
    bus = Bus(local_stack.addresses.kafka_addr)
    await bus.start()
    yield bus
    await bus.stop()


class Workers:
    """Starts worker processes for one bus; stops whatever is left at the end of the test."""

    def __init__(self, bus: Bus, run_dir: Path) -> None:
        self._bus = bus
        self._run_dir = run_dir
        self.started: list[ServiceProcess] = []

    async def start(self, name: str, **env: str) -> ServiceProcess:
        (port,) = pick_free_ports(1)
        proc = ServiceProcess(
            name,
            "parley_worker",
            {
                "KAFKA_ADDR": self._bus.addr,
                "ENGINE": "fake",
                "MODEL_NAME": "fake",
                "TOPIC_PREFIX": self._bus.prefix,
                "WORKER_GROUP": self._bus.group,
                "WORKER_ID": name,
                "METRICS_PORT": str(port),
                "MAX_CONCURRENCY": "8",
                "FAKE_TOKENS_PER_S": "20",
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            self._run_dir / f"{name}.log",
            ready_url=f"http://127.0.0.1:{port}/healthz/ready",
        )
        proc.start()
        self.started.append(proc)
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(proc.is_ready):
            assert time.monotonic() < deadline, f"{name} not ready:\n{proc.log_tail()}"
            await asyncio.sleep(0.2)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop(timeout=20)


@pytest.fixture
def workers(bus: Bus, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(bus, tmp_path)
    yield started
    started.stop_all()


async def in_flight(proc: ServiceProcess) -> int:
    """The worker's parley_worker_in_flight gauge, from its /metrics."""
    url = proc.ready_url.replace("/healthz/ready", "/metrics")
    async with httpx.AsyncClient(timeout=2) as http:
        text = (await http.get(url)).text
    for line in text.splitlines():
        if line.startswith("parley_worker_in_flight "):
            return int(float(line.split()[1]))
    raise AssertionError("no parley_worker_in_flight in /metrics")


async def until(check: object, *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        await asyncio.sleep(0.1)


async def group_of(bus: Bus, members: int) -> None:
    async def formed() -> bool:
        state, count = await bus.group_state()
        return state == "Stable" and count == members

    await until(formed, within=30, what=f"a stable group of {members}")


async def test_kill_9_mid_generation_loses_nothing(bus: Bus, workers: Workers) -> None:
    w0 = await workers.start("w0")
    await workers.start("w1")
    await group_of(bus, 2)
    ids = [f"k-{i}" for i in range(16)]
    for request_id in ids:
        await bus.request(request_id, max_tokens=40)  # 2 s each at 20 tokens/s

    async def w0_busy() -> bool:
        return await in_flight(w0) >= 2

    await until(w0_busy, within=20, what="w0 to be generating")
    w0.kill()
    # w1 takes over once the group drops w0 (session timeout, 10 s) and redoes its requests.
    await bus.wait(bus.answered(*ids), within=60, what="every request answered")
    await all_committed(bus)

    by_worker: dict[str, set[str]] = {}
    for result in bus.results():
        assert result.finish_reason == types_pb2.FINISH_REASON_LENGTH
        assert result.text == " tok" * 40
        by_worker.setdefault(result.worker_id, set()).add(result.request_id)
    assert set(by_worker) <= {"w0", "w1"}
    # w0 was killed with requests in flight: it answered none of them.
    assert len(by_worker.get("w0", set())) < len(ids)
    assert by_worker.get("w0", set()) | by_worker["w1"] == set(ids)
    assert bus.dead_letters() == []


async def test_two_workers_share_the_partitions(bus: Bus, workers: Workers) -> None:
    await workers.start("w0", FAKE_TOKENS_PER_S="200")
    await workers.start("w1", FAKE_TOKENS_PER_S="200")
    await group_of(bus, 2)
    ids = [f"s-{i}" for i in range(24)]
    for request_id in ids:
        await bus.request(request_id, max_tokens=20)
    await bus.wait(bus.answered(*ids), within=60, what="every request answered")
    await all_committed(bus)

    counts: dict[str, int] = {}
    for result in bus.results():
        counts[result.worker_id] = counts.get(result.worker_id, 0) + 1
    assert set(counts) == {"w0", "w1"}, counts
    assert sum(counts.values()) == len(ids)


async def test_sigterm_finishes_in_flight_work_commits_and_leaves(
    bus: Bus, workers: Workers
) -> None:
    w0 = await workers.start("w0", SHUTDOWN_GRACE_S="15")
    await group_of(bus, 1)
    ids = [f"t-{i}" for i in range(4)]
    for request_id in ids:
        await bus.request(request_id, max_tokens=40)  # 2 s each

    async def all_running() -> bool:
        return await in_flight(w0) == 4

    await until(all_running, within=20, what="four requests in flight")
    assert w0.proc is not None
    os.kill(w0.proc.pid, signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert not await asyncio.to_thread(w0.is_ready), "still ready after SIGTERM"
    rc = await asyncio.to_thread(w0.proc.wait, 15)

    assert rc == 0, w0.log_tail()
    await bus.wait(bus.answered(*ids), within=5, what="the answers")
    assert {r.worker_id for r in bus.results()} == {"w0"}
    await all_committed(bus)
    state, members = await bus.group_state()
    assert (state, members) == ("Empty", 0)


async def test_sigterm_hands_back_what_the_grace_does_not_cover(bus: Bus, workers: Workers) -> None:
    w0 = await workers.start("w0", SHUTDOWN_GRACE_S="1")
    await group_of(bus, 1)
    ids = [f"h-{i}" for i in range(3)]
    for request_id in ids:
        await bus.request(request_id, max_tokens=1000)  # 50 s each at 20 tokens/s

    async def all_running() -> bool:
        return await in_flight(w0) == 3

    await until(all_running, within=20, what="three requests in flight")
    assert w0.proc is not None
    stopped_at = time.monotonic()
    os.kill(w0.proc.pid, signal.SIGTERM)
    rc = await asyncio.to_thread(w0.proc.wait, 15)
    assert rc == 0, w0.log_tail()
    assert time.monotonic() - stopped_at < 6
    await bus._drain(0.5)
    assert bus.results() == []

    # It left the group: the next worker gets the requests at once, not after a timeout.
    started_at = time.monotonic()
    await workers.start("w1", FAKE_TOKENS_PER_S="0")
    await bus.wait(bus.answered(*ids), within=30, what="w1's answers")
    assert time.monotonic() - started_at < 15
    assert {r.worker_id for r in bus.results()} == {"w1"}
    await all_committed(bus)


async def test_request_that_kills_its_worker_every_time_is_set_aside(
    bus: Bus, workers: Workers
) -> None:
    partition, deadly_at = await bus.request("deadly", key="chat-d", max_tokens=1000)
    _, innocent_at = await bus.request("innocent", key="chat-d", max_tokens=400)

    async def attempts() -> dict[int, int]:
        committed = await bus.committed()
        return decode_attempts(
            next((m for tp, (_, m) in committed.items() if tp.partition == partition), "")
        )

    # Each worker dies while the deadly request runs. The first two also had the innocent one
    # in flight; the third runs the deadly one alone, so only its count goes up.
    for attempt, innocent_attempts in ((1, 1), (2, 2), (3, 2)):
        proc = await workers.start(f"victim-{attempt}", MAX_ATTEMPTS="3")

        async def on_record(attempt: int = attempt, innocent: int = innocent_attempts) -> bool:
            counts = await attempts()
            return counts.get(deadly_at) == attempt and counts.get(innocent_at) == innocent

        await until(on_record, within=40, what=f"attempt {attempt} on record")
        proc.kill()
    survivor = await workers.start("survivor", MAX_ATTEMPTS="3", FAKE_TOKENS_PER_S="0")
    await bus.wait(bus.answered("deadly", "innocent"), within=60, what="both answers")
    await all_committed(bus)

    (letter,) = bus.dead_letters()
    assert letter.offset == deadly_at
    assert "tried 3 times without an answer" in letter.reason
    deadly = bus.result_of("deadly")
    assert deadly.finish_reason == types_pb2.FINISH_REASON_ERROR
    assert deadly.error == letter.reason
    assert deadly.worker_id == "survivor"
    innocent = bus.result_of("innocent")
    assert innocent.finish_reason == types_pb2.FINISH_REASON_LENGTH
    assert innocent.worker_id == "survivor"
    assert survivor.running
