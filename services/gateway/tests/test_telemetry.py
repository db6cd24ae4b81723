"""The gateway's request telemetry on a small app: labels by route template, the request id, the
access log line, and the timing of a turn's events."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI, Response
from prometheus_client import CollectorRegistry

from parley_common.logs import JsonFormatter
from parley_gateway.errors import ApiError
from parley_gateway.metrics import GatewayMetrics
from parley_gateway.relay import TextChunk
from parley_gateway.schemas import TurnAnswer, Usage
from parley_gateway.telemetry import RequestTelemetry, annotate_turn, observe_turn
from parley_gateway.turns import generation_failed


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry())


@pytest.fixture
def access_log() -> Iterator[list[dict[str, object]]]:
    lines: list[dict[str, object]] = []
    formatter = JsonFormatter("gateway")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    logger = logging.getLogger("parley_gateway.access")
    handler = Collect()
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(previous)


def _app(metrics: GatewayMetrics) -> FastAPI:
    app = FastAPI()

    @app.get("/chat/{chat_id}")
    async def read(chat_id: str) -> dict[str, str]:
        return {"chat_id": chat_id}

    @app.post("/chat")
    async def start() -> dict[str, str]:
        annotate_turn(request_id="turn-1", chat_id="c" * 32, model="m")
        return {"request_id": "turn-1"}

    @app.get("/boom")
    async def boom() -> Response:
        return Response(status_code=503)

    app.add_middleware(RequestTelemetry, metrics=metrics)
    return app


async def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_requests_are_counted_by_route_template_never_by_path(
    metrics: GatewayMetrics,
) -> None:
    async with await _client(_app(metrics)) as client:
        for chat_id in ("a" * 32, "b" * 32):
            assert (await client.get(f"/chat/{chat_id}")).status_code == 200
        assert (await client.get("/nowhere/" + "d" * 32)).status_code == 404
        assert (await client.request("BREW", "/chat/x")).status_code == 405
        assert (await client.get("/boom")).status_code == 503
    count = metrics.registry.get_sample_value
    assert (
        count(
            "parley_http_requests_total",
            {"method": "GET", "route": "/chat/{chat_id}", "status": "200"},
        )
        == 2
    )
    assert (
        count(
            "parley_http_requests_total", {"method": "GET", "route": "unmatched", "status": "404"}
        )
        == 1
    )
    assert (
        count(
            "parley_http_requests_total",
            {"method": "_OTHER", "route": "/chat/{chat_id}", "status": "405"},
        )
        == 1
    )
    assert (
        count(
            "parley_http_request_duration_seconds_count",
            {"method": "GET", "route": "/boom", "status": "503"},
        )
        == 1
    )
    labels = [
        s.labels
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.startswith("parley_http")
    ]
    assert not any("a" * 32 in str(label) for label in labels)
    assert metrics.registry.get_sample_value("parley_http_requests_in_flight") == 0


async def test_every_response_names_its_request_and_the_access_line_too(
    metrics: GatewayMetrics, access_log: list[dict[str, object]]
) -> None:
    async with await _client(_app(metrics)) as client:
        given = await client.get("/chat/x", headers={"X-Request-ID": "lb-42"})
        invalid = await client.get("/chat/x", headers={"X-Request-ID": "no spaces allowed"})
        turn = await client.post("/chat")
    assert given.headers["x-request-id"] == "lb-42"
    assert invalid.headers["x-request-id"] != "no spaces allowed"
    assert len(invalid.headers["x-request-id"]) == 32
    # A turn's own request id replaces the HTTP one, in the header and the access line.
    assert turn.headers["x-request-id"] == "turn-1"
    assert [(line["route"], line["status"], line["request_id"]) for line in access_log] == [
        ("/chat/{chat_id}", 200, "lb-42"),
        ("/chat/{chat_id}", 200, invalid.headers["x-request-id"]),
        ("/chat", 200, "turn-1"),
    ]
    assert all(line["level"] == "info" and line["method"] in ("GET", "POST") for line in access_log)
    assert all(float(str(line["duration_ms"])) >= 0 for line in access_log)


async def _events() -> AsyncIterator[object]:
    yield TextChunk("chunk")
    yield TurnAnswer(
        content="hi",
        finish_reason="stop",
        usage=Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10),
    )


async def test_a_turns_first_text_answer_and_tokens_are_measured(metrics: GatewayMetrics) -> None:
    events = [event async for event in observe_turn(_events(), metrics, source="worker")]
    assert len(events) == 2
    value = metrics.registry.get_sample_value
    assert value("parley_gateway_time_to_first_token_seconds_count", {"source": "worker"}) == 1
    assert (
        value(
            "parley_gateway_turn_duration_seconds_count",
            {"source": "worker", "finish_reason": "stop"},
        )
        == 1
    )
    assert value("parley_gateway_tokens_total", {"direction": "prompt", "source": "worker"}) == 7
    assert (
        value("parley_gateway_tokens_total", {"direction": "completion", "source": "worker"}) == 3
    )


async def _failing() -> AsyncIterator[object]:
    yield TextChunk("some")
    raise generation_failed("engine exploded", request_id="r1", stored=False)


async def test_a_failed_generation_is_timed_as_an_error(metrics: GatewayMetrics) -> None:
    with pytest.raises(ApiError, match=r"could not answer \(engine exploded\); retry"):
        _ = [event async for event in observe_turn(_failing(), metrics, source="worker")]

    value = metrics.registry.get_sample_value
    labels = {"source": "worker", "finish_reason": "error"}
    assert value("parley_gateway_turn_duration_seconds_count", labels) == 1
