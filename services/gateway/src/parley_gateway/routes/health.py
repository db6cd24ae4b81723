"""Probes and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from parley_gateway.deps import PartsDep

router = APIRouter(tags=["operations"])


@router.get("/healthz/live", include_in_schema=False)
async def live() -> Response:
    return Response("ok\n", media_type="text/plain")


@router.get("/healthz/ready", include_in_schema=False)
async def ready(parts: PartsDep) -> Response:
    if not parts.ready:
        return Response("not ready\n", status_code=503, media_type="text/plain")
    return Response("ready\n", media_type="text/plain")


@router.get("/metrics", include_in_schema=False)
async def metrics(parts: PartsDep) -> Response:
    return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)
