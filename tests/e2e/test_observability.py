"""Observability of the running platform: one connected trace per chat turn across every
service (collected by an OTLP receiver in this test, to which every process exports), metrics
that answer operators' questions, and log lines that join the trace.

The stack and the platform here are this module's own: on a Kafka shared with another platform,
the consumer groups would hand some of this module's requests and results to the other
platform's processes, whose spans and metrics this module cannot see. The platform runs the fake
engine (no model to load, a known time to first token) with OTEL_* variables pointing every
process at the receiver.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

FAKE_TTFT_S = 0.05
QUESTION = "Which lighthouse keeper painted the storm of 1903?"
SERVICES = ("parley-gateway", "parley-session", "parley-cache", "parley-worker")
KIND = trace_pb2.Span.SpanKind


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: tuple[str, ...]
    start_ns: int
    end_ns: int


def _value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class SpanCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span every process exports to it."""

    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(  # noqa: N802 - the OTLP service's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        Span(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                            events=tuple(e.name for e in s.events),
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                        )
                    )
        with self.lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def find(self, **attributes: Any) -> list[Span]:
        with self.lock:
            return [
                s
                for s in self.spans
                if all(s.attributes.get(k) == v for k, v in attributes.items())
            ]


@pytest.fixture(scope="module")
def collector() -> Iterator[tuple[SpanCollector, int]]:
    receiver = SpanCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        receiver, server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def observed_stack() -> Iterator[LocalStack]:
    data_dir = Path(tempfile.mkdtemp(prefix="parley-observed-"))
    stack = LocalStack(data_dir)
    try:
        stack.install()
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def traced_platform(
    observed_stack: LocalStack,
    collector: tuple[SpanCollector, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    _, port = collector
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
    with Platform(
        observed_stack.addresses,
        run_dir=tmp_path_factory.mktemp("observed"),
        model_dir=None,
        engine="fake",
        env=env,
        service_env={
            "worker": {"FAKE_TTFT_S": str(FAKE_TTFT_S), "FAKE_TOKENS_PER_S": "400"},
            # A loaded test machine embeds slowly at first: a lookup must not time out here.
            "gateway": {"CACHE_TIMEOUT_S": "10"},
        },
    ) as running:
        yield running


@dataclass
class Turns:
    """The turns this module drives, once, and what the tests check about them."""

    api_key: str
    first: httpx.Response
    follow_up: httpx.Response
    cached: httpx.Response
    answered: list[dict[str, Any]]  # every turn's answer, in order

    @property
    def by_workers(self) -> list[dict[str, Any]]:
        return [a for a in self.answered if not a["answer"]["cached"]]


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _get(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} is not exposed"
    return samples[key]


def _metrics_url(platform: Platform, service: str) -> str:
    proc = {"session": platform.session, "cache": platform.cache, "worker": platform.workers[0]}
    return f"http://127.0.0.1:{proc[service].env['METRICS_PORT']}/metrics"


@pytest.fixture(scope="module")
def turns(traced_platform: Platform) -> Turns:
    base = traced_platform.gateway_url
    with httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {traced_platform.admin_api_key}"},
        timeout=30,
    ) as admin:
        user = admin.post("/admin/users", json={"name": "observer"})
        assert user.status_code == 201, user.text
        key = admin.post(f"/admin/users/{user.json()['user_id']}/keys", json={"name": "obs"})
        assert key.status_code == 201, key.text
    api_key = key.json()["api_key"]
    with httpx.Client(
        base_url=base, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as client:
        first = client.post("/chat", json={"message": QUESTION, "max_tokens": 8})
        assert first.status_code == 200, first.text
        chat_id = first.json()["chat_id"]
        follow_up = client.post(
            f"/chat/{chat_id}/completion",
            json={"message": "And who kept the light?", "max_tokens": 16},
        )
        assert follow_up.status_code == 200, follow_up.text
        answered = [first.json(), follow_up.json()]

        # The same first question in a new chat is answered from the cache once the first
        # answer is indexed (the cache service reads it from the results topic).
        cache_url = _metrics_url(traced_platform, "cache")
        eventually(
            lambda: (
                _scrape(cache_url).get(
                    ("parley_results_consumed_total", (("outcome", "applied"),)), 0
                )
                >= 2
            ),
            what="the cache service to read both results",
        )

        def cache_hit() -> httpx.Response | None:
            again = client.post("/chat", json={"message": QUESTION, "max_tokens": 8})
            assert again.status_code == 200, again.text
            answered.append(again.json())
            return again if again.json()["answer"]["cached"] else None

        cached = eventually(cache_hit, timeout=20, what="an answer from the cache")
    return Turns(
        api_key=api_key, first=first, follow_up=follow_up, cached=cached, answered=answered
    )


def _one_of(spans: list[Span], **where: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one span with {where}, found {len(found)}: {found}"
    return found[0]


def _child_of(spans: list[Span], parent: Span, **where: Any) -> Span:
    return _one_of(spans, parent_id=parent.span_id, **where)


def _within(spans: list[Span], ancestor: Span, **where: Any) -> Span:
    """The one span matching `where` below `ancestor` (FastAPI puts its operation spans, e.g.
    `fastapi.endpoint`, between a request and the calls it makes)."""
    by_id = {s.span_id: s for s in spans}

    def below(span: Span) -> bool:
        parent = by_id.get(span.parent_id)
        while parent is not None:
            if parent.span_id == ancestor.span_id:
                return True
            parent = by_id.get(parent.parent_id)
        return False

    return _one_of([s for s in spans if below(s)], **where)


def _turn_trace(collector: SpanCollector, request_id: str, services: int = 4) -> list[Span]:
    """The trace of the turn named `request_id`, once every service's spans have arrived."""

    def complete() -> list[Span] | None:
        roots = collector.find(**{"parley.request_id": request_id})
        gateway = [
            r for r in roots if r.service == "parley-gateway" and r.kind == KIND.SPAN_KIND_SERVER
        ]
        if not gateway:
            return None
        spans = collector.trace(gateway[0].trace_id)
        consumers = [s for s in spans if s.name == "process parley.completions.results"]
        if len({s.service for s in spans}) < services or len(consumers) < 2:
            return None
        return spans

    try:
        return eventually(complete, timeout=20, what=f"the whole trace of {request_id}")
    except AssertionError as exc:
        found = collector.find(**{"parley.request_id": request_id})
        spans = collector.trace(found[0].trace_id) if found else []
        raise AssertionError(f"{exc}; its spans so far: {_outline(spans)}") from None


def _outline(spans: list[Span]) -> str:
    return "; ".join(f"{s.service}:{s.name}[{s.span_id}<-{s.parent_id}]" for s in spans)


def test_a_turn_is_one_trace_across_every_service(
    turns: Turns, collector: tuple[SpanCollector, int]
) -> None:
    receiver, _ = collector
    request_id = turns.first.json()["request_id"]
    spans = _turn_trace(receiver, request_id)
    assert {s.service for s in spans} == set(SERVICES)

    # Connected: one root (the gateway's request), every other span's parent in the trace.
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.name, r.kind) for r in roots] == [
        ("parley-gateway", "POST /chat", KIND.SPAN_KIND_SERVER)
    ]
    orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
    assert orphans == []

    root = roots[0]
    assert root.attributes["http.route"] == "/chat"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["parley.chat_id"] == turns.first.json()["chat_id"]
    assert root.attributes["parley.cache.hit"] is False
    assert root.attributes["gen_ai.usage.output_tokens"] == 8

    # gateway -> session (gRPC)
    start_turn = _within(
        spans, root, service="parley-gateway", name="parley.v1.SessionService/StartTurn"
    )
    assert start_turn.kind == KIND.SPAN_KIND_CLIENT
    session_side = _child_of(spans, start_turn, service="parley-session")
    assert session_side.kind == KIND.SPAN_KIND_SERVER
    assert session_side.attributes["rpc.grpc.status_code"] == 0
    assert any(s.parent_id == session_side.span_id and s.name.startswith("mongodb ") for s in spans)

    # gateway -> cache (gRPC)
    lookup = _within(spans, root, service="parley-gateway", name="parley.v1.CacheService/Lookup")
    cache_side = _child_of(spans, lookup, service="parley-cache")
    assert cache_side.attributes["parley.cache.outcome"] == "miss"

    # gateway -> Kafka -> worker
    enqueue = _within(
        spans, root, service="parley-gateway", name="send parley.completions.requests"
    )
    assert enqueue.kind == KIND.SPAN_KIND_PRODUCER
    worker = _child_of(spans, enqueue, service="parley-worker")
    assert worker.kind == KIND.SPAN_KIND_CONSUMER
    assert worker.attributes["parley.request_id"] == request_id
    queue_wait = _child_of(spans, worker, name="queue wait")
    assert queue_wait.end_ns >= queue_wait.start_ns
    generate = _child_of(spans, worker, name="generate")
    assert "first token" in generate.events
    assert generate.attributes["gen_ai.usage.output_tokens"] == 8
    assert generate.attributes["gen_ai.usage.input_tokens"] > 0
    assert generate.end_ns - generate.start_ns >= FAKE_TTFT_S * 1e9

    # worker -> Kafka -> results consumers (session stores the answer, cache indexes it)
    published = _child_of(spans, worker, name="send parley.completions.results")
    stored = {
        s.service
        for s in spans
        if s.parent_id == published.span_id and s.kind == KIND.SPAN_KIND_CONSUMER
    }
    assert stored == {"parley-session", "parley-cache"}

    # No message content in any span: ids, names, numbers only.
    everything = json.dumps([s.attributes for s in spans])
    assert QUESTION not in everything
    assert turns.first.json()["answer"]["content"] not in everything


def test_a_cache_hit_is_traced_with_its_score(
    turns: Turns, collector: tuple[SpanCollector, int]
) -> None:
    receiver, _ = collector
    answer = turns.cached.json()
    spans = _turn_trace(receiver, answer["request_id"], services=3)
    root = _one_of(spans, parent_id="")
    assert root.attributes["parley.cache.hit"] is True
    assert root.attributes["parley.cache.score"] == pytest.approx(
        answer["answer"]["cache_score"], abs=1e-3
    )
    lookup = _within(spans, root, service="parley-gateway", name="parley.v1.CacheService/Lookup")
    assert _child_of(spans, lookup, service="parley-cache").attributes["parley.cache.outcome"] == (
        "hit"
    )
    assert not any(s.service == "parley-worker" for s in spans)  # no generation for a hit


def test_metrics_answer_operators_questions(turns: Turns, traced_platform: Platform) -> None:
    gateway = _scrape(traced_platform.gateway_url + "/metrics")
    # By route template, never by path: the chat id is not in any label.
    assert (
        _get(gateway, "parley_http_requests_total", method="POST", route="/chat", status="200") >= 2
    )
    assert (
        _get(
            gateway,
            "parley_http_requests_total",
            method="POST",
            route="/chat/{chat_id}/completion",
            status="200",
        )
        == 1
    )
    chat_id = turns.first.json()["chat_id"]
    assert not any(chat_id in str(labels) for _, labels in gateway)
    generated = turns.by_workers
    ttft_count = _get(gateway, "parley_gateway_time_to_first_token_seconds_count", source="worker")
    ttft_sum = _get(gateway, "parley_gateway_time_to_first_token_seconds_sum", source="worker")
    assert ttft_count == len(generated)
    assert ttft_sum / ttft_count >= FAKE_TTFT_S  # the user waits at least the engine's TTFT
    e2e_sum = _get(
        gateway, "parley_gateway_turn_duration_seconds_sum", source="worker", finish_reason="length"
    )
    assert e2e_sum >= ttft_sum
    # The cached answer is the first one, cut at max_tokens: served as cut.
    assert (
        _get(
            gateway,
            "parley_gateway_turn_duration_seconds_count",
            source="cache",
            finish_reason="length",
        )
        >= 1
    )
    completion = _get(
        gateway, "parley_gateway_tokens_total", direction="completion", source="worker"
    )
    assert completion == sum(a["answer"]["usage"]["completion_tokens"] for a in generated)
    assert _get(gateway, "parley_gateway_tokens_total", direction="prompt", source="worker") > 0
    for reason in ("requests_per_minute", "tokens_per_minute", "queue_full"):
        assert _get(gateway, "parley_gateway_admission_refusals_total", reason=reason) == 0
    assert _get(gateway, "parley_kafka_errors_total", operation="produce") == 0

    session_url = _metrics_url(traced_platform, "session")
    eventually(
        lambda: (
            _get(_scrape(session_url), "parley_results_consumed_total", outcome="applied")
            == len(turns.answered)
        ),
        what="the session service to store every answer",
    )
    session = _scrape(session_url)
    started = _get(
        session,
        "parley_grpc_server_requests_total",
        grpc_service="parley.v1.SessionService",
        grpc_method="StartTurn",
        grpc_code="OK",
    )
    assert started == len(turns.answered)
    assert _get(session, "parley_results_delay_seconds_count") == len(turns.answered)
    mongo = [
        v
        for (name, _), v in session.items()
        if name == "parley_mongodb_command_duration_seconds_count"
    ]
    assert sum(mongo) > 0
    assert _get(session, "parley_kafka_errors_total", operation="commit") == 0

    cache = _scrape(_metrics_url(traced_platform, "cache"))
    assert _get(cache, "parley_cache_lookups_total", outcome="miss") == len(generated)
    assert _get(cache, "parley_cache_lookups_total", outcome="hit") == 1
    hit_scores = _get(cache, "parley_cache_similarity_sum", outcome="hit")
    hits = _get(cache, "parley_cache_similarity_count", outcome="hit")
    assert 0.8 <= hit_scores / hits <= 1.0001  # over the default threshold
    assert _get(cache, "parley_cache_lookup_duration_seconds_count", outcome="miss") == len(
        generated
    )
    assert (
        _get(
            cache,
            "parley_grpc_server_requests_total",
            grpc_service="parley.v1.CacheService",
            grpc_method="Lookup",
            grpc_code="OK",
        )
        >= 3
    )

    worker = _scrape(_metrics_url(traced_platform, "worker"))
    assert _get(worker, "parley_worker_queue_wait_seconds_count") == len(generated)
    ttft = _get(worker, "parley_worker_time_to_first_token_seconds_sum")
    assert ttft >= len(generated) * FAKE_TTFT_S
    assert ttft <= ttft_sum  # the engine's part of what the user waited
    assert _get(worker, "parley_worker_time_per_output_token_seconds_count") == len(generated)
    assert _get(worker, "parley_worker_output_tokens_total") == completion
    assert _get(worker, "parley_worker_prompt_tokens_total") > 0
    assert _get(worker, "parley_worker_slots") > 0
    assert _get(worker, "parley_worker_engine_utilization_ratio") == 0  # nothing running now

    def lag_measured() -> bool:
        lag = _scrape(_metrics_url(traced_platform, "worker"))
        return _get(lag, "parley_worker_consumer_lag_messages") == 0

    assert eventually(lag_measured, timeout=15, what="the worker's lag")


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def test_log_lines_carry_the_turns_trace_and_request_id(
    turns: Turns, traced_platform: Platform, collector: tuple[SpanCollector, int]
) -> None:
    receiver, _ = collector
    request_id = turns.first.json()["request_id"]
    trace_id = _turn_trace(receiver, request_id)[0].trace_id
    assert turns.first.headers["x-request-id"] == request_id

    gateway = _log_lines(traced_platform.gateways[0].log_path)
    access = [
        line
        for line in gateway
        if line.get("msg") == "request" and line.get("trace_id") == trace_id
    ]
    assert len(access) == 1
    assert access[0]["level"] == "info"
    assert access[0]["method"] == "POST"
    assert access[0]["route"] == "/chat"
    assert access[0]["status"] == 200
    assert access[0]["request_id"] == request_id
    assert access[0]["duration_ms"] > 0

    session = _log_lines(traced_platform.session.log_path)
    calls = [
        line
        for line in session
        if line.get("trace_id") == trace_id and line.get("grpc_method", "").endswith("/StartTurn")
    ]
    assert [c["request_id"] for c in calls] == [request_id]  # the id crossed gRPC

    worker = _log_lines(traced_platform.workers[0].log_path)
    done = [
        line
        for line in worker
        if line.get("msg") == "request done" and line.get("trace_id") == trace_id
    ]
    assert [d["request_id"] for d in done] == [request_id]


def test_nothing_secret_reaches_the_logs(turns: Turns, traced_platform: Platform) -> None:
    for proc in traced_platform.processes:
        text = proc.log_path.read_text(errors="replace")
        assert turns.api_key not in text, proc.name
        assert QUESTION not in text, proc.name
        assert re.search(r"Bearer\s+\S", text) is None, proc.name
