"""Health checks spoken on the wire: ZooKeeper's `ruok` and a Kafka Metadata request."""

from __future__ import annotations

import socket
import struct

from parley_devstack.ports import HOST

__all__ = ["kafka_ready", "zookeeper_ready"]

_METADATA = 3
_METADATA_VERSION = 1
_CLIENT_ID = b"parley-devstack"


def zookeeper_ready(port: int, *, timeout: float = 1.0) -> bool:
    """Whether ZooKeeper answers `imok` to the four-letter command `ruok`."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"ruok")
            return _read_all(sock) == b"imok"
    except OSError:
        return False


def kafka_ready(port: int, *, timeout: float = 2.0) -> bool:
    """Whether the broker serves Metadata, lists itself and knows a controller.

    Kafka 2.3 only answers requests once its start-up has finished; with a controller elected,
    topics can be created.
    """
    request = struct.pack(">hhih", _METADATA, _METADATA_VERSION, 1, len(_CLIENT_ID)) + _CLIENT_ID
    request += struct.pack(">i", 0)  # no topics: only brokers and controller are wanted
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _read_exactly(sock, 4))
            response = _read_exactly(sock, size)
    except (OSError, struct.error, ConnectionError):
        return False
    try:
        return _brokers_and_controller(response)
    except (struct.error, IndexError):
        return False


def _brokers_and_controller(response: bytes) -> bool:
    offset = 4  # correlation id
    (broker_count,) = struct.unpack_from(">i", response, offset)
    offset += 4
    for _ in range(broker_count):
        offset += 4  # node id
        (host_length,) = struct.unpack_from(">h", response, offset)
        offset += 2 + host_length + 4  # host, port
        (rack_length,) = struct.unpack_from(">h", response, offset)
        offset += 2 + max(rack_length, 0)
    controller: int = struct.unpack_from(">i", response, offset)[0]
    return broker_count > 0 and controller >= 0


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(64):
        data += chunk
    return data
