"""One generation: the engine's stream raced against the request's cancel, its text batched into
chunks, its figures measured (time to first token, time per output token)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any

from parley.v1 import envelopes_pb2, types_pb2
from parley_common.telemetry import add_event, annotate, traced
from parley_worker.config import Settings
from parley_worker.engines.base import (
    Engine,
    GenerationDone,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCall,
)
from parley_worker.envelopes import Outcome, finish_name, finish_reason
from parley_worker.jobs import Job
from parley_worker.metrics import WorkerMetrics
from parley_worker.streaming import ChunkBatcher

__all__ = ["Generator", "SendChunk"]

SendChunk = Callable[[Job, int, str], Awaitable[None]]


class Generator:
    def __init__(
        self, engine: Engine, settings: Settings, metrics: WorkerMetrics, send_chunk: SendChunk
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._send_chunk = send_chunk

    @traced("generate")
    async def generate(self, job: Job, gen_request: GenerationRequest, picked_ms: int) -> Outcome:
        """Generate until the engine is done or the request is cancelled (what was generated is
        kept); the engine's exception, if it raised one, is raised."""
        assert job.request is not None
        batcher = ChunkBatcher(
            interval_s=self._settings.chunk_interval_ms / 1000,
            max_chars=self._settings.chunk_max_chars,
        )
        parts: list[str] = []
        # An answer that may be tool calls is sent whole at the end, once it is parsed.
        streaming = not gen_request.options.tools_enabled
        first_token_at: float | None = None
        done: GenerationDone | None = None

        async def stream() -> None:
            nonlocal first_token_at, done
            events: AsyncGenerator[GenerationEvent, None] = self._engine.generate(gen_request)
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, TextDelta):
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                            add_event("first token")
                        parts.append(event.text)
                        if streaming and (chunk := batcher.add(event.text)):
                            await self._send_chunk(job, *chunk)
                    else:
                        done = event

        started = time.perf_counter()
        await self._race(job, stream())
        if tail := batcher.flush():
            await self._send_chunk(job, *tail)
        ended = time.perf_counter()
        job.generation_s = ended - started
        tool_calls: tuple[ToolCall, ...] = ()
        logprobs: tuple[TokenLogprob, ...] = ()
        if done is None:  # cancelled: what was generated is kept
            text = "".join(parts)
            finish = types_pb2.FINISH_REASON_CANCELLED
            prompt_tokens = self._engine.count_tokens(gen_request.messages)
            completion_tokens = len(parts)
        else:
            text, finish = done.text, finish_reason(done.finish_reason)
            tool_calls, logprobs = done.tool_calls, done.logprobs
            prompt_tokens, completion_tokens = done.prompt_tokens, done.completion_tokens
        ttft_s = (first_token_at or ended) - started
        tpot_s = (ended - first_token_at) / max(completion_tokens - 1, 1) if first_token_at else 0.0
        self._measure(first_token_at is not None, ttft_s, tpot_s, prompt_tokens, completion_tokens)
        annotate(
            {
                "gen_ai.usage.input_tokens": prompt_tokens,
                "gen_ai.usage.output_tokens": completion_tokens,
                "gen_ai.response.finish_reasons": [finish_name(finish)],
                "parley.time_to_first_token_ms": round(ttft_s * 1000, 1),
            }
        )
        enqueued = job.request.enqueued_unix_ms
        timings = envelopes_pb2.Timings(
            queue_wait_ms=max(0, picked_ms - enqueued) if enqueued else 0,
            time_to_first_token_ms=round(ttft_s * 1000),
            time_per_output_token_ms=tpot_s * 1000,
            generation_ms=round(job.generation_s * 1000),
        )
        return Outcome(
            finish,
            text,
            prompt_tokens,
            completion_tokens,
            timings=timings,
            tool_calls=tool_calls,
            logprobs=logprobs,
        )

    async def _race(self, job: Job, stream: Coroutine[Any, Any, None]) -> None:
        """Run the stream until it ends or the job is cancelled."""
        assert job.request is not None
        generating = asyncio.create_task(stream, name=f"generate:{job.request.request_id}")
        cancel = asyncio.create_task(job.cancelled.wait())
        try:
            await asyncio.wait({generating, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
            if not generating.done():
                # Closing the engine's stream stops the generation within about a token.
                generating.cancel()
            # Also when this task is cancelled itself: the engine's error is retrieved, not lost.
            await asyncio.gather(generating, return_exceptions=True)
        if not generating.cancelled():
            generating.result()  # the engine's exception, if it raised one

    def _measure(
        self, streamed: bool, ttft_s: float, tpot_s: float, prompt_tokens: int, completion: int
    ) -> None:
        if streamed:
            self._metrics.time_to_first_token.observe(ttft_s)
            if completion > 1:
                self._metrics.time_per_output_token.observe(tpot_s)
        self._metrics.output_tokens.inc(completion)
        self._metrics.prompt_tokens.inc(prompt_tokens)
