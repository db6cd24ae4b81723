"""How long the session service takes to build a turn's context, by chat length and policy.

    python -m bench.context_build            # 300 calls a row (about 2 minutes)
    python -m bench.context_build --quick    # 100 calls a row

Starts MongoDB alone (the local stack's), the session service in this process on a grpc.aio
server with the tiny model's tokenizer and chat template, fills chats of 10, 100 and 1,000
messages, and times the `BuildContext` RPC from a client in this process (the store reads, the
exact token counts and the gRPC round trip; no message is stored). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from pymongo import AsyncMongoClient

from bench._harness import REPO, machine, ms, pct, table
from parley.v1 import session_pb2, session_pb2_grpc
from parley_common.grpc_server import GrpcServer
from parley_common.ids import new_id
from parley_devstack.stack import LocalStack
from parley_devstack.tiny_model import build_tiny_model
from parley_session.config import Settings
from parley_session.server import SessionServicer
from parley_session.stores import Stores
from parley_session.tokens import TokenCounter

SIZES = (10, 100, 1000)
_QUESTION = "Could you explain how the {k}th step of the recipe works, and why it matters?"
_ANSWER = (
    "Step {k}: knead the dough for ten minutes, then let it rise for an hour in a warm place; "
    "this develops the gluten, which is what gives the bread its structure."
)
_SUMMARY = (
    "The user is baking bread and has asked about each step of the recipe in turn: mixing, "
    "kneading, rising, shaping and baking. The assistant explained the reasons for each step. "
) * 3


@dataclass(frozen=True, slots=True)
class Row:
    messages: int
    policy: str
    window: int


ROWS = [
    *(Row(n, "truncate", 2048) for n in SIZES),
    *(Row(n, "summarize", 2048) for n in SIZES),
    *(Row(n, "full", 131_072) for n in SIZES),
    *(Row(n, "truncate", 131_072) for n in SIZES),
]
_POLICIES = {
    "full": session_pb2.HISTORY_POLICY_FULL,
    "truncate": session_pb2.HISTORY_POLICY_TRUNCATE,
    "summarize": session_pb2.HISTORY_POLICY_SUMMARIZE,
}


async def _fill(store: Stores, tokens: TokenCounter, user_id: str, size: int) -> str:
    """A chat of `size` messages (questions and answers), written directly."""
    first = _QUESTION.format(k=0)
    opened = await store.chats.open_chat(
        user_id,
        bot_id="default",
        title="bench",
        request_id=new_id(),
        content=first,
        token_count=tokens.count(first),
    )
    chat = opened.chat
    now = datetime.now(UTC)
    docs: list[dict[str, Any]] = []
    parent_id = opened.question.message_id if opened.question is not None else None
    for ordinal in range(1, size):
        k = ordinal // 2
        role = "user" if ordinal % 2 == 0 else "assistant"
        content = (_QUESTION if role == "user" else _ANSWER).format(k=k)
        docs.append(
            {
                "_id": new_id(),
                "chat_id": chat.chat_id,
                "user_id": user_id,
                "parent_id": parent_id,
                "ordinal": ordinal,
                "role": role,
                "content": content,
                "token_count": tokens.count(content),
                "request_id": f"bench-{k}",
                "created_at": now,
                "finish_reason": "stop" if role == "assistant" else "",
            }
        )
        parent_id = docs[-1]["_id"]
    await store.db["messages"].insert_many(docs)
    next_ordinal = size + size % 2
    await store.db["chats"].update_one(
        {"_id": chat.chat_id},
        {
            "$set": {"next_ordinal": next_ordinal, "message_count": size, "active_leaf": parent_id},
            "$unset": {"leaf_slot": ""},
        },
    )
    # The summarize rows: a summary of all but the last 20 messages (ending with an answer).
    through = size - 21 if size % 2 == 0 else size - 20
    if through > 0:
        await store.summaries.store_summary(
            chat.chat_id,
            request_id="bench",
            text=_SUMMARY,
            through_ordinal=through,
            token_count=tokens.count(_SUMMARY),
        )
    return chat.chat_id


async def _measure(
    stub: session_pb2_grpc.SessionServiceAsyncStub,
    user_id: str,
    chat_id: str,
    policy: str,
    calls: int,
) -> tuple[list[float], session_pb2.Context]:
    request = session_pb2.BuildContextRequest(
        user_id=user_id,
        chat_id=chat_id,
        content="And what should I do next?",
        history_policy=_POLICIES[policy],
        max_tokens=256,
    )
    for _ in range(max(calls // 10, 5)):  # warm the connection pool and the caches
        context = await stub.BuildContext(request)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        context = await stub.BuildContext(request)
        times.append(time.perf_counter() - started)
    return times, context


async def _run(mongodb_uri: str, tokenizer: Path, calls: int) -> str:
    database = f"bench_context_{new_id()[:8]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=True)
    store = Stores(client, database)
    tokens = TokenCounter(str(tokenizer))
    results: dict[Row, list[object]] = {}
    try:
        await store.ensure_indexes()
        user = await store.users.create_user("bench")
        chats = {size: await _fill(store, tokens, user.user_id, size) for size in SIZES}
        for window in sorted({row.window for row in ROWS}):
            settings = Settings(
                mongodb_uri=mongodb_uri,
                mongodb_database=database,
                tokenizer_path=str(tokenizer),
                context_window=window,
            )
            server = GrpcServer(port=0, host="127.0.0.1")
            session_pb2_grpc.add_SessionServiceServicer_to_server(
                SessionServicer(store, tokens, settings), server.server
            )
            await server.start(["parley.v1.SessionService"])
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            stub = session_pb2_grpc.SessionServiceStub(channel)
            try:
                for row in (r for r in ROWS if r.window == window):
                    times, context = await _measure(
                        stub, user.user_id, chats[row.messages], row.policy, calls
                    )
                    results[row] = [
                        f"{row.messages:,}",
                        row.policy,
                        f"{row.window:,}",
                        ms(pct(times, 50)),
                        ms(pct(times, 99)),
                        len(context.messages) - 1,
                        "yes" if context.summary_used else "no",
                        f"{context.prompt_tokens:,}",
                    ]
                    print(f"  {row.messages} messages, {row.policy}, window {window}: done")
            finally:
                await channel.close()
                await server.stop(grace_s=1)
    finally:
        await client.drop_database(database)
        await client.close()
    return table(
        [
            "chat messages",
            "policy",
            "window",
            "median ms",
            "p99 ms",
            "messages sent",
            "summary",
            "prompt tokens",
        ],
        [results[row] for row in ROWS],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Time BuildContext by chat length and policy.")
    parser.add_argument("--quick", action="store_true", help="100 calls a row instead of 300")
    args = parser.parse_args()
    calls = 100 if args.quick else 300
    tokenizer = build_tiny_model(REPO / ".stack" / "models" / "tiny")
    stack = LocalStack()
    stack.install()
    print("Starting MongoDB ...", flush=True)
    stack.mongo.start()
    try:
        section = asyncio.run(_run(stack.addresses.mongodb_uri, tokenizer, calls))
    finally:
        stack.stop()
    where = machine()
    print(
        "\n## BuildContext latency\n\n"
        f"{calls} calls a row, one at a time, after a warm-up; the tiny model's tokenizer and "
        "chat template; a 256-token reply budget; the summarize rows have a summary of all but "
        "the last 20 messages.\n"
        f"Machine: {where['CPU']}, {where['cores']} cores, load {where['load average at start']}.\n"
    )
    print(section)


if __name__ == "__main__":
    main()
