"""A fake OpenAI-compatible engine for benchmarks: `max_tokens` tokens after `--ttft` seconds.

    python -m bench._fake_openai --port 9000 --ttft 0.05 [--tokens-per-s 0]

It paces its answers like the worker's fake engine (`FAKE_TTFT_S`, `FAKE_TOKENS_PER_S`), so a
proxy in front of it and Parley's workers wait on the same engine time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def create_app(ttft_s: float, tokens_per_s: float) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]}

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> Any:
        body = await request.json()
        tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            data = {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": "fake", "choices": [choice]}  # fmt: skip
            return f"data: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            await asyncio.sleep(ttft_s)
            yield chunk({"role": "assistant", "content": ""})
            for _ in range(tokens):
                yield chunk({"content": " tok"})
                if tokens_per_s:
                    await asyncio.sleep(1 / tokens_per_s)
            yield chunk({}, "length")
            yield "data: [DONE]\n\n"

        if body.get("stream"):
            return StreamingResponse(stream(), media_type="text/event-stream")
        await asyncio.sleep(ttft_s + (tokens / tokens_per_s if tokens_per_s else 0))
        message = {"role": "assistant", "content": " tok" * tokens}
        usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": "fake",
                "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                "usage": usage,
            }
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--tokens-per-s", type=float, default=0.0)
    args = parser.parse_args()
    app = create_app(args.ttft, args.tokens_per_s)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
