"""The web page's libraries (static/vendor/, built by scripts/build-web.sh): the gateway serves
its API without them and says, in its log and in the page, that they were not built."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from parley_gateway.errors import install_error_handlers
from parley_gateway.routes import web


def _static(tmp_path: Path, *, built: bool) -> Path:
    (tmp_path / "vendor" / "fonts").mkdir(parents=True)
    (tmp_path / "index.html").write_text("<!doctype html><title>Parley</title>")
    if built:
        for name in web.VENDOR_FILES:
            (tmp_path / "vendor" / name).write_text("/* a library */")
        (tmp_path / "vendor" / "fonts" / "KaTeX_Main-Regular.woff2").write_bytes(b"wOF2")
    return tmp_path


def test_a_gateway_without_the_libraries_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(web, "_STATIC", _static(tmp_path, built=False))
    with caplog.at_level(logging.WARNING, logger=web.__name__):
        web.warn_if_not_built()
    assert not web.vendor_built()
    (record,) = caplog.records
    assert "scripts/build-web.sh" in record.getMessage()


def test_a_built_gateway_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(web, "_STATIC", _static(tmp_path, built=True))
    with caplog.at_level(logging.WARNING, logger=web.__name__):
        web.warn_if_not_built()
    assert web.vendor_built()
    assert not caplog.records


async def test_vendor_files_are_served_from_their_folder_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "_STATIC", _static(tmp_path, built=True))
    (tmp_path / "secret.txt").write_text("not for the web")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(web.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        font = await client.get("/static/vendor/fonts/KaTeX_Main-Regular.woff2")
        assert font.status_code == 200
        assert font.headers["content-type"] == "font/woff2"
        script = await client.get("/static/vendor/katex.min.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "script-src 'self'" in script.headers["content-security-policy"]
        for path in (
            "/static/vendor/..%2Fsecret.txt",
            "/static/vendor/fonts/..%2F..%2Fsecret.txt",
            "/static/vendor/fonts/a/b.js",
            "/static/vendor/.hidden.js",
            "/static/vendor/missing.js",
            "/static/vendor/katex.min.js.map",
        ):
            refused = await client.get(path)
            assert refused.status_code == 404, path
            assert refused.json()["error"]["type"] == "not_found"
