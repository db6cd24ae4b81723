"""The summarize policy end to end: the session service asks for a summary on the requests topic
of a real Kafka, a real worker (the tiny model: its summary is gibberish, which is fine) answers on
the results topic, the results consumer stores it, and later turns send it instead of old turns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from parley.v1 import session_pb2, types_pb2
from parley_common.ids import new_id
from parley_devstack.platform import ServiceProcess
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import LocalStack
from parley_session.stores import SummaryJob, SummaryJobState

if TYPE_CHECKING:
    from conftest import Service, ServiceFactory

pytestmark = pytest.mark.integration

Wait = Callable[..., Awaitable[Any]]
SYSTEM = "You are a helpful AI assistant named Parley."
HEADER = "Summary of the earlier conversation (older turns are not shown):"


@pytest.fixture(scope="module")
def worker_topics(
    local_stack: LocalStack, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real worker process (the transformers engine on the tiny model) on topics of its own;
    yields their prefix."""
    prefix = f"sessiontest-{new_id()[:8]}."
    (metrics_port,) = pick_free_ports(1)
    proc = ServiceProcess(
        "worker",
        "parley_worker",
        {
            **local_stack.addresses.as_env(),
            "ENGINE": "transformers",
            "MODEL_NAME": str(tiny_model),
            "TOPIC_PREFIX": prefix,
            "WORKER_GROUP": f"workers-{prefix}",
            "WORKER_ID": "summary-test-worker",
            "METRICS_PORT": str(metrics_port),
            "MAX_CONCURRENCY": "2",
            "PYTHONUNBUFFERED": "1",
        },
        tmp_path_factory.mktemp("worker") / "worker.log",
        ready_url=f"http://127.0.0.1:{metrics_port}/healthz/ready",
    )
    proc.start()
    try:
        deadline = time.monotonic() + 180
        while not proc.is_ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready:\n{proc.log_tail()}")
            time.sleep(0.2)
        yield prefix
    finally:
        proc.stop()


def sent(turn: session_pb2.StartTurnResponse) -> list[tuple[int, str]]:
    return [(m.role, m.content) for m in turn.context.messages]


async def stored_messages(service: Service, user: str, chat_id: str) -> list[session_pb2.Message]:
    got = await service.stub.GetChat(
        session_pb2.GetChatRequest(user_id=user, chat_id=chat_id, include_messages=True)
    )
    return list(got.messages)


async def test_older_turns_are_summarized_by_a_worker_and_replace_them(
    make_service: ServiceFactory, worker_topics: str, wait_for: Wait
) -> None:
    window, reply = 600, 40
    service = await make_service(
        kafka=True,
        topic_prefix=worker_topics,
        context_window=window,
        default_max_tokens=reply,
        default_history_policy="summarize",
        summarize_at=0.5,
        keep_recent=0.2,
        summary_max_tokens=32,
        previous_answer_wait_s=0,
    )
    alice = await service.user("alice")
    chat_id = ""
    answer = "The train leaves at 07:45 and arrives at 10:20, after stopping in four towns."
    summary_seen_at = None
    for k in range(30):
        turn = await service.turn(alice, f"Question {k}: when does train {k} leave?", chat_id)
        chat_id = turn.chat.chat_id
        assert turn.context.policy == session_pb2.HISTORY_POLICY_SUMMARIZE
        assert turn.context.prompt_tokens <= window - reply
        if turn.context.summary_used:
            summary_seen_at = k
            break
        # While no summary exists the chat goes on, truncated: never blocked.
        assert sent(turn)[0] == (types_pb2.ROLE_SYSTEM, SYSTEM)
        await service.answer(turn, answer)

        async def settled(chat_id: str = chat_id) -> bool:
            return await service.store.summaries.summary_job(chat_id) is None

        # Once a summary was asked for, give the worker the time to answer it.
        await wait_for(settled, within=60, what="the summary request answered")
    assert summary_seen_at is not None, "no turn ever used a summary"

    chat = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=alice, chat_id=chat_id))
    through = chat.chat.summary_through_ordinal
    assert through % 2 == 1  # it covers whole turns, up to an answer
    assert turn.context.summary_through_ordinal == through
    system_role, system_text = sent(turn)[0]
    assert system_role == types_pb2.ROLE_SYSTEM
    assert system_text == f"{SYSTEM}\n\n{HEADER}\n{chat.chat.summary}"
    # After the summary: the turns it does not cover, verbatim and in order.
    recent = [m for m in await stored_messages(service, alice, chat_id) if m.ordinal > through]
    assert [(m.role, m.content) for m in recent][-(len(turn.context.messages) - 1) :] == sent(turn)[
        1:
    ]
    assert len(turn.context.messages) - 1 + turn.context.dropped_messages == len(recent)
    # It was a worker's answer to a summary request of this chat.
    doc = await service.store.db["chats"].find_one({"_id": chat_id})
    assert doc is not None
    assert doc["summary"]["request_id"].startswith("summary-")
    assert "summary_job" not in doc


async def test_a_failed_summary_is_retried_and_never_blocks_the_chat(
    make_service: ServiceFactory, worker_topics: str, wait_for: Wait
) -> None:
    window, reply = 400, 40
    service = await make_service(
        kafka=True,
        topic_prefix=worker_topics,
        context_window=window,
        default_max_tokens=reply,
        default_history_policy="summarize",
        summarize_at=0.4,
        keep_recent=0.1,
        summary_max_tokens=32,
        # Expired before any worker can start it: the worker answers EXPIRED, ungenerated.
        summary_timeout_s=0.001,
        summary_retry_s=0.2,
        previous_answer_wait_s=0,
    )
    bob = await service.user("bob")
    chat_id = ""
    answer = "Knead the dough for ten minutes, let it rise for an hour, then bake it."
    attempts_seen: list[int] = []
    for k in range(14):
        turn = await service.turn(bob, f"Bread question {k}?", chat_id)
        chat_id = turn.chat.chat_id
        assert not turn.context.summary_used
        assert turn.context.prompt_tokens <= window - reply
        await service.answer(turn, answer)
        job = await service.store.summaries.summary_job(chat_id)
        if job is None:
            continue

        async def failed(chat_id: str = chat_id) -> SummaryJob | None:
            now = await service.store.summaries.summary_job(chat_id)
            return now if now is not None and now.state is SummaryJobState.FAILED else None

        job = await wait_for(failed, within=60, what="the expired summary reported back")
        attempts_seen.append(job.attempts)
        if job.attempts == 3:
            break
        await asyncio.sleep(0.2 * 2 ** (job.attempts - 1))  # let the backoff pass
    assert sorted(set(attempts_seen))[:3] == [1, 2, 3]
    chat = await service.stub.GetChat(session_pb2.GetChatRequest(user_id=bob, chat_id=chat_id))
    assert chat.chat.summary == ""
