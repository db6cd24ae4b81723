"""Searches and upserts over Qdrant's gRPC API (the service's hot path) against its HTTP API
(what the store falls back to without a gRPC channel): the same entries, found by the same
filters, with the same payloads; and what the service does when the gRPC port cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest

from parley_cache.keying import CacheKey, ContextMode, Role, Turn
from parley_cache.store import STORE_ERRORS, CacheStore, Candidate, NewEntry
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import LocalStack

if TYPE_CHECKING:
    from conftest import CacheFactory, CacheService

pytestmark = pytest.mark.integration

QUESTION = "How do I read a file?"
REWORDED = "What's the way to read a file?"
RUST = [Turn(Role.USER, "I write Rust."), Turn(Role.ASSISTANT, "Great, Rust is a fine choice!")]


def _key(question: str, context: list[Turn] | None = None) -> CacheKey:
    return CacheKey.build(
        bot_id="default",
        model="parley-tiny",
        system_prompt="You are a helpful assistant.",
        turns=[*(context or []), Turn(Role.USER, question)],
    )


def _summary(found: list[Candidate]) -> list[tuple[str, str, CacheKey, float, float | None]]:
    return [
        (
            c.entry_id,
            c.answer,
            c.key,
            round(c.score, 4),
            None if c.context_score is None else round(c.context_score, 4),
        )
        for c in found
    ]


async def test_grpc_and_http_find_the_same_entries(cache: CacheService) -> None:
    grpc_store = cache.store
    http_store = CacheStore(
        cache.client,
        embedding_model=cache.embedder.model_id,
        dimension=cache.embedder.dimension,
        collection=grpc_store.collection,
        clock=cache.clock,
    )
    question, reworded, context = await cache.embedder.embed_many(
        [QUESTION, REWORDED, _key(QUESTION, RUST).context_text]
    )

    def entry(name: str, scope: str, **fields: object) -> NewEntry:
        values: dict[str, object] = {
            "request_id": f"{name}-{uuid.uuid4().hex[:6]}",
            "vector": question,
            "scope_key": scope,
            "key": _key(QUESTION),
            "answer": f"answer {name}",
            "ttl_s": 3600,
            "complete": True,
            "max_tokens": 256,
            **fields,
        }
        return NewEntry(**values)  # type: ignore[arg-type]

    # Half written over each transport: each must read what the other wrote.
    over_grpc = [
        entry("alice", "user:alice"),
        entry("bob", "user:bob"),
        entry("expiring", "user:alice", ttl_s=10),
        entry("rust", "user:alice", key=_key(QUESTION, RUST), context_vector=context),
    ]
    over_http = [
        entry("cut", "user:alice", vector=reworded, complete=False, max_tokens=100),
        entry("global", "global"),
        entry(
            "other-bot",
            "user:alice",
            key=CacheKey.build(
                bot_id="pirate",
                model="parley-tiny",
                system_prompt="Arr.",
                turns=[Turn(Role.USER, QUESTION)],
            ),
        ),
    ]
    await grpc_store.put_many(over_grpc)
    await http_store.put_many(over_http)
    cache.clock.advance(60)  # past the expiring entry's TTL
    ids = {e.answer.removeprefix("answer "): e.entry_id for e in over_grpc + over_http}
    carols = await grpc_store.evict(user_id="carol", entry_id=ids["global"], delete_shared_after=3)
    assert carols.evicted == 1

    searches: list[tuple[dict[str, object], set[str]]] = [
        ({"scopes": ["user:alice"]}, {"alice"}),
        ({"scopes": ["user:alice"], "max_tokens": 100}, {"alice", "cut"}),
        ({"scopes": ["user:alice", "global"]}, {"alice", "global"}),
        # Left out for the user who rejected it only.
        ({"scopes": ["user:carol", "global"], "user_id": "carol"}, set()),
        ({"scopes": ["user:alice", "global"], "user_id": "alice"}, {"alice", "global"}),
        ({"scopes": ["user:bob", "user:carol"]}, {"bob"}),
        ({"scopes": ["user:alice"], "key": _key(QUESTION, RUST)}, {"rust"}),
        (
            {
                "scopes": ["user:alice"],
                "key": _key(QUESTION, RUST),
                "mode": ContextMode.SEMANTIC,
                "context_vector": context,
            },
            {"rust"},
        ),
        ({"scopes": ["user:alice"], "score_threshold": 0.9999, "max_tokens": 100}, {"alice"}),
    ]
    for search, expected in searches:
        arguments: dict[str, object] = {
            "key": _key(QUESTION),
            "max_tokens": 256,
            "limit": 5,
            "score_threshold": 0.79,
            **search,
        }
        by_grpc = await grpc_store.search(question, **arguments)  # type: ignore[arg-type]
        by_http = await http_store.search(question, **arguments)  # type: ignore[arg-type]
        assert {c.entry_id for c in by_grpc} == {ids[name] for name in expected}, search
        assert _summary(by_grpc) == _summary(by_http), search
        if search.get("mode") is ContextMode.SEMANTIC:
            assert all(c.context_score is not None and c.context_score > 0.99 for c in by_grpc)
        for candidate in by_grpc:
            name = candidate.answer.removeprefix("answer ")
            assert candidate.key == next(
                e.key for e in over_grpc + over_http if e.answer.endswith(name)
            )

    # The payload written over gRPC is the one the HTTP API writes, types included.
    stored = await cache.client.retrieve(
        grpc_store.collection, ids=[ids["rust"], ids["cut"]], with_payload=True
    )
    by_id = {str(point.id): point.payload or {} for point in stored}
    rust, cut = by_id[ids["rust"]], by_id[ids["cut"]]
    assert set(rust) == set(cut)
    assert rust["context"] == [
        {"role": "user", "content": "I write Rust."},
        {"role": "assistant", "content": "Great, Rust is a fine choice!"},
    ]
    for field, kind in (
        ("created_at", int),
        ("expires_at", int),
        ("key_version", int),
        ("max_tokens", int),
        ("complete", bool),
        ("question", str),
    ):
        assert type(rust[field]) is kind, field
        assert type(cut[field]) is kind, field
    assert rust["expires_at"] - rust["created_at"] == 3600


async def test_lookups_are_misses_while_qdrant_grpc_cannot_be_reached(
    make_cache: CacheFactory,
) -> None:
    (closed,) = pick_free_ports(1)
    cache = await make_cache(qdrant_grpc_addr=f"127.0.0.1:{closed}")
    started = time.monotonic()
    missed = await cache.lookup("alice", QUESTION)
    assert time.monotonic() - started < 5
    assert not missed.hit
    # The key still comes back, so the fresh answer can be stored once Qdrant is back.
    assert len(missed.key.question_vector) == 384
    with pytest.raises(STORE_ERRORS) as failed:
        await cache.answer(missed, "std::fs", user_id="alice")
    assert isinstance(failed.value, grpc.aio.AioRpcError)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_the_service_refuses_to_start_without_qdrant_grpc(local_stack: LocalStack) -> None:
    (closed,) = pick_free_ports(1)
    grpc_port, metrics_port = pick_free_ports(2)
    env = {
        **os.environ,
        **local_stack.addresses.as_env(),
        "QDRANT_GRPC_ADDR": f"127.0.0.1:{closed}",
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(metrics_port),
        "OTEL_SDK_DISABLED": "true",
    }
    finished = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "parley_cache"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 1
    assert f"Qdrant's gRPC API is not reachable at 127.0.0.1:{closed}" in finished.stderr
    assert "QDRANT_GRPC_ADDR" in finished.stderr
    assert "Traceback" not in finished.stderr
