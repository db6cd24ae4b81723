"""Fixtures of the session service's tests: the service in-process on a grpc.aio server, backed
by the real MongoDB replica set (and Kafka where a test needs it) of the `local_stack` fixture."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from parley.v1 import session_pb2, session_pb2_grpc
from parley_common.grpc_server import GrpcServer
from parley_common.ids import new_id
from parley_common.kafka import ResultsConsumer, ensure_topics, make_producer
from parley_devstack.stack import LocalStack
from parley_devstack.tiny_model import build_tiny_model
from parley_session.availability import MongoAvailability, report_health
from parley_session.completions import CompletionService, ResultTracker
from parley_session.config import Settings
from parley_session.metrics import SessionMetrics
from parley_session.results import ResultRecorder
from parley_session.retry import RetryPolicy, StoreUnavailableError
from parley_session.server import SessionServicer
from parley_session.stores import Stores
from parley_session.summaries import Summarizer
from parley_session.tokens import TokenCounter

REPO = Path(__file__).resolve().parents[3]
SERVICE = "parley.v1.SessionService"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model(REPO / ".stack" / "models" / "tiny")


@pytest.fixture(scope="session")
def tokens(tiny_model: Path) -> TokenCounter:
    return TokenCounter(str(tiny_model))


class Service:
    """One session service in this process: its store, its gRPC server and a client stub.

    With `kafka=True` it also publishes summary requests and applies results from the results
    topic (in a consumer group of its own), as the real service does.
    """

    def __init__(self, stack: LocalStack, tiny_model: Path, *, kafka: bool, **overrides: Any):
        self.database = f"session_test_{new_id()[:12]}"
        self.settings = Settings(
            mongodb_uri=stack.addresses.mongodb_uri,
            mongodb_database=self.database,
            kafka_addr=stack.addresses.kafka_addr,
            tokenizer_path=str(tiny_model),
            results_group=f"session-test-{new_id()[:8]}",
            # Topics of its own: other tests (and platforms) share this Kafka.
            topic_prefix=overrides.pop("topic_prefix", f"sessiontest-{new_id()[:8]}."),
            **overrides,
        )
        self.kafka = kafka
        self.topics = self.settings.topics()
        # A registry of its own: the MongoDB commands this service ran, and nothing else's.
        self.metrics = SessionMetrics(CollectorRegistry())
        self.client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.settings.mongodb_uri,
            serverSelectionTimeoutMS=self.settings.mongodb_timeout_ms,
            tz_aware=True,
            event_listeners=[self.metrics.mongodb_listener()],
        )
        self.server = GrpcServer(port=0, host="127.0.0.1")
        self.availability = MongoAvailability(
            self.client, on_change=report_health(self.server.health, SERVICE)
        )
        self.store = Stores(
            self.client,
            self.database,
            retry=RetryPolicy(
                attempts=self.settings.store_retry_attempts,
                attempt_timeout_s=self.settings.mongodb_timeout_ms / 1000,
                total_s=self.settings.store_retry_s,
                availability=self.availability,
            ),
        )
        self.tokens = TokenCounter(str(tiny_model))
        self.completions = CompletionService.for_store(
            self.store,
            self.tokens,
            model_name=self.settings.model_name,
            context_window=self.settings.context_window,
            default_max_tokens=self.settings.default_max_tokens,
        )
        # What the results consumer runs for each result (the service's own handler chain).
        self.results = ResultTracker(
            ResultRecorder(self.store, self.tokens, summary_retry_s=self.settings.summary_retry_s),
            self.completions,
        )
        self.producer: AIOKafkaProducer | None = None
        self.summarizer: Summarizer | None = None
        self.consumer: ResultsConsumer | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: session_pb2_grpc.SessionServiceAsyncStub

    async def start(self) -> None:
        await self.store.ensure_indexes()
        await self.completions.ensure_indexes()
        if self.kafka:
            await ensure_topics(
                self.settings.kafka_addr,
                [
                    self.topics.requests,
                    self.topics.results,
                    self.topics.control,
                    self.topics.dead_letters,
                ],
            )
            self.producer = make_producer(self.settings.kafka_addr, client_id="session-test")
            await self.producer.start()
            self.summarizer = Summarizer(
                self.store,
                self.tokens,
                self.producer,
                topics=self.topics,
                window=self.settings.context_window,
                timeout_s=self.settings.summary_timeout_s,
                retry_s=self.settings.summary_retry_s,
            )
            self.consumer = ResultsConsumer(
                bootstrap=self.settings.kafka_addr,
                group_id=self.settings.results_group,
                handler=self.results,
                producer=self.producer,
                topics=self.topics,
                transient=(StoreUnavailableError,),
            )
            await self.consumer.start()
        self.servicer = SessionServicer(
            self.store,
            self.tokens,
            self.settings,
            summarizer=self.summarizer,
            completions=self.completions,
        )
        session_pb2_grpc.add_SessionServiceServicer_to_server(self.servicer, self.server.server)
        await self.server.start([SERVICE])
        await self.availability.start()
        self.address = f"127.0.0.1:{self.server.port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = session_pb2_grpc.SessionServiceStub(self.channel)

    async def stop(self) -> None:
        await self.server.stop(grace_s=2)
        await self.availability.stop()
        if self.channel is not None:
            await self.channel.close()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.summarizer is not None:
            await self.summarizer.aclose()
        if self.producer is not None:
            await self.producer.stop()
        try:
            await self.client.drop_database(self.database)
        finally:
            await self.client.close()

    def commands(self) -> Counter[str]:
        """The MongoDB commands this service has run so far, by name (from its metrics), but
        the availability check's pings, which keep their own clock."""
        ran: Counter[str] = Counter()
        for metric in self.metrics.mongodb_commands.collect():
            for sample in metric.samples:
                if sample.name.endswith("_count") and sample.labels["command"] != "ping":
                    ran[sample.labels["command"]] += int(sample.value)
        return ran

    async def user(self, name: str = "tester") -> str:
        created = await self.stub.CreateUser(session_pb2.CreateUserRequest(name=name), timeout=10)
        return created.user_id

    async def turn(
        self, user_id: str, content: str, chat_id: str = "", **fields: Any
    ) -> session_pb2.StartTurnResponse:
        timeout = fields.pop("timeout", 20)
        fields.setdefault("request_id", new_id())
        return await self.stub.StartTurn(
            session_pb2.StartTurnRequest(
                user_id=user_id, chat_id=chat_id, content=content, **fields
            ),
            timeout=timeout,
        )

    async def answer(self, turn: session_pb2.StartTurnResponse, text: str) -> None:
        """Store the turn's answer as the results consumer would."""
        stored = await self.store.chats.append_answer(
            chat_id=turn.chat.chat_id,
            question_ordinal=turn.user_message.ordinal,
            content=text,
            token_count=self.tokens.count(text),
            request_id=turn.user_message.request_id,
            finish_reason="stop",
        )
        assert stored


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def make_service(local_stack: LocalStack, tiny_model: Path) -> AsyncIterator[ServiceFactory]:
    """Start in-process session services: `await make_service(kafka=..., SETTING=value)`."""
    started: list[Service] = []

    async def make(*, kafka: bool = False, **overrides: Any) -> Service:
        service = Service(local_stack, tiny_model, kafka=kafka, **overrides)
        started.append(service)
        await service.start()
        return service

    yield make
    for service in reversed(started):
        await service.stop()


@pytest.fixture
async def service(make_service: ServiceFactory) -> Service:
    return await make_service()


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float = 30.0, what: str = ""
) -> Any:
    """Await `check()` until it returns something truthy (results are applied asynchronously)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or check}")
        await asyncio.sleep(0.1)


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    return eventually
