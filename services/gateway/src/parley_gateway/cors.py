"""Cross-origin access for browser apps on other origins: none unless the operator allows some.

`CORS_ALLOWED_ORIGINS` is a comma-separated list of origins (`https://app.example.com`), or `*`
for any. A preflight from an allowed origin is answered 200 with the methods and headers the
API takes; one from another origin gets 400 and no `Access-Control-Allow-Origin`, so the browser
refuses the request. Credentials stay off: clients authenticate with `Authorization`, which a
preflight allows explicitly.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

__all__ = ["EXPOSED_HEADERS", "install_cors", "parse_origins"]

METHODS = ["GET", "POST", "PATCH", "DELETE"]
# What a browser script may read of a response, beyond the always-safe ones.
EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "X-Request-ID",
    "X-Parley-Request-Id",
    "X-Parley-Chat-Id",
    "X-Parley-Cache-Score",
    "X-Parley-Cache-Reason",
]
_PREFLIGHT_MAX_AGE_S = 600


def parse_origins(value: str) -> list[str]:
    """`"https://a.example, https://b.example"` -> the list; `""` -> none; `"*"` -> any."""
    origins = [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(
                f"CORS_ALLOWED_ORIGINS: {origin!r} is no origin; write scheme://host[:port], "
                "e.g. https://app.example.com, or * for any"
            )
    return origins


def install_cors(app: FastAPI, origins: list[str]) -> None:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=METHODS,
        # OpenAI's and other SDKs send headers of their own (x-stainless-*): allow what is asked.
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=_PREFLIGHT_MAX_AGE_S,
    )
