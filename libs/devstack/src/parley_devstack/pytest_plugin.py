"""Pytest fixtures for tests against the real servers.

Registered by the project's conftest (`pytest_plugins = ["parley_devstack.pytest_plugin"]`):

- `local_stack`: the started `LocalStack`, one per test session; its binaries are installed once
  under `.stack/`, its data lives in a temporary folder that is removed afterwards (kept, with the
  servers' logs, when the stack failed to start);
- `stack_addrs`: its `StackAddresses`.

A test may stop, kill and restart `local_stack.kafka` (or `.mongo`, `.qdrant`); each comes back on
the same address with the same data. Tests that do should leave it running.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley_devstack.stack import LocalStack, StackAddresses

__all__ = ["local_stack", "stack_addrs"]


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="parley-stack-"))
    stack = LocalStack(data_dir)
    try:
        stack.install()
        stack.start()
    except BaseException:
        stack.stop()
        raise
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_addrs(local_stack: LocalStack) -> StackAddresses:
    """The addresses of the session's stack (they stay the same when a server restarts)."""
    return local_stack.addresses
