"""A stack and a platform of the fault tests' own: they stop servers, which nothing else may see.

One stack (MongoDB, Kafka, Qdrant) and one platform with the fake engine serve the whole package;
each test gives back every server it stopped, running, before it ends.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from tests.conftest import parse_sse

# Slow enough that a turn can be caught in flight (50 tokens a second), fast enough for tests.
TOKENS_PER_S = 50


@pytest.fixture(scope="package")
def fault_stack() -> Iterator[LocalStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="parley-faults-"))
    stack = LocalStack(data_dir)
    try:
        stack.install()
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="package")
def fault_platform(
    fault_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    platform = Platform(
        fault_stack.addresses,
        run_dir=tmp_path_factory.mktemp("fault-platform"),
        model_dir=None,
        engine="fake",
        service_env={
            "worker": {"FAKE_TOKENS_PER_S": str(TOKENS_PER_S), "MAX_CONCURRENCY": "16"},
            "gateway": {"COMPLETION_TIMEOUT_S": "90"},
        },
    )
    with platform:
        yield platform


@pytest.fixture
def client(fault_platform: Platform) -> Iterator[httpx.Client]:
    """A new user's client on the fault platform."""
    admin = {"Authorization": f"Bearer {fault_platform.admin_api_key}"}
    with httpx.Client(base_url=fault_platform.gateway_url, timeout=60) as http:
        user = http.post("/admin/users", json={"name": "fault"}, headers=admin)
        assert user.status_code == 201, user.text
        key = http.post(
            f"/admin/users/{user.json()['user_id']}/keys", json={"name": "t"}, headers=admin
        )
        assert key.status_code == 201, key.text
        http.headers["Authorization"] = f"Bearer {key.json()['api_key']}"
        yield http


@dataclass
class InFlight:
    """A streamed turn read on a thread, so that a server can be stopped while it runs."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 0
    error: str = ""
    first_chunk: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def chat_id(self) -> str:
        return str(self.events[0][1]["chat_id"])

    @property
    def text(self) -> str:
        return "".join(data["text"] for kind, data in self.events if kind == "chunk")

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the stream still runs after {timeout} s"


def start_stream(client: httpx.Client, body: dict[str, Any]) -> InFlight:
    flight = InFlight()

    def read() -> None:
        buffer = ""
        try:
            with client.stream("POST", "/chat", json={**body, "stream": True}) as response:
                flight.status = response.status_code
                for text in response.iter_text():
                    buffer += text
                    while "\n\n" in buffer:
                        block, buffer = buffer.split("\n\n", 1)
                        flight.events.extend(parse_sse(block))
                        if any(kind == "chunk" for kind, _ in flight.events):
                            flight.first_chunk.set()
        except httpx.HTTPError as exc:
            flight.error = repr(exc)
        finally:
            flight.first_chunk.set()

    flight.thread = threading.Thread(target=read, daemon=True)
    flight.thread.start()
    return flight


def messages(client: httpx.Client, chat_id: str) -> list[dict[str, Any]] | None:
    """The chat's messages, or None while the session cannot read them."""
    got = client.get(f"/chat/{chat_id}")
    if got.status_code != 200:
        return None
    found: list[dict[str, Any]] = got.json()["messages"]
    return found


def answered(client: httpx.Client, chat_id: str) -> Callable[[], list[dict[str, Any]] | None]:
    """A check for `eventually`: the chat's messages once its answer is stored."""

    def check() -> list[dict[str, Any]] | None:
        found = messages(client, chat_id)
        return found if found and found[-1]["role"] == "assistant" else None

    return check
