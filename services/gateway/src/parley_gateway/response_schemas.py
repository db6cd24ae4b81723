"""Request and response bodies of the Responses API (`/v1/responses`), as OpenAI defines them.

Text, message and function-call input; function tools. Structured `text.format` and
`reasoning` are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

__all__ = [
    "FunctionCallInput",
    "FunctionCallOutputInput",
    "InputItem",
    "InputMessage",
    "OutputFunctionCall",
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


class FunctionCallInput(_Body):
    """A function call of an earlier answer, echoed back by a client that sends the whole
    conversation."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(description="a JSON object's text")
    id: str | None = None
    status: str | None = None


class FunctionCallOutputInput(_Body):
    """What the client's run of the function call `call_id` returned."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=128)
    output: str
    id: str | None = None
    status: str | None = None


InputItem = InputMessage | FunctionCallInput | FunctionCallOutputInput

_ITEMS: dict[str, TypeAdapter[Any]] = {
    "message": TypeAdapter(InputMessage),
    "function_call": TypeAdapter(FunctionCallInput),
    "function_call_output": TypeAdapter(FunctionCallOutputInput),
}


class TextFormat(_Body):
    type: Literal["text"] = Field(description="only plain text (structured output comes later)")


class TextConfig(_Body):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponseRequest(_Body):
    model: str = Field(min_length=1, max_length=256, description="see GET /v1/models")
    input: str | list[InputItem] = Field(
        description="a text, or a list of messages, function calls and function call outputs"
    )
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
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="function tools: {type: function, name, parameters, ...}"
    )
    tool_choice: Any = Field(
        default=None, description="none, auto (the default with tools), required, or a function"
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="whether one answer may call several tools (default true)"
    )
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
        items = []
        for i, item in enumerate(value):
            kind = item.get("type", "message") if isinstance(item, dict) else "message"
            if kind not in _ITEMS:
                raise ValueError(
                    f"input[{i}].type: {kind!r} items are not supported (send {', '.join(_ITEMS)})"
                )
            content = item.get("content") if isinstance(item, dict) else None
            for j, part in enumerate(content if isinstance(content, list) else []):
                part_kind = part.get("type") if isinstance(part, dict) else None
                if part_kind not in ("input_text", "output_text"):
                    raise ValueError(
                        f"input[{i}].content[{j}]: {part_kind!r} parts are not supported "
                        "(the model reads text only); send input_text parts"
                    )
            try:
                items.append(_ITEMS[kind].validate_python(item))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
                raise ValueError(f"input[{i}]{where}: {first['msg']}") from None
        return items

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


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str = Field(description="a JSON object's text")
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


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
    output: list[OutputMessage | OutputFunctionCall]
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
    tool_choice: Any = "auto"
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
