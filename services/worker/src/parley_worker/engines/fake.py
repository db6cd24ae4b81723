"""An engine without a model, for measuring the platform's own overhead.

It emits ``fake_token`` ``max_tokens`` times, after ``fake_ttft_s`` and at ``fake_tokens_per_s``
(0: as fast as possible, with no sleep at all). Token counts are estimates: four characters a
token plus four tokens of chat-template overhead a message, like a typical BPE chat model. A
request whose last message contains ``fake_fail_on`` (when set) fails, as a broken engine would.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Sequence

from parley_worker.engines.base import (
    ChatMessage,
    EngineNotReadyError,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationRequest,
    StopStringFilter,
    TextDelta,
)

__all__ = ["FakeEngine"]

_TEMPLATE_TOKENS_PER_MESSAGE = 4
_GENERATION_PROMPT_TOKENS = 3


class FakeEngine:
    name = "fake"

    def __init__(self, settings: EngineSettings) -> None:
        self.model_name = settings.model
        self.max_concurrency = settings.max_concurrency
        self._ttft_s = settings.fake_ttft_s
        self._token_interval_s = (
            1 / settings.fake_tokens_per_s if settings.fake_tokens_per_s else 0.0
        )
        self._token = settings.fake_token
        self._fail_on = settings.fake_fail_on
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._ready = False

    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return _GENERATION_PROMPT_TOKENS + sum(
            _TEMPLATE_TOKENS_PER_MESSAGE + math.ceil(len(m.content) / 4) for m in messages
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if not self._ready:
            raise EngineNotReadyError("the fake engine is not started")
        if self._fail_on and request.messages and self._fail_on in request.messages[-1].content:
            raise RuntimeError(f"the fake engine fails on messages with {self._fail_on!r}")
        prompt_tokens = self.count_tokens(request.messages)
        sampling = request.sampling
        stops = StopStringFilter(sampling.stop)
        async with self._slots:
            started = time.monotonic()
            if self._ttft_s:
                await asyncio.sleep(self._ttft_s)
            parts: list[str] = []
            completion_tokens = 0
            finish_reason = "length"
            for index in range(sampling.max_tokens):
                if self._token_interval_s and index:
                    due = started + self._ttft_s + index * self._token_interval_s
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not self._ready:
                    finish_reason = "cancelled"
                    break
                completion_tokens += 1
                text, stopped = stops.feed(self._token)
                if text:
                    parts.append(text)
                    yield TextDelta(text)
                if stopped:
                    finish_reason = "stop"
                    break
            else:
                if tail := stops.flush():
                    parts.append(tail)
                    yield TextDelta(tail)
            yield GenerationDone(
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                text="".join(parts),
            )
