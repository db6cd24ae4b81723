"""MongoDB stopped and started again.

During the outage every request that needs the database is refused with 503 and Retry-After,
not left hanging; a turn whose answer arrives during the outage is still streamed to its client
(relaying needs no database) and stored once MongoDB is back; then everything works again
without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from parley_devstack.stack import LocalStack
from tests.conftest import eventually
from tests.faults.conftest import TOKENS_PER_S, answered, start_stream

pytestmark = pytest.mark.faults

# The session retries an unreachable MongoDB (a failover takes seconds) until the gateway's gRPC
# deadline (GRPC_TIMEOUT_S, 10 s) is near: slow, but a bounded, clear refusal, never a hang.
REFUSAL_S = 12.0


def test_mongodb_outage_refuses_clearly_keeps_results_and_recovers(
    fault_stack: LocalStack, client: httpx.Client
) -> None:
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
    # The result consumed during the outage was applied after it, once.
    stored = eventually(answered(client, flight.chat_id), timeout=60, what="the stored answer")
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == flight.text
    stored_after = eventually(answered(client, after.json()["chat_id"]), timeout=30)
    assert [m["role"] for m in stored_after] == ["user", "assistant"]
    chats = client.get("/chats").json()["chats"]
    assert len(chats) == 2  # the refused turn stored nothing
