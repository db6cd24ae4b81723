"""Fixtures of the cache service's tests: the service in-process on a grpc.aio server, backed by
the real Qdrant of the `local_stack` fixture and the real all-MiniLM-L6-v2 embedder.

Each test gets a collection of its own, so tests never see each other's entries; answers are
stored the way the service stores them, by the `ResultIndexer` applying a `CompletionResult`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import grpc
import pytest
from qdrant_client import AsyncQdrantClient

from parley.v1 import cache_pb2, cache_pb2_grpc, envelopes_pb2, types_pb2
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.feedback_counts import FeedbackCounts
from parley_cache.qdrant_grpc import PointsClient, connect
from parley_cache.results import ResultIndexer
from parley_cache.server import CacheServicer
from parley_cache.store import CacheStore
from parley_cache.tuning import FeedbackTuner
from parley_cache.verifier import default_verifier
from parley_common.grpc_server import GrpcServer
from parley_devstack.stack import LocalStack

SYSTEM_PROMPT = "You are a helpful assistant."


class Clock:
    """The store's time, moved on by the test (TTLs of days pass at once)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def conversation(*turns: str, system: str = SYSTEM_PROMPT) -> list[types_pb2.ChatMessage]:
    """Messages as the gateway sends them: the system prompt, then user and assistant turns
    alternating, the last one the user's question."""
    assert len(turns) % 2 == 1, "the last turn must be the user's"
    messages = [types_pb2.ChatMessage(role=types_pb2.ROLE_SYSTEM, content=system)] if system else []
    for index, content in enumerate(turns):
        role = types_pb2.ROLE_USER if index % 2 == 0 else types_pb2.ROLE_ASSISTANT
        messages.append(types_pb2.ChatMessage(role=role, content=content))
    return messages


class CacheService:
    """One cache service in this process: a store on its own collection, the servicer on a gRPC
    server, a client stub and the results indexer. ``transport="http"``: the store searches and
    upserts over Qdrant's HTTP API (its fallback) instead of gRPC."""

    def __init__(
        self,
        stack: LocalStack,
        embedder: Embedder,
        clock: Clock,
        *,
        transport: Literal["grpc", "http"] = "grpc",
        **overrides: Any,
    ) -> None:
        self.settings = Settings(
            **{
                "qdrant_addr": stack.addresses.qdrant_addr,
                "qdrant_grpc_addr": stack.addresses.qdrant_grpc_addr,
                **overrides,
            }
        )
        self.embedder = embedder
        self.clock = clock
        host, _, port = self.settings.qdrant_addr.rpartition(":")
        self.client = AsyncQdrantClient(host=host, port=int(port), https=False, timeout=10)
        # Searches and upserts over gRPC, as the service makes them.
        self.qdrant_channel = connect(self.settings.qdrant_grpc_target)
        self.store = CacheStore(
            self.client,
            embedding_model=embedder.model_id,
            dimension=embedder.dimension,
            collection=f"test_cache_{uuid.uuid4().hex[:12]}",
            clock=clock,
            points=PointsClient(self.qdrant_channel, timeout_s=10) if transport == "grpc" else None,
        )
        self.indexer = ResultIndexer(
            self.store, embedder, default_ttl_s=self.settings.cache_ttl_seconds
        )
        # Hits and rejections per scope, in a collection of this service's own (as a replica
        # of a deployment writes them: see parley_cache.feedback_counts).
        self.feedback = FeedbackCounts(
            self.client, collection=f"test_feedback_{uuid.uuid4().hex[:12]}", clock=clock
        )
        self.tuner = FeedbackTuner(default_verifier().weights.calibration, self.feedback)
        self.servicer = CacheServicer(self.store, embedder, self.settings, tuner=self.tuner)
        self.server = GrpcServer(port=0, host="127.0.0.1")
        self.channel: grpc.aio.Channel | None = None
        self.stub: cache_pb2_grpc.CacheServiceAsyncStub

    async def start(self) -> None:
        await self.store.ensure_collection()
        await self.feedback.ensure_collection()
        cache_pb2_grpc.add_CacheServiceServicer_to_server(self.servicer, self.server.server)
        await self.server.start(["parley.v1.CacheService"])
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = cache_pb2_grpc.CacheServiceStub(self.channel)

    async def stop(self) -> None:
        await self.server.stop(grace_s=1)
        if self.channel is not None:
            await self.channel.close()
        await self.qdrant_channel.close()
        try:
            await self.client.delete_collection(self.store.collection)
            await self.client.delete_collection(self.feedback.collection)
        finally:
            await self.client.close()

    async def lookup(
        self,
        user_id: str,
        *turns: str,
        system: str = SYSTEM_PROMPT,
        bot_id: str = "default",
        model: str = "parley-tiny",
        max_tokens: int = 256,
        **fields: Any,
    ) -> cache_pb2.LookupResponse:
        return await self.stub.Lookup(
            cache_pb2.LookupRequest(
                user_id=user_id,
                bot_id=bot_id,
                model=model,
                messages=conversation(*turns, system=system),
                max_tokens=max_tokens,
                **fields,
            ),
            timeout=30,
        )

    async def answer(
        self,
        lookup: cache_pb2.LookupResponse,
        text: str,
        *,
        user_id: str,
        request_id: str | None = None,
        finish_reason: types_pb2.FinishReason.ValueType = types_pb2.FINISH_REASON_STOP,
    ) -> str:
        """Store `text` as the answer to a missed lookup, as the results consumer does; returns
        the request id."""
        assert lookup.HasField("key"), "only a miss carries the key an answer is stored under"
        request_id = request_id or uuid.uuid4().hex
        await self.indexer(
            envelopes_pb2.CompletionResult(
                request_id=request_id,
                user_id=user_id,
                kind=envelopes_pb2.COMPLETION_KIND_CHAT,
                text=text,
                finish_reason=finish_reason,
                cache_key=lookup.key,
            )
        )
        return request_id

    async def ask(self, user_id: str, *turns: str, answer: str, **fields: Any) -> str:
        """A turn that misses and gets `answer` stored; returns its request id."""
        missed = await self.lookup(user_id, *turns, **fields)
        assert not missed.hit, f"expected a miss for {turns[-1]!r}, got {missed.answer!r}"
        return await self.answer(missed, answer, user_id=user_id)


CacheFactory = Callable[..., Awaitable[CacheService]]


@pytest.fixture(scope="session")
async def embedder() -> AsyncIterator[Embedder]:
    # A wide batching window so that concurrent lookups in the tests really share batches.
    async with Embedder(max_wait_ms=10.0) as embedder:
        yield embedder


@pytest.fixture(scope="session")
async def forgetful_embedder() -> AsyncIterator[Embedder]:
    """Without the vectors of recent texts: a text asked again is embedded again (the tests of
    batching compare a text embedded alone with the same text embedded in a batch)."""
    async with Embedder(max_wait_ms=10.0, memo_size=0) as embedder:
        yield embedder


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_cache(
    local_stack: LocalStack, embedder: Embedder, clock: Clock
) -> AsyncIterator[CacheFactory]:
    """Start in-process cache services: `await make_cache(cache_setting=value)`, with another
    embedder: `await make_cache(embedder=...)`, over Qdrant's HTTP API only:
    `await make_cache(transport="http")`."""
    started: list[CacheService] = []

    async def make(
        *,
        embedder: Embedder = embedder,
        transport: Literal["grpc", "http"] = "grpc",
        **overrides: Any,
    ) -> CacheService:
        service = CacheService(local_stack, embedder, clock, transport=transport, **overrides)
        started.append(service)
        await service.start()
        return service

    yield make
    for service in reversed(started):
        await service.stop()


@pytest.fixture
async def cache(make_cache: CacheFactory) -> CacheService:
    return await make_cache()
