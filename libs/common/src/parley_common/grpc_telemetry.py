"""gRPC interceptors (grpc.aio) that carry the W3C trace context and the request id in call
metadata, trace each call and, on the server, count it and write one log line per call::

    channel = grpc.aio.insecure_channel(addr, interceptors=client_interceptors())
    server = GrpcServer(port=port, interceptors=[ServerTelemetry(metrics.grpc)])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from parley_common.logs import current_log_fields, log_fields
from parley_common.metrics import GrpcServerMetrics
from parley_common.telemetry import tracer

__all__ = ["Observer", "ServerTelemetry", "client_interceptors"]

log = logging.getLogger("parley_common.grpc")

REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128
# Probes call these every few seconds: neither traced nor logged (still counted).
_QUIET_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})

# Called with (request, response, seconds) after a call succeeds, inside its span.
Observer = Callable[[Any, Any, float], None]


def _split(method: str | bytes) -> tuple[str, str]:
    """ "/parley.v1.SessionService/StartTurn" -> ("parley.v1.SessionService", "StartTurn")."""
    name = method.decode() if isinstance(method, bytes) else method
    service, _, rpc = name.lstrip("/").partition("/")
    return service, rpc


def _span_attributes(service: str, rpc: str) -> dict[str, str]:
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}


# --- client -------------------------------------------------------------------------------


def _outgoing_metadata(details: grpc.aio.ClientCallDetails) -> grpc.aio.Metadata:
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        metadata[key] = value
    request_id = current_log_fields().get("request_id")
    if request_id and metadata.get(REQUEST_ID_KEY) is None:
        metadata[REQUEST_ID_KEY] = str(request_id)
    return metadata


def _with_metadata(
    details: grpc.aio.ClientCallDetails, metadata: grpc.aio.Metadata
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout,
        metadata=metadata,
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _UnaryUnaryClient(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        service, rpc = _split(client_call_details.method)
        with tracer().start_as_current_span(
            f"{service}/{rpc}",
            kind=SpanKind.CLIENT,
            attributes=_span_attributes(service, rpc),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            details = _with_metadata(client_call_details, _outgoing_metadata(client_call_details))
            call = await continuation(details, request)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                _set_code(span, exc.code())
                raise
            _set_code(span, grpc.StatusCode.OK)
            return call


class _UnaryStreamClient(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        service, rpc = _split(client_call_details.method)
        span = tracer().start_span(
            f"{service}/{rpc}", kind=SpanKind.CLIENT, attributes=_span_attributes(service, rpc)
        )
        with trace.use_span(span, end_on_exit=False):
            details = _with_metadata(client_call_details, _outgoing_metadata(client_call_details))
        call = await continuation(details, request)
        # The stream is read after this returns: the span ends with the call.
        call.add_done_callback(lambda _: span.end())
        return call


def client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    """Interceptors for a grpc.aio channel: a CLIENT span per call, the trace context and the
    current request id (see `parley_common.logs.log_fields`) in the call's metadata."""
    return [_UnaryUnaryClient(), _UnaryStreamClient()]


def _set_code(span: trace.Span, code: grpc.StatusCode) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))


# --- server -------------------------------------------------------------------------------


class ServerTelemetry(grpc.aio.ServerInterceptor):
    """Per call: a SERVER span, child of the caller's span; the caller's request id in every log
    line; `metrics` counted and timed by method and status code; one log line at info.

    `observers` maps a full method name ("/parley.v1.CacheService/Lookup") to a function called
    with (request, response, seconds) after a successful call, inside its span: where a service
    records what only the response tells (a cache hit and its score).
    """

    def __init__(
        self, metrics: GrpcServerMetrics, *, observers: Mapping[str, Observer] | None = None
    ) -> None:
        self._metrics = metrics
        self._observers = dict(observers or {})

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        metadata = {
            key: value
            for key, value in (handler_call_details.invocation_metadata or ())
            if isinstance(value, str)
        }
        call = _Call(self._metrics, method, metadata, self._observers.get(method))
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                call.stream(cast(Any, handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client streaming: none in Parley's contracts


class _Call:
    def __init__(
        self,
        metrics: GrpcServerMetrics,
        method: str,
        metadata: Mapping[str, str],
        observer: Observer | None,
    ) -> None:
        self._metrics = metrics
        self._service, self._rpc = _split(method)
        self._metadata = metadata
        self._observer = observer
        self._quiet = self._service in _QUIET_SERVICES
        request_id = metadata.get(REQUEST_ID_KEY, "")[:_MAX_REQUEST_ID]
        self._fields = {"request_id": request_id} if request_id else {}

    def unary(self, behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Any]:
        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            with self._span() as span, log_fields(**self._fields):
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    self._done(span, context, started, exc)
                    raise
                if self._observer is not None and _code(context, None) is grpc.StatusCode.OK:
                    self._observer(request, response, time.perf_counter() - started)
                self._done(span, context, started, None)
                return response

        return handle

    def stream(self, behavior: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[..., Any]:
        async def handle(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            with self._span() as span, log_fields(**self._fields):
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as exc:
                    self._done(span, context, started, exc)
                    raise
                self._done(span, context, started, None)

        return handle

    def _span(self) -> contextlib.AbstractContextManager[trace.Span]:
        if self._quiet:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return tracer().start_as_current_span(
            f"{self._service}/{self._rpc}",
            context=propagate.extract(self._metadata),
            kind=SpanKind.SERVER,
            attributes=_span_attributes(self._service, self._rpc),
            record_exception=False,
            set_status_on_exception=False,
        )

    def _done(
        self,
        span: trace.Span,
        context: grpc.aio.ServicerContext[Any, Any],
        started: float,
        exc: BaseException | None,
    ) -> None:
        seconds = time.perf_counter() - started
        code = _code(context, exc)
        self._metrics.observe(self._service, self._rpc, code.name, seconds)
        if self._quiet:
            return
        _set_code(span, code)
        if exc is not None and code is grpc.StatusCode.UNKNOWN:
            span.record_exception(exc)
        log.info(
            "grpc call",
            extra={
                "grpc_method": f"{self._service}/{self._rpc}",
                "grpc_code": code.name,
                "duration_ms": round(seconds * 1000, 2),
            },
        )


def _code(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None
) -> grpc.StatusCode:
    """The status a call ends with: what the servicer set or aborted with; a servicer's own
    exception is UNKNOWN, a cancellation CANCELLED."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
