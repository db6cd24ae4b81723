"""Request and response bodies of the OpenAI-compatible API (`/v1`), as OpenAI defines them.

Parley's own additions are marked as such: `chat_id` (keep the history server-side in a stored
chat) and `no_cache` in the request, `parley` in the response.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "Model",
    "ModelList",
    "OpenAIErrorBody",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class RequestMessage(BaseModel):
    # `name` and other per-message fields that do not change what the model sees are ignored.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="`developer` is taken as `system`; `tool` messages are not supported"
    )
    content: str | list[TextPart] | None = Field(
        description="text, or a list of text parts (other part types are not supported)"
    )
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = Field(
        default=False, description="send a last chunk with the usage (and `usage: null` before)"
    )


Stop = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]


class ChatCompletionRequest(_Body):
    model: str = Field(min_length=1, max_length=256, description="see GET /v1/models")
    messages: list[RequestMessage] = Field(min_length=1, max_length=1000)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="deprecated by OpenAI")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | Stop | None = Field(default=None, description="up to 4 stop strings")
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = Field(default=None, max_length=256, description="your end user's id")
    n: int | None = Field(default=None, description="choices to generate: only 1 is supported")
    presence_penalty: float | None = Field(
        default=None, ge=0, le=0, description="accepted for compatibility; only 0"
    )
    frequency_penalty: float | None = Field(
        default=None, ge=0, le=0, description="accepted for compatibility; only 0"
    )
    logprobs: bool | None = Field(default=None, description="not supported: false or absent")
    chat_id: str | None = Field(
        default=None,
        description="Parley: answer within this stored chat; only the last (user) message is "
        "taken and the chat's own history is the context (also header `X-Parley-Chat-Id`)",
    )
    no_cache: bool = Field(default=False, description="Parley: do not answer from the cache")

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,) if self.stop else ()
        return tuple(self.stop)

    def reply_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


FinishReason = Literal["stop", "length"]


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: None = None
    finish_reason: FinishReason


class ParleyInfo(BaseModel):
    """Parley's additions to a completion."""

    request_id: str
    chat_id: str | None = Field(default=None, description="the stored chat, when one was used")
    cached: bool = Field(default=False, description="answered from the semantic cache")
    cache_score: float | None = None
    cache_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix seconds")
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: None = None
    parley: ParleyInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a stream; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: None = None


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds")
    owned_by: str = "parley"
    context_window: int = Field(description="Parley: the model's context window in tokens")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class _OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    error: _OpenAIError


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")
