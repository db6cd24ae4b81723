"""Browser apps on other origins: preflights answered for allowed origins only, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from parley_gateway.config import Settings
from parley_gateway.cors import install_cors, parse_origins

APP_ORIGIN = "https://app.example.com"


def _app(origins: str) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete() -> dict[str, str]:
        return {"ok": "yes"}

    install_cors(app, parse_origins(origins))
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(f"{APP_ORIGIN}, https://other.example.com"))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
    }


async def test_an_allowed_origins_preflight_is_answered(client: httpx.AsyncClient) -> None:
    response = await client.options("/v1/chat/completions", headers=_preflight(APP_ORIGIN))

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed
    assert "x-stainless-os" in allowed
    assert "access-control-allow-credentials" not in response.headers


async def test_another_origin_is_refused(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/v1/chat/completions", headers=_preflight("https://evil.example.com")
    )
    simple = await client.post(
        "/v1/chat/completions", headers={"Origin": "https://evil.example.com"}
    )

    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    assert simple.status_code == 200  # a server answers; the browser withholds it
    assert "access-control-allow-origin" not in simple.headers


async def test_an_allowed_origin_reads_the_exposed_headers(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", headers={"Origin": APP_ORIGIN})

    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "X-Parley-Request-Id" in response.headers["access-control-expose-headers"]


async def test_no_origin_is_allowed_by_default() -> None:
    transport = httpx.ASGITransport(app=_app(Settings().cors_allowed_origins))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        response = await http.options("/v1/chat/completions", headers=_preflight(APP_ORIGIN))
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_a_malformed_origin_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"'app\.example\.com' is no origin; write scheme://"):
        parse_origins("app.example.com")
    assert parse_origins(" https://a.example/ ,* ") == ["https://a.example", "*"]
