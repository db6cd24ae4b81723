"""What the gateway adds to traces, metrics and logs around each HTTP request and each turn.

The SERVER span of each request is FastAPI's own (its native OpenTelemetry support, on once
`setup_tracing` has installed a tracer provider; `FASTAPI_TELEMETRY` configures it): a child of
the client's `traceparent` when it sends one, named by route template, with operation spans for
dependencies, endpoint and serialization inside.

`RequestTelemetry` (ASGI middleware, the outermost of ours, inside FastAPI's span): the request
counted and timed by route template and status, an `X-Request-ID` on every response, the request
id in every log line, and one access log line at info.

`observe_turn` wraps a turn's events to time its first text and its whole answer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.v1 import cache_pb2
from parley_common.ids import new_id
from parley_common.logs import bind_log_fields, log_fields
from parley_common.telemetry import annotate
from parley_gateway.errors import ApiError
from parley_gateway.metrics import GatewayMetrics
from parley_gateway.relay import TextChunk
from parley_gateway.schemas import TurnAnswer

__all__ = [
    "FASTAPI_TELEMETRY",
    "RequestTelemetry",
    "annotate_cache",
    "annotate_turn",
    "observe_turn",
]

log = logging.getLogger("parley_gateway.access")

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Any other method a client sends is labelled "_OTHER": labels stay bounded whatever comes in.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes come every few seconds: counted, but neither traced nor logged at info.
_QUIET_ROUTES = frozenset({"/healthz/live", "/healthz/ready", "/metrics"})

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class _Request:
    arrived: float  # perf_counter, for the turn timings
    span: trace.Span  # the request's SERVER span, where the turn's attributes go


_request: ContextVar[_Request | None] = ContextVar("parley_gateway_request", default=None)


def _quiet(scope: Any) -> bool:
    return scope.get("path", "") in _QUIET_ROUTES


# Spans only, exported by `setup_tracing`'s provider: the metrics are Prometheus' (below), the
# logs our JSON lines.
FASTAPI_TELEMETRY: TelemetryConfig = {
    "metrics": False,
    "logs": False,
    "auto_configure": False,
    "exclude": _quiet,
}


class RequestTelemetry:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.fullmatch(given) else new_id()
        status = 500
        current = _request.set(_Request(started, trace.get_current_span()))
        self._metrics.http_in_flight.inc()
        with log_fields(request_id=request_id) as fields:

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    # The turn's own request id once it is known (see `annotate_turn`).
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", str(fields["request_id"]).encode()),
                    ]
                await send(message)

            try:
                await self._app(scope, receive, send_with_id)
            finally:
                self._metrics.http_in_flight.dec()
                _request.reset(current)
                self._done(scope, method, status, started, fields)

    def _done(
        self, scope: Scope, method: str, status: int, started: float, fields: dict[str, Any]
    ) -> None:
        seconds = time.perf_counter() - started
        route = str(getattr(scope.get("route"), "path", "")) or "unmatched"
        self._metrics.http_requests.labels(method, route, str(status)).inc()
        self._metrics.http_request_duration.labels(method, route, str(status)).observe(seconds)
        log.log(
            logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
            "request",
            extra={
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "request_id": fields["request_id"],
            },
        )


def _annotate_request(attributes: Mapping[str, AttributeValue | None]) -> None:
    request = _request.get()
    if request is None:
        annotate(attributes)
        return
    for key, value in attributes.items():
        if value is not None and value != "":
            request.span.set_attribute(key, value)


def annotate_turn(*, request_id: str, chat_id: str, model: str) -> None:
    """Name the turn in the request's span and in every later log line of this request (the
    access line and the `X-Request-ID` header included)."""
    bind_log_fields(request_id=request_id)
    _annotate_request(
        {"parley.request_id": request_id, "parley.chat_id": chat_id, "gen_ai.request.model": model}
    )


def annotate_cache(lookup: cache_pb2.LookupResponse | None) -> None:
    if lookup is None:
        return
    _annotate_request(
        {"parley.cache.hit": lookup.hit, "parley.cache.score": round(lookup.score, 4)}
    )


def observe_turn(
    events: AsyncIterator[E], metrics: GatewayMetrics, *, source: str
) -> AsyncIterator[E]:
    """Pass a turn's events through, timing its first text and its answer from the arrival of
    the request, and counting its tokens."""
    request = _request.get()
    arrived = request.arrived if request is not None else time.perf_counter()
    return _observed(events, metrics, source, arrived)


async def _observed(
    events: AsyncIterator[E], metrics: GatewayMetrics, source: str, arrived: float
) -> AsyncIterator[E]:
    first = True
    try:
        async for event in events:
            if isinstance(event, TurnAnswer):
                metrics.turn_duration.labels(source, event.finish_reason).observe(
                    time.perf_counter() - arrived
                )
                metrics.tokens.labels("prompt", source).inc(event.usage.prompt_tokens)
                metrics.tokens.labels("completion", source).inc(event.usage.completion_tokens)
                _annotate_request(
                    {
                        "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
                        "gen_ai.usage.output_tokens": event.usage.completion_tokens,
                        "gen_ai.response.finish_reasons": [event.finish_reason],
                    }
                )
            elif first and isinstance(event, TextChunk):
                first = False
                metrics.time_to_first_token.labels(source).observe(time.perf_counter() - arrived)
            yield event
    except ApiError as exc:
        if exc.type == "generation_failed":  # the model's failure, not the client's or ours
            metrics.turn_duration.labels(source, "error").observe(time.perf_counter() - arrived)
        raise
    finally:
        # Whoever stops reading (a client gone, an answer taken) closes the turn's own stream.
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
