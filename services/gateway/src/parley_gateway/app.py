"""The gateway's FastAPI application and the lifecycle of its clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI

from parley.v1 import cache_pb2_grpc, session_pb2_grpc
from parley_common.kafka import Topics, ensure_topics, make_producer
from parley_gateway.auth import Authenticator
from parley_gateway.config import Settings
from parley_gateway.deps import Parts
from parley_gateway.errors import install_error_handlers
from parley_gateway.limits import BodySizeLimit
from parley_gateway.replies import ReplyRouter
from parley_gateway.routes import admin, chats, health
from parley_gateway.turns import TurnService

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        topics = Topics()
        session_channel = grpc.aio.insecure_channel(settings.session_addr)
        cache_channel = grpc.aio.insecure_channel(settings.cache_addr)
        session = session_pb2_grpc.SessionServiceStub(session_channel)
        await ensure_topics(
            settings.kafka_addr,
            [topics.requests, topics.results, topics.control, topics.dead_letters],
        )
        producer = make_producer(
            settings.kafka_addr, client_id=f"parley-gateway-{settings.gateway_instance_id}"
        )
        await producer.start()
        replies = ReplyRouter(settings.kafka_addr, topics.reply(settings.gateway_instance_id))
        await replies.start()
        parts = Parts(
            settings=settings,
            session=session,
            auth=Authenticator(
                session,
                admin_key=settings.admin_api_key.get_secret_value(),
                ttl_s=settings.auth_cache_ttl_s,
                timeout_s=settings.grpc_timeout_s,
            ),
            turns=TurnService(
                session=session,
                cache=cache_pb2_grpc.CacheServiceStub(cache_channel),
                producer=producer,
                replies=replies,
                topics=topics,
                completion_timeout_s=settings.completion_timeout_s,
                cache_timeout_s=settings.cache_timeout_s,
                grpc_timeout_s=settings.grpc_timeout_s,
            ),
            ready=True,
        )
        app.state.parts = parts
        log.info("gateway ready", extra={"reply_topic": replies.topic})
        try:
            yield
        finally:
            parts.ready = False
            await replies.stop()
            await producer.stop()
            await session_channel.close()
            await cache_channel.close()

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        summary="A self-hosted conversational AI platform.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(chats.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
