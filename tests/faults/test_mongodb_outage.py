"""MongoDB stopped and started again.

During the outage every request that needs the database is refused quickly with 503 and
Retry-After, not left hanging, and the session service's health (grpc.health.v1 and its readiness
probe) says NOT_SERVING; a turn whose answer arrives during the outage is still streamed to its
client (relaying needs no database) and stored once MongoDB is back; then everything works again
without a restart.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from tests.conftest import eventually
from tests.faults.conftest import TOKENS_PER_S, answered, start_stream

pytestmark = pytest.mark.faults

# The session gives an unreachable MongoDB one operation's retries (STORE_RETRY_S, 2 s, and
# PyMongo's 0.5 s server-selection tick) until its ping has noticed, then refuses at once. The
# margin is for a loaded machine.
REFUSAL_S = 5.0
SESSION_API = "parley.v1.SessionService"


def session_health(platform: Platform) -> tuple[str, str, int]:
    """The session's grpc.health.v1 status of its API and of the server, and the HTTP status of
    its readiness probe."""
    with grpc.insecure_channel(platform.session_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        api, server = (
            health_pb2.HealthCheckResponse.ServingStatus.Name(
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            )
            for name in (SESSION_API, "")
        )
    url = f"http://127.0.0.1:{platform.session.env['METRICS_PORT']}/healthz/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            ready = int(reply.status)
    except urllib.error.HTTPError as exc:
        ready = exc.code
    return api, server, ready


def test_mongodb_outage_refuses_clearly_keeps_results_and_recovers(
    fault_stack: LocalStack, fault_platform: Platform, client: httpx.Client
) -> None:
    assert session_health(fault_platform) == ("SERVING", "SERVING", 200)
    tokens = int(4 * TOKENS_PER_S)
    flight = start_stream(
        client, {"message": "Answer me while the database is away", "max_tokens": tokens}
    )
    assert flight.first_chunk.wait(30), "the turn never started"
    assert flight.status == 200, flight.error

    fault_stack.mongo.stop()
    try:
        requests: list[Callable[[], httpx.Response]] = [
            lambda: client.post("/chat", json={"message": "Anyone there?", "max_tokens": 5}),
            lambda: client.get(f"/chat/{flight.chat_id}"),
        ]
        for request in requests:
            started = time.monotonic()
            reply = request()
            took = time.monotonic() - started
            assert reply.status_code == 503, reply.text
            assert took < REFUSAL_S, f"refused only after {took:.1f} s"
            assert int(reply.headers["Retry-After"]) > 0
            assert reply.json()["error"]["type"] == "service_unavailable"

        # Not ready while MongoDB is away (its API's status); alive all the same (the server's).
        def noticed() -> tuple[str, str, int] | None:
            health = session_health(fault_platform)
            return health if health[0] == "NOT_SERVING" else None

        down = eventually(noticed, timeout=15, what="the session to report NOT_SERVING")
        assert down == ("NOT_SERVING", "SERVING", 503)
        # The answer was generated and relayed while the database was down.
        flight.join(60)
        kinds = [kind for kind, _ in flight.events]
        assert kinds[-1] == "done", flight.events[-3:]
        assert flight.text == " tok" * tokens
    finally:
        fault_stack.mongo.start()

    def recovered() -> httpx.Response | None:
        reply = client.post("/chat", json={"message": "Back again?", "max_tokens": 5})
        return reply if reply.status_code == 200 else None

    after = eventually(recovered, timeout=60, what="a turn answered after MongoDB came back")
    assert session_health(fault_platform) == ("SERVING", "SERVING", 200)
    # The result consumed during the outage was applied after it, once.
    stored = eventually(answered(client, flight.chat_id), timeout=60, what="the stored answer")
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == flight.text
    stored_after = eventually(answered(client, after.json()["chat_id"]), timeout=30)
    assert [m["role"] for m in stored_after] == ["user", "assistant"]
    chats = client.get("/chats").json()["chats"]
    assert len(chats) == 2  # the refused turn stored nothing
