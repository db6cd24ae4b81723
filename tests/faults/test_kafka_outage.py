"""The Kafka broker stopped for 10 s and started again.

During the outage a turn is refused at once with 503 and Retry-After (the question is kept, and a
retry with the same request_id is answered later); reads go on. Afterwards the platform works
again without any restart, a turn that was being generated when the broker went away is answered
and stored, and no turn is stored twice.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest

from parley_devstack.stack import LocalStack
from tests.conftest import eventually
from tests.faults.conftest import TOKENS_PER_S, answered, start_stream

pytestmark = pytest.mark.faults

OUTAGE_S = 10.0
# The gateway waits at most 2 s for the broker (turns.QUEUE_WAIT_S); the rest is the turn's own
# work (auth, storing the question, the cache lookup) on a busy machine.
QUICK_REFUSAL_S = 4.0


def _turn(client: httpx.Client, message: str, **extra: Any) -> httpx.Response:
    return client.post("/chat", json={"message": message, "max_tokens": 5, **extra})


def test_kafka_outage_refuses_quickly_loses_nothing_and_recovers(
    fault_stack: LocalStack, client: httpx.Client
) -> None:
    before = _turn(client, "Before the outage")
    assert before.status_code == 200, before.text
    # Six seconds of generation: the broker goes away in the middle of it.
    long_tokens = int(6 * TOKENS_PER_S)
    flight = start_stream(client, {"message": "A long answer, please", "max_tokens": long_tokens})
    assert flight.first_chunk.wait(30), "the long turn never started"
    assert flight.status == 200, flight.error

    refused: list[tuple[str, str]] = []
    fault_stack.kafka.stop()
    try:
        down_at = time.monotonic()
        while time.monotonic() - down_at < OUTAGE_S:
            message = f"During the outage, question {len(refused)}"
            request_id = f"kafka-outage-{secrets.token_hex(6)}"
            started = time.monotonic()
            reply = _turn(client, message, request_id=request_id)
            took = time.monotonic() - started
            assert reply.status_code == 503, reply.text
            assert took < QUICK_REFUSAL_S, f"refused only after {took:.1f} s"
            assert int(reply.headers["Retry-After"]) > 0
            error = reply.json()["error"]
            assert error["type"] == "service_unavailable"
            assert "request_id" in error["message"]
            refused.append((message, request_id))
        # Reading needs no queue.
        listed = client.get("/chats")
        assert listed.status_code == 200, listed.text
    finally:
        fault_stack.kafka.start()
    assert refused

    # One request id for every try: a try refused while the producer reconnects is retried
    # as the same turn, as a client should, and not as a chat of its own.
    after_id = f"kafka-outage-after-{secrets.token_hex(6)}"

    def recovered() -> httpx.Response | None:
        reply = _turn(client, "After the outage", request_id=after_id)
        return reply if reply.status_code == 200 else None

    after = eventually(recovered, timeout=90, what="a turn answered after Kafka came back")
    assert after.json()["answer"]["content"]

    # Each refused question, retried with its request_id, is answered and stored once.
    retried_chats = []
    for message, request_id in refused:
        reply = _turn(client, message, request_id=request_id)
        assert reply.status_code == 200, reply.text
        retried_chats.append(reply.json()["chat_id"])
    for chat_id in retried_chats:
        stored = eventually(answered(client, chat_id), timeout=60, what="a retried answer")
        assert [m["role"] for m in stored] == ["user", "assistant"]

    # The turn in flight when the broker stopped is answered (redone if need be), stored once.
    flight.join(120)
    stored = eventually(answered(client, flight.chat_id), timeout=120, what="the long answer")
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["finish_reason"] == "length"
    assert stored[1]["content"] == " tok" * long_tokens

    chats = client.get("/chats", params={"limit": 100}).json()["chats"]
    assert len(chats) == len(refused) + 3  # before, in flight, after, and the retried ones
    for chat in chats:
        roles = [m["role"] for m in client.get(f"/chat/{chat['chat_id']}").json()["messages"]]
        assert roles == ["user", "assistant"], (chat["title"], roles)
