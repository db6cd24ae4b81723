"""The interface every inference engine implements, and the pieces they share."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ChatMessage",
    "Engine",
    "EngineNotReadyError",
    "EngineSettings",
    "GenerationDone",
    "GenerationEvent",
    "GenerationOptions",
    "GenerationRequest",
    "InvalidParameterError",
    "PromptTooLongError",
    "SamplingParams",
    "StopStringFilter",
    "TextDelta",
    "TokenLogprob",
    "Tool",
    "ToolCall",
]

ROLES = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call in an answer; ``arguments`` is a JSON object's text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the calls it made
    tool_call_id: str = ""  # tool: the call this is the result of
    images: tuple[ImagePart, ...] = ()  # user: only for a model that takes image input

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown chat role {self.role!r}; expected one of {sorted(ROLES)}")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must not be negative, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_openai(self) -> dict[str, Any]:
        """The tool as chat templates and tool parsers expect it (OpenAI's shape)."""
        function: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters:
            function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    """What a request asks beyond sampling. ``tool_choice`` is ``"auto"``, ``"none"``,
    ``"required"`` or ``"function"`` (then ``tool_choice_function`` must be called);
    ``json_schema`` is set for ``response_format == "json_schema"``. The penalties are OpenAI's:
    a token's logit is lowered by ``presence_penalty`` once it is in the answer and by
    ``frequency_penalty`` each time it is."""

    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"
    tool_choice_function: str = ""
    parallel_tool_calls: bool = True
    response_format: str = "text"
    json_schema: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to logit

    @property
    def tools_enabled(self) -> bool:
        """Whether the answer may be tool calls."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def forced_tools(self) -> tuple[Tool, ...]:
        """The tools of which one must be called (empty: the model may answer in text)."""
        if self.tool_choice == "function":
            return tuple(t for t in self.tools if t.name == self.tool_choice_function)
        return self.tools if self.tool_choice == "required" else ()


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams
    options: GenerationOptions = GenerationOptions()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Non-empty text generated since the previous delta."""

    text: str


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log probability, and (when asked) the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationDone:
    """The last event of a generation.

    ``finish_reason`` is ``"stop"`` (end of turn or a stop string), ``"length"`` (``max_tokens``
    or the context window reached), ``"tool_calls"`` (the answer calls tools) or ``"cancelled"``
    (the engine was stopped). ``text`` is the
    whole generated text, that is the concatenation of the deltas, trimmed at a stop string.
    """

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    text: str
    tool_calls: tuple[ToolCall, ...] = ()  # with finish_reason "tool_calls"; text is the rest
    logprobs: tuple[TokenLogprob, ...] = ()  # with options.logprobs: one a generated token


GenerationEvent = TextDelta | GenerationDone


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What ``create_engine`` needs; the worker's settings build it.

    ``engine`` is ``"transformers"``, ``"fake"`` or ``"vllm"``; ``model`` a hub name or a local
    folder. ``cpu_threads`` (transformers engine) defaults to the available cores divided by
    ``max_concurrency``. ``fake_tokens_per_s == 0`` means as fast as possible.
    ``vllm_kv_cache_memory_bytes`` sizes vLLM's KV cache directly instead of by
    ``vllm_gpu_memory_utilization`` (on vLLM's CPU backend that fraction is of the machine's RAM,
    and is refused when that much is not free). ``vllm_enforce_eager`` skips CUDA graph capture
    and compilation: a faster start, slower steps. ``fake_fail_on``: the fake engine fails every
    generation whose last message contains this text (tests of failure handling; "": never).
    """

    engine: str
    model: str
    max_concurrency: int
    device: str = "cpu"
    cpu_threads: int | None = None
    fake_ttft_s: float = 0.0
    fake_tokens_per_s: float = 0.0
    fake_token: str = " tok"
    fake_fail_on: str = ""
    vllm_gpu_memory_utilization: float = 0.9
    vllm_max_model_len: int | None = None
    vllm_kv_cache_memory_bytes: int | None = None
    vllm_enforce_eager: bool = False

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {self.cpu_threads}")
        if self.fake_ttft_s < 0 or self.fake_tokens_per_s < 0:
            raise ValueError("fake_ttft_s and fake_tokens_per_s must not be negative")
        if not self.fake_token:
            raise ValueError("fake_token must not be empty")


class EngineNotReadyError(RuntimeError):
    """The engine was asked to work before ``start()`` finished (or after ``stop()``)."""


class InvalidParameterError(ValueError):
    """A parameter of the request the engine cannot honour (a JSON schema its grammar compiler
    does not support, say): the request's fault, `param` named as the OpenAI API names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(ValueError):
    """The prompt leaves no room for a reply in the model's context window."""

    def __init__(self, prompt_tokens: int, max_model_len: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the model's context window holds "
            f"{max_model_len}; shorten the conversation"
        )
        self.prompt_tokens = prompt_tokens
        self.max_model_len = max_model_len


class Engine(Protocol):
    """An inference engine.

    ``generate`` yields ``TextDelta`` events, then exactly one ``GenerationDone`` (the last). When
    the consumer stops iterating (``aclose()``, or its task is cancelled) the generation stops
    within about one token step and frees its slot.
    """

    name: str
    model_name: str
    max_concurrency: int

    async def start(self) -> None:
        """Load the model (may take long); idempotent."""

    async def stop(self) -> None:
        """Cancel running generations and release the model."""

    @property
    def ready(self) -> bool:
        """True only once the model is loaded."""

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of ``messages`` after the chat template, generation prompt included."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the reply: ``TextDelta`` events, then one ``GenerationDone``."""
        ...


class StopStringFilter:
    """Finds stop strings in streamed text without letting any part of one out.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is one::

        f = StopStringFilter(("\\nUser:",))
        f.feed("Hi\\nUs")   # -> ("Hi", False)
        f.feed("er: x")     # -> ("", True)
    """

    __slots__ = ("_held", "_longest", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to emit, and whether a stop string was reached."""
        if self.stopped:
            return "", True
        if not self._stops:
            return text, False
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buffer[:cut], True
        hold = self._partial_match_length(buffer)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Return the held-back text once the generation has ended without a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial_match_length(self, buffer: str) -> int:
        for length in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-length:]
            if any(s.startswith(tail) for s in self._stops):
                return length
        return 0
