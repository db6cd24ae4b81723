"""OpenTelemetry tracing for every service: set up from the standard OTEL_* variables, and the
few span helpers that follow one chat turn across HTTP, gRPC and Kafka.

Each service calls `setup_tracing` once at start-up, beside `configure_logging`::

    setup_tracing("parley-session")

The SDK is always installed, so that every log line carries its trace id and the W3C trace context
travels on to the next service even where nothing is exported. Spans leave the process only when
the environment says where to:

- `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`): OTLP over gRPC, e.g.
  `http://otel-collector:4317` (`OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._INSECURE` and
  `..._COMPRESSION` apply as usual);
- `OTEL_TRACES_EXPORTER`: `otlp`, `console` (one JSON line per span on stdout) or `none`,
  comma-separated; it overrides the choice above;
- `OTEL_TRACES_SAMPLER` / `..._ARG`, `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`
  and `OTEL_SDK_DISABLED=true` work as the OpenTelemetry specification says.

Spans never carry message content: ids, model names, token counts, cache scores and timings only.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.util.types import AttributeValue

__all__ = [
    "TracingConfigError",
    "add_event",
    "annotate",
    "record_span",
    "setup_tracing",
    "traced",
    "tracer",
]

P = ParamSpec("P")
R = TypeVar("R")

_INSTRUMENTATION = "parley"
_EXPORTERS = ("otlp", "console", "none")


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this build cannot do."""


def setup_tracing(
    service_name: str, *, environ: Mapping[str, str] | None = None
) -> TracerProvider | None:
    """Install the global tracer provider; returns it (None with `OTEL_SDK_DISABLED=true`).

    Spans still buffered are exported when the process exits normally.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = _exporter_names(env)
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(env)))
        elif name == "console":
            provider.add_span_processor(
                BatchSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line))
            )
    trace.set_tracer_provider(provider)
    return provider


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    named = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in named if n]
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(unknown)} is not supported: "
            f"use {', '.join(_EXPORTERS)} (comma-separated)"
        )
    return [n for n in names if n != "none"]


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or ""
    )
    if protocol not in ("", "grpc"):
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: this build exports OTLP "
            "over gRPC (port 4317 of a collector); set it to grpc or leave it unset"
        )
    # Imported here: it loads grpc and protobuf modules that a process exporting nothing skips.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return OTLPSpanExporter(endpoint=endpoint or None)


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


@functools.cache
def tracer() -> trace.Tracer:
    """Parley's tracer from the global provider, made once: before `setup_tracing` it is the
    API's proxy, which hands its spans to the provider installed later."""
    return trace.get_tracer(_INSTRUMENTATION)


def annotate(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Set attributes on the current span; None and empty strings are left out::

    annotate({"parley.chat_id": chat_id, "gen_ai.request.model": model})
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    for key, value in attributes.items():
        if value is not None and value != "":
            span.set_attribute(key, value)


def add_event(name: str, **attributes: AttributeValue) -> None:
    """An event on the current span (e.g. the first token of a generation)."""
    trace.get_current_span().add_event(name, attributes=attributes)


def record_span(
    name: str,
    *,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue | None] | None = None,
) -> None:
    """A finished span for an interval measured rather than lived through, as a child of the
    current span (e.g. the time a request waited in Kafka before a worker fetched it)."""
    span = tracer().start_span(name, start_time=start_ns)
    for key, value in (attributes or {}).items():
        if value is not None and value != "":
            span.set_attribute(key, value)
    span.end(end_time=max(end_ns, start_ns))


def traced(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Run an async function in a span of its own::

    @traced("generate")
    async def _generate(self, ...) -> Outcome: ...
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with tracer().start_as_current_span(name):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate
