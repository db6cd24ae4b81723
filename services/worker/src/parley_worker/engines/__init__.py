"""Inference engines behind one interface, chosen by name::

    engine = create_engine(EngineSettings(engine="transformers", model=path, max_concurrency=2))
    await engine.start()
    async for event in engine.generate(request):
        ...

Engines import their heavy dependencies (torch, transformers, vllm) only when created.
"""

from __future__ import annotations

from parley_worker.engines.base import (
    ChatMessage,
    Engine,
    EngineNotReadyError,
    EngineSettings,
    GenerationDone,
    GenerationEvent,
    GenerationOptions,
    GenerationRequest,
    PromptTooLongError,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Tool,
    ToolCall,
)

__all__ = [
    "ENGINE_NAMES",
    "ChatMessage",
    "Engine",
    "EngineNotReadyError",
    "EngineSettings",
    "GenerationDone",
    "GenerationEvent",
    "GenerationOptions",
    "GenerationRequest",
    "PromptTooLongError",
    "SamplingParams",
    "TextDelta",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "create_engine",
]

ENGINE_NAMES = ("fake", "transformers", "vllm")


def create_engine(settings: EngineSettings) -> Engine:
    """Build the engine that ``settings.engine`` names; ``start()`` it before use."""
    if settings.engine == "fake":
        from parley_worker.engines.fake import FakeEngine

        return FakeEngine(settings)
    if settings.engine == "transformers":
        from parley_worker.engines.transformers_engine import TransformersEngine

        return TransformersEngine(settings)
    if settings.engine == "vllm":
        from parley_worker.engines.vllm_engine import VllmEngine

        return VllmEngine(settings)
    raise ValueError(
        f"unknown engine {settings.engine!r}; choose one of: {', '.join(ENGINE_NAMES)}"
    )
