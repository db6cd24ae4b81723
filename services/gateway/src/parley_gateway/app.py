"""The gateway's FastAPI application and the lifecycle of its clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from parley.v1 import cache_pb2_grpc, session_pb2, session_pb2_grpc
from parley_common.grpc_server import message_limit_for
from parley_common.grpc_telemetry import client_interceptors
from parley_common.kafka import ensure_topics, make_producer
from parley_gateway.admission import QueueMonitor, RateLimiter
from parley_gateway.async_completions import AsyncCompletions
from parley_gateway.auth import Authenticator
from parley_gateway.config import Settings
from parley_gateway.cors import install_cors, parse_origins
from parley_gateway.deps import Parts
from parley_gateway.errors import install_error_handlers
from parley_gateway.limits import BodySizeLimit, JsonBodyCheck
from parley_gateway.metrics import GatewayMetrics
from parley_gateway.oidc import OidcClient, group_roles
from parley_gateway.openapi import install_openapi
from parley_gateway.replies import ReplyRouter
from parley_gateway.routes import (
    accounts,
    admin,
    attachments,
    bots,
    chat_settings,
    chats,
    completions,
    embeddings,
    feedback,
    health,
    keys,
    openai,
    responses,
    sso,
    text_completions,
    web,
    ws,
)
from parley_gateway.routes.attachments import UPLOAD_OVERHEAD_BYTES, UPLOAD_PATH
from parley_gateway.session_client import SessionClient
from parley_gateway.telemetry import FASTAPI_TELEMETRY, RequestTelemetry
from parley_gateway.turns import TurnService

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# gRPC's default reconnect backoff grows to two minutes: a session or cache pod that restarts
# would stay unreachable (every cache lookup a miss) long after it is back.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """`registry`: where the metrics go (prometheus_client.REGISTRY in the service; default: a
    registry of this app's own). The wiring of every part, in start-up order: long, read once."""
    metrics = GatewayMetrics(registry or CollectorRegistry())
    attachment_message_bytes = message_limit_for(settings.attachment_max_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        topics = settings.topics()
        session_channel = grpc.aio.insecure_channel(
            settings.session_addr,
            # An attached file travels to the session service in one message.
            options=[
                *_CHANNEL_OPTIONS,
                ("grpc.max_send_message_length", attachment_message_bytes),
                ("grpc.max_receive_message_length", attachment_message_bytes),
            ],
            interceptors=client_interceptors(),
        )
        cache_channel = grpc.aio.insecure_channel(
            settings.cache_addr, options=_CHANNEL_OPTIONS, interceptors=client_interceptors()
        )
        session = SessionClient(
            session_pb2_grpc.SessionServiceStub(session_channel), timeout_s=settings.grpc_timeout_s
        )
        await ensure_topics(
            settings.kafka_addr,
            [topics.requests, topics.results, topics.control, topics.dead_letters],
        )
        producer = make_producer(
            settings.kafka_addr,
            client_id=f"parley-gateway-{settings.gateway_instance_id}",
            kafka_metrics=metrics.kafka,
        )
        await producer.start()
        replies = ReplyRouter(settings.kafka_addr, topics.reply(settings.gateway_instance_id))
        await replies.start()
        limiter = RateLimiter(
            session,
            requests_per_minute=settings.rate_limit_requests_per_minute,
            tokens_per_minute=settings.rate_limit_tokens_per_minute,
            budgets=session_pb2.Budgets(
                period_s=settings.budget_period_s,
                user_requests=settings.budget_user_requests,
                user_tokens=settings.budget_user_tokens,
                tenant_requests=settings.budget_tenant_requests,
                tenant_tokens=settings.budget_tenant_tokens,
            ),
        )
        turns = TurnService(
            session=session,
            cache=cache_pb2_grpc.CacheServiceStub(cache_channel),
            producer=producer,
            replies=replies,
            topics=topics,
            completion_timeout_s=settings.completion_timeout_s,
            cache_timeout_s=settings.cache_timeout_s,
            metrics=metrics,
            limiter=limiter,
            cache_sample_share=settings.cache_sample_share,
        )
        queue = QueueMonitor(
            settings.kafka_addr,
            topic=topics.requests,
            group=settings.worker_group,
            max_depth=settings.max_queue_depth,
            refresh_s=settings.queue_depth_refresh_s,
            local_in_flight=lambda: turns.in_flight,
        )
        await queue.start()
        async_completions = AsyncCompletions(
            session,
            follow_timeout_s=settings.completion_timeout_s + 30,
        )
        parts = Parts(
            settings=settings,
            session=session,
            auth=Authenticator(
                session,
                admin_key=settings.admin_api_key.get_secret_value(),
                ttl_s=settings.auth_cache_ttl_s,
                session_policy=session_pb2.SessionPolicy(
                    idle_timeout_s=settings.session_idle_timeout_s,
                    absolute_timeout_s=settings.session_absolute_timeout_s,
                ),
            ),
            turns=turns,
            limiter=limiter,
            queue=queue,
            async_completions=async_completions,
            metrics=metrics,
            ready=True,
            cache=cache_pb2_grpc.CacheServiceStub(cache_channel),
        )
        if settings.oidc_issuer:
            parts.oidc = OidcClient(
                issuer=settings.oidc_issuer,
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret.get_secret_value(),
                redirect_uri=settings.oidc_redirect_uri,
                scopes=settings.oidc_scopes,
                groups_claim=settings.oidc_groups_claim,
                roles=group_roles(settings.oidc_group_roles),
            )
        app.state.parts = parts
        log.info("gateway ready", extra={"reply_topic": replies.topic})
        try:
            yield
        finally:
            parts.ready = False
            if parts.oidc is not None:
                await parts.oidc.aclose()
            await async_completions.stop()
            await queue.stop()
            await replies.stop()
            await producer.stop()
            await session_channel.close()
            await cache_channel.close()

    app = FastAPI(
        title="Parley",
        version="0.1.0",
        summary="A self-hosted conversational AI platform.",
        lifespan=lifespan,
        telemetry=FASTAPI_TELEMETRY,
    )
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(chats.router)
    app.include_router(attachments.router)
    app.include_router(ws.router)
    app.include_router(completions.router)
    app.include_router(openai.router)
    app.include_router(embeddings.router)
    app.include_router(text_completions.router)
    app.include_router(responses.router)
    app.include_router(web.router)
    web.warn_if_not_built()
    app.include_router(bots.router)
    app.include_router(feedback.router)
    app.include_router(chat_settings.router)
    app.include_router(admin.router)
    app.include_router(accounts.router)
    app.include_router(accounts.account_router)
    app.include_router(keys.router)
    app.include_router(sso.router)
    app.include_router(health.router)
    # Inside the size limit, which bounds what this one reads.
    app.add_middleware(JsonBodyCheck)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        larger=(UPLOAD_PATH, settings.attachment_max_bytes + UPLOAD_OVERHEAD_BYTES),
    )
    # Outside the body checks: a preflight carries no body, and refusals carry CORS headers too.
    install_cors(app, parse_origins(settings.cors_allowed_origins))
    # Outermost: times and logs what the other middleware refuses too.
    app.add_middleware(RequestTelemetry, metrics=metrics)
    return app
