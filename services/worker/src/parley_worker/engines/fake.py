"""An engine without a model, for measuring the platform's own overhead.

It emits ``fake_token`` ``max_tokens`` times, after ``fake_ttft_s`` and at ``fake_tokens_per_s``
(0: as fast as possible, with no sleep at all). Token counts are estimates: four characters a
token plus four tokens of chat-template overhead a message, like a typical BPE chat model, and 85
an image part (it takes images, as a vision model would). A
request whose last message contains ``fake_fail_on`` (when set) fails, as a broken engine would.

With tools, it calls the tools whose names the last message mentions (all of them, or the first
without ``parallel_tool_calls``), or the first tool it is forced to call (``tool_choice``
required or a function), with arguments made up from the tool's schema; after a tool's result it
answers in text. With ``response_format`` json_object it answers ``{}``, with json_schema a made-up
instance of the schema. So every path of tools and structured output is tested without a model.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from parley_worker.engines.base import (
    ChatMessage,
    EngineNotReadyError,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationRequest,
    StopStringFilter,
    TextDelta,
    TokenLogprob,
    Tool,
    ToolCall,
)
from parley_worker.engines.tools import call_id

__all__ = ["FakeEngine"]

_TEMPLATE_TOKENS_PER_MESSAGE = 4
_GENERATION_PROMPT_TOKENS = 3
_IMAGE_TOKENS = 85  # what a low-detail image costs a vision model (OpenAI's figure)


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
            _TEMPLATE_TOKENS_PER_MESSAGE
            + math.ceil(len(m.content) / 4)
            + _IMAGE_TOKENS * len(m.images)
            for m in messages
        )

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if not self._ready:
            raise EngineNotReadyError("the fake engine is not started")
        if self._fail_on and request.messages and self._fail_on in request.messages[-1].content:
            raise RuntimeError(f"the fake engine fails on messages with {self._fail_on!r}")
        prompt_tokens = self.count_tokens(request.messages)
        if (calls := _tool_calls(request)) or request.options.response_format != "text":
            async with self._slots:
                if self._ttft_s:
                    await asyncio.sleep(self._ttft_s)
                text = "" if calls else _structured_answer(request)
                shown = text or json.dumps(
                    [{"name": c.name, "arguments": c.arguments} for c in calls]
                )
                yield TextDelta(shown)
                yield GenerationDone(
                    finish_reason="tool_calls" if calls else "stop",
                    prompt_tokens=prompt_tokens,
                    completion_tokens=math.ceil(len(shown) / 4),
                    text=text,
                    tool_calls=calls,
                )
            return
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
            options = request.options
            # Its only token is certain: log probability 0, no other candidate.
            certain = TokenLogprob(self._token, 0.0, ((self._token, 0.0),)[: options.top_logprobs])
            yield GenerationDone(
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                text="".join(parts),
                logprobs=(certain,) * completion_tokens if options.logprobs else (),
            )


def _tool_calls(request: GenerationRequest) -> tuple[ToolCall, ...]:
    options = request.options
    last = request.messages[-1] if request.messages else None
    if not options.tools_enabled or last is None or last.role == "tool":
        return ()
    forced = options.forced_tools
    candidates = forced or options.tools
    chosen: Sequence[Tool] = [t for t in candidates if t.name in last.content] or forced[:1]
    if not options.parallel_tool_calls:
        chosen = chosen[:1]
    return tuple(
        ToolCall(
            call_id(request.request_id, index), tool.name, json.dumps(example(tool.parameters))
        )
        for index, tool in enumerate(chosen)
    )


def _structured_answer(request: GenerationRequest) -> str:
    schema = request.options.json_schema
    return json.dumps(example(schema) if schema is not None else {})


_MAX_DEPTH = 16
_MAX_REPEAT = 16


def example(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A made-up value valid for a JSON Schema (the kinds that tools and structured output use:
    objects, arrays, scalars, enums, constants, references to ``$defs``), within bounds: a
    hostile schema (a huge ``minItems``, a reference to itself) gets a small, maybe invalid one."""
    root = root if root is not None else schema
    if depth > _MAX_DEPTH or not isinstance(schema, dict):
        return None
    if ref := schema.get("$ref"):
        target: Any = root
        for part in str(ref).removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example(target, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        item = example(schema.get("items", {}), root, depth + 1)
        return [item] * min(int(schema.get("minItems", 1)), _MAX_REPEAT)
    if kind == "string":
        return "x" * min(max(int(schema.get("minLength", 4)), 1), _MAX_REPEAT * 4)
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None
