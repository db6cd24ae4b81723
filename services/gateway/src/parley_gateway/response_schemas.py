"""Request and response bodies of the Responses API (`/v1/responses`), as OpenAI defines them.

Text and message input only: `tools`, structured `text.format` and `reasoning` are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

__all__ = [
    "InputMessage",
    "OutputMessage",
    "OutputText",
    "ResponseError",
    "ResponseObject",
    "ResponseRequest",
    "ResponseStatus",
    "ResponseUsage",
]

ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Body):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text parts of an earlier answer carry them


class InputMessage(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText] = Field(
        description="text, or a list of `input_text` parts (other part types are not supported)"
    )
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


_MESSAGES: TypeAdapter[list[InputMessage]] = TypeAdapter(list[InputMessage])


class TextFormat(_Body):
    type: Literal["text"] = Field(description="only plain text (structured output comes later)")


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseRequest(_Body):
    model: str = Field(min_length=1, max_length=256, description="see GET /v1/models")
    input: str | list[InputMessage] = Field(description="a text, or a list of messages")
    instructions: str | None = Field(
        default=None, description="this response's system prompt (not carried to the next)"
    )
    previous_response_id: str | None = Field(
        default=None, max_length=140, description="continue that response's conversation"
    )
    store: bool = Field(
        default=True, description="keep the response and its conversation (a Parley chat)"
    )
    stream: bool | None = False
    background: bool | None = Field(
        default=False, description="answer at once with a `queued` response; poll or stream it"
    )
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = Field(default=None, max_length=256, description="your end user's id")
    metadata: dict[str, str] | None = Field(default=None, description="accepted, not stored")
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, description="not supported yet")
    tool_choice: Any = Field(default=None, description="not supported yet")
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: list[str] | None = Field(default=None, description="accepted; nothing extra is sent")
    reasoning: dict[str, Any] | None = Field(default=None, description="not supported")
    no_cache: bool = Field(default=False, description="Parley: do not answer from the cache")

    @field_validator("input", mode="before")
    @classmethod
    def _text_or_messages(cls, value: Any) -> Any:
        # Named precisely here: a union's own errors would name its `str` branch first.
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("a text or a list of messages")
        for i, item in enumerate(value):
            content = item.get("content") if isinstance(item, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else []):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("input_text", "output_text"):
                    raise ValueError(
                        f"input[{i}].content[{j}]: {kind!r} parts are not supported "
                        "(the model reads text only); send input_text parts"
                    )
        try:
            return _MESSAGES.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            raise ValueError(f"input{where}: {first['msg']}") from None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tools are not supported on /v1/responses yet")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise ValueError("tool_choice: no tools are supported on /v1/responses yet")
        return value

    @field_validator("reasoning")
    @classmethod
    def _no_reasoning(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise ValueError("reasoning is not supported")
        return value


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(description="Unix seconds")
    status: ResponseStatus
    model: str
    output: list[OutputMessage]
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: dict[str, str] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    background: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    parallel_tool_calls: bool = True
    tool_choice: str = "none"
    tools: list[Any] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: str = "disabled"
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    parley_chat_id: str | None = Field(
        default=None, description="Parley: the stored chat that holds this conversation"
    )


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
