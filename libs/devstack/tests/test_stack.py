"""The local stack against its real servers: one stack for the module, started once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import MongoClient

from parley_devstack import (
    DiskSpaceError,
    LocalStack,
    MongoServer,
    PortInUseError,
    ServerExitedError,
)
from parley_devstack._process import pid_alive, wait_until
from parley_devstack.install import ensure_free_disk
from parley_devstack.ports import port_is_free, port_is_open

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack")) as started:
        yield started


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


async def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume_one(bootstrap: str, topic: str, group: str) -> tuple[bytes | None, int]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=60)
        partitions = consumer.partitions_for_topic(topic) or set()
        return message.value, len(partitions)
    finally:
        await consumer.stop()


def test_addresses_point_at_listening_servers(stack: LocalStack) -> None:
    addresses = stack.addresses
    env = addresses.as_env()

    assert set(env) == {"MONGODB_URI", "KAFKA_ADDR", "QDRANT_ADDR", "QDRANT_GRPC_ADDR"}
    assert env["MONGODB_URI"] == f"mongodb://127.0.0.1:{stack.mongo.port}/?replicaSet=rs0"
    for address in (addresses.kafka_addr, addresses.qdrant_addr, addresses.qdrant_grpc_addr):
        assert address.startswith("127.0.0.1:")
        assert port_is_open(_port(address))
    assert stack.running


async def test_kafka_auto_creates_topics_and_round_trips_a_message(stack: LocalStack) -> None:
    await _produce(stack.addresses.kafka_addr, "devstack-roundtrip", b"hello")

    value, partitions = await _consume_one(
        stack.addresses.kafka_addr, "devstack-roundtrip", "devstack-test"
    )

    assert value == b"hello"
    assert partitions == 4


def test_mongodb_is_a_replica_set_with_transactions(stack: LocalStack) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(
        stack.addresses.mongodb_uri, serverSelectionTimeoutMS=10_000
    )
    with client:
        notes = client.devstack_test.get_collection("notes")
        with client.start_session() as session:
            with session.start_transaction():
                notes.insert_one({"_id": "kept"}, session=session)
            with session.start_transaction():
                notes.insert_one({"_id": "dropped"}, session=session)
                session.abort_transaction()

        assert client.admin.command("hello")["setName"] == "rs0"
        assert [doc["_id"] for doc in notes.find()] == ["kept"]


def test_qdrant_creates_a_collection_over_http(stack: LocalStack) -> None:
    base = f"http://{stack.addresses.qdrant_addr}"
    with httpx.Client(base_url=base, timeout=10) as client:
        created = client.put(
            "/collections/devstack", json={"vectors": {"size": 4, "distance": "Cosine"}}
        )
        upserted = client.put(
            "/collections/devstack/points?wait=true",
            json={"points": [{"id": 1, "vector": [0.1, 0.2, 0.3, 0.4], "payload": {"a": 1}}]},
        )
        point = client.get("/collections/devstack/points/1")

    assert created.status_code == 200, created.text
    assert upserted.status_code == 200, upserted.text
    assert point.json()["result"]["payload"] == {"a": 1}


async def test_kafka_stops_and_comes_back_on_the_same_address_with_its_data(
    stack: LocalStack,
) -> None:
    bootstrap = stack.addresses.kafka_addr
    await _produce(bootstrap, "devstack-restart", b"before the outage")

    stack.kafka.stop()
    assert not stack.kafka.running
    assert not port_is_open(_port(bootstrap))
    stack.kafka.start()

    assert stack.addresses.kafka_addr == bootstrap
    value, _ = await _consume_one(bootstrap, "devstack-restart", "devstack-restart")
    assert value == b"before the outage"


def test_a_second_mongod_on_the_same_data_exits_with_the_tail_of_its_log(
    stack: LocalStack,
) -> None:
    intruder = MongoServer(stack.installation, stack.mongo.data_dir, start_timeout=30)

    with pytest.raises(ServerExitedError) as caught:
        intruder.start()

    message = str(caught.value)
    assert message.startswith("MongoDB exited while starting")
    assert "Last lines of" in message
    assert "mongod.lock" in message or "already running" in message
    assert not intruder.running
    assert stack.mongo.running


def test_a_taken_port_is_named_in_the_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        stack = LocalStack(tmp_path, kafka_port=port)

        with pytest.raises(PortInUseError) as caught:
            stack.start()

    assert str(caught.value).startswith(
        f"Kafka could not start: port 127.0.0.1:{port} is already in use (another Kafka"
    )
    assert caught.value.port == port
    assert stack.pids == []


def test_too_little_disk_is_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(DiskSpaceError, match=r"^only .* free on /.*need at least"):
        ensure_free_disk(tmp_path, 2**60, "Kafka and MongoDB")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_no_server_outlives_the_process_that_started_it(
    tmp_path: Path, signum: signal.Signals
) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import signal, sys, time
                from pathlib import Path
                from parley_devstack import LocalStack

                # Ctrl-C at a terminal raises KeyboardInterrupt; a test runner started as a
                # background job (CI) hands its children SIGINT ignored, so restore the default.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                stack = LocalStack(Path(sys.argv[1]))
                stack.qdrant.start()
                print(stack.qdrant.pids[0], flush=True)
                time.sleep(120)
                """
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        qdrant_pid = int(child.stdout.readline())
        assert pid_alive(qdrant_pid)

        os.kill(child.pid, signum)
        child.wait(timeout=30)

        assert wait_until(lambda: not pid_alive(qdrant_pid), timeout=15)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_stop_leaves_no_process_and_frees_every_port(stack: LocalStack) -> None:
    pids = stack.pids
    ports = [
        stack.mongo.port,
        stack.kafka.port,
        stack.kafka.zookeeper_port,
        stack.qdrant.http_port,
        stack.qdrant.grpc_port,
    ]
    assert len(pids) == 4

    stack.stop()

    assert not stack.running
    assert stack.pids == []
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert all(port_is_free(port) for port in ports)
