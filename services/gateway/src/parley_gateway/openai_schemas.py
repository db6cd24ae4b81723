"""Request and response bodies of the OpenAI-compatible API (`/v1`), as OpenAI defines them.

Parley's own additions are marked as such: `chat_id` (keep the history server-side in a stored
chat) and `no_cache` in the request, `parley` in the response.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class FunctionCall(_Body):
    name: FunctionName
    arguments: str = Field(max_length=100_000, description="a JSON object's text")


class ToolCall(_Body):
    id: str = Field(min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class RequestMessage(BaseModel):
    # `name` and other per-message fields that do not change what the model sees are ignored.
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"] = Field(
        description="`developer` is taken as `system`; `tool` answers a tool call"
    )
    content: str | list[TextPart] | None = Field(
        default=None,
        description="text, or a list of text parts (other part types are not supported)",
    )
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(
        default=None, max_length=128, description="assistant: the tool calls it made"
    )
    tool_call_id: str | None = Field(
        default=None, max_length=128, description="tool: the id of the call this answers"
    )

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


class FunctionDefinition(_Body):
    name: FunctionName
    description: str | None = Field(default=None, max_length=10_000)
    parameters: dict[str, Any] | None = Field(
        default=None, description="the arguments' JSON Schema (an object schema)"
    )
    strict: bool | None = None


class ToolDefinition(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Body):
    name: FunctionName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]


class JsonSchemaSpec(_Body):
    name: FunctionName
    description: str | None = Field(default=None, max_length=10_000)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


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
    n: int | None = Field(
        default=None, ge=1, description="choices to generate, each a fresh sample (a cap applies)"
    )
    presence_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="lowers tokens already in the answer"
    )
    frequency_penalty: float | None = Field(
        default=None, ge=-2, le=2, description="lowers tokens by how often they are in the answer"
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None,
        max_length=300,
        description="token id (as a string) -> bias added to its logit, -100 to 100",
    )
    logprobs: bool | None = Field(
        default=None, description="return each answer token's log probability"
    )
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="with logprobs: the most likely alternatives"
    )
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = Field(
        default=None, description="none, auto (the default with tools), required, or a function"
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="whether one answer may call several tools (default true)"
    )
    response_format: ResponseFormat | None = None
    chat_id: str | None = Field(
        default=None,
        description="Parley: answer within this stored chat; only the last (user) message is "
        "taken and the chat's own history is the context (also header `X-Parley-Chat-Id`)",
    )
    no_cache: bool = Field(default=False, description="Parley: do not answer from the cache")

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
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
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


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str


class ToolCallDelta(BaseModel):
    """A streamed tool call: its first delta has the id and name, later ones more arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
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
