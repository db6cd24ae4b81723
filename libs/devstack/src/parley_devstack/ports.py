"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import contextlib
import socket

from parley_devstack.errors import PortInUseError

__all__ = ["HOST", "check_port_free", "pick_free_ports", "port_is_free", "port_is_open"]

HOST = "127.0.0.1"


def pick_free_ports(count: int) -> list[int]:
    """Return `count` distinct ports that nothing listens on right now.

    The kernel picks them (bind to port 0). Another process may still take one before the server
    binds it; the servers notice that and the stack retries with new ports.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:`port` now (the way servers bind: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def port_is_open(port: int, *, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=timeout):
        return True
    return False


def check_port_free(server: str, port: int, *, guess: str) -> None:
    """Raise `PortInUseError` naming `server` when 127.0.0.1:`port` is taken.

    `guess` says what usually holds that port, e.g. "another Kafka?".
    """
    if port_is_free(port):
        return
    raise PortInUseError(
        f"{server} could not start: port {HOST}:{port} is already in use ({guess}). "
        f"Find the process with `ss -ltnp 'sport = :{port}'` and stop it, "
        "or leave the port unset so that the stack picks a free one.",
        port=port,
    )
