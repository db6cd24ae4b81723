"""Request and response bodies of `POST /v1/completions`, OpenAI's legacy prompt completion."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from parley_gateway.openai_schemas import CompletionUsage, FinishReason, Stop, StreamOptions

__all__ = ["TextChoice", "TextCompletion", "TextCompletionRequest"]


class TextCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="see GET /v1/models")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="the text to continue: one string (a list of one string is taken too)"
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(
        default=None, ge=1, description="Parley: the bot's reply budget when absent (OpenAI: 16)"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | Stop | None = Field(default=None, description="up to 4 stop strings")
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = Field(default=None, max_length=256, description="your end user's id")
    n: int | None = Field(default=None, description="only 1 is supported")
    best_of: int | None = Field(default=None, description="only 1 is supported")
    echo: bool | None = Field(default=None, description="not supported: false or absent")
    suffix: str | None = Field(default=None, description="not supported: absent")
    logprobs: int | None = Field(default=None, description="not supported: absent")
    logit_bias: dict[str, float] | None = Field(default=None, description="not supported")
    presence_penalty: float | None = Field(
        default=None, ge=0, le=0, description="accepted for compatibility; only 0"
    )
    frequency_penalty: float | None = Field(
        default=None, ge=0, le=0, description="accepted for compatibility; only 0"
    )
    no_cache: bool = Field(default=False, description="Parley: do not answer from the cache")

    @field_validator("n", "best_of")
    @classmethod
    def _one(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only 1 is supported")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError("suffix (insertion) is not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        if isinstance(self.stop, str):
            return (self.stop,) if self.stop else ()
        return tuple(self.stop)


class TextChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: FinishReason | None


class TextCompletion(BaseModel):
    """A completion, or with `stream: true` one `data:` event of its stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(description="Unix seconds")
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: None = None
