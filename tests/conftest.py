"""Fixtures for tests that cross services: the whole platform as processes on the real stack."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from parley_devstack.models import DEFAULT_MODEL, install_model
from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from parley_devstack.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """Random weights: for tests of plumbing and speed, where language does not matter."""
    return build_tiny_model(REPO / ".stack" / "models" / "tiny")


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct, the model `make run` serves (installed once by `make install`)."""
    return install_model(REPO / ".stack" / "models")


@pytest.fixture(scope="session")
def platform(
    local_stack: LocalStack, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    run_dir = tmp_path_factory.mktemp("platform")
    # A loaded test machine can make a lookup slower than the production default (0.5 s), which
    # would turn expected cache hits into misses.
    with Platform(
        local_stack.addresses,
        run_dir=run_dir,
        model_dir=tiny_model,
        service_env={"gateway": {"CACHE_TIMEOUT_S": "5"}},
    ) as running:
        yield running


@pytest.fixture(scope="session")
def real_platform(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The platform on SmolLM2 (transformers engine), on a stack of its own: the tiny-model
    platform's workers share the request topics' consumer group, and would answer its turns.

    Its window is small (640 tokens) so that a few turns pass a summarize policy's share of it.
    """
    scratch = tmp_path_factory.mktemp("real-platform")
    with (
        LocalStack(scratch / "stack") as stack,
        Platform(
            stack.addresses,
            run_dir=scratch / "run",
            model_dir=real_model,
            model_id=DEFAULT_MODEL.model_id,
            env={"CONTEXT_WINDOW": "640"},
            service_env={
                "gateway": {"CACHE_TIMEOUT_S": "5", "COMPLETION_TIMEOUT_S": "150"},
                "session": {"DEFAULT_MAX_TOKENS": "48"},
                "worker": {"MAX_CONCURRENCY": "2"},
            },
        ) as running,
    ):
        yield running


@pytest.fixture(scope="session")
def admin(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=platform.gateway_url,
        headers={"Authorization": f"Bearer {platform.admin_api_key}"},
        timeout=30,
    ) as client:
        yield client


@pytest.fixture
def new_user(admin: httpx.Client, platform: Platform) -> Iterator[Callable[..., httpx.Client]]:
    """Creates a user with an API key (and with `email` and `password`, an account that can
    sign in); returns a client that speaks as that user."""
    clients: list[httpx.Client] = []

    def make(
        name: str = "tester", tenant_id: str = "", *, email: str = "", password: str = ""
    ) -> httpx.Client:
        body = {"name": name, "tenant_id": tenant_id}
        if email:
            body |= {"email": email, "password": password}
        user = admin.post("/admin/users", json=body)
        assert user.status_code == 201, user.text
        key = admin.post(f"/admin/users/{user.json()['user_id']}/keys", json={"name": "test"})
        assert key.status_code == 201, key.text
        client = httpx.Client(
            base_url=platform.gateway_url,
            headers={"Authorization": f"Bearer {key.json()['api_key']}"},
            timeout=60,
        )
        client.user_id = user.json()["user_id"]  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def eventually(check: Callable[[], T | None], *, timeout: float = 20.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy (results are applied asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.1)


def parse_sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event", "message"), json.loads(fields.get("data", "null"))))
    return events
