"""What an OpenAI request asks of the generation beyond sampling, checked and put on the wire.

The chat completions route and the Responses API share it: tools, the tool choice, the response
format and the conversation's tool calls and results become a `GenerationOptions` and
`ChatMessage`s of the Kafka request; anything a model could not honour is a 400 naming the
parameter::

    options = generation_options(tools=body.tools, tool_choice=body.tool_choice, ...)
    options.tool_choice == types_pb2.TOOL_CHOICE_FUNCTION
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema import ValidationError as SchemaViolation
from referencing.exceptions import Unresolvable

from parley.v1 import types_pb2
from parley_gateway.errors import ApiError
from parley_gateway.openai_schemas import (
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolDefinition,
)
from parley_gateway.schemas import ToolFields

__all__ = ["chat_tools", "check_schema", "generation_options", "tool_calls_pb"]

_CHOICES = {
    "auto": types_pb2.TOOL_CHOICE_AUTO,
    "none": types_pb2.TOOL_CHOICE_NONE,
    "required": types_pb2.TOOL_CHOICE_REQUIRED,
}


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", f"{param}: {message}", param=param)


def check_schema(schema: dict[str, Any], param: str) -> None:
    """A JSON Schema (draft 2020-12) that describes a JSON object, or a 400 naming `param`."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise _invalid(
            param, f"not a valid JSON Schema ({exc.message}{f' at {where}' if where else ''})"
        ) from None
    if schema.get("type", "object") != "object":
        raise _invalid(
            param, f"must describe a JSON object (type 'object'), not {schema['type']!r}"
        )


def _tool_pb(tool: ToolDefinition, index: int) -> types_pb2.ToolDefinition:
    function = tool.function
    parameters = function.parameters
    if parameters is not None:
        check_schema(parameters, f"tools[{index}].function.parameters")
    return types_pb2.ToolDefinition(
        name=function.name,
        description=function.description or "",
        parameters_json=json.dumps(parameters) if parameters is not None else "",
        strict=bool(function.strict),
    )


def _response_format_pb(response_format: ResponseFormat | None) -> types_pb2.ResponseFormat:
    if isinstance(response_format, JsonObjectFormat):
        return types_pb2.ResponseFormat(type=types_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if isinstance(response_format, JsonSchemaFormat):
        spec = response_format.json_schema
        schema = spec.schema_ if spec.schema_ is not None else {"type": "object"}
        check_schema(schema, "response_format.json_schema.schema")
        return types_pb2.ResponseFormat(
            type=types_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
            schema_json=json.dumps(schema),
            name=spec.name,
            strict=bool(spec.strict),
        )
    return types_pb2.ResponseFormat()


def generation_options(
    *,
    tools: Sequence[ToolDefinition] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
    response_format: ResponseFormat | None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    logit_bias: Mapping[str, float] | None = None,
) -> types_pb2.GenerationOptions:
    """The request's options for the workers; a 400 naming the parameter when they conflict.

    What leaves the answer as it would be (penalties of 0, no bias) is left out: the request
    may then still be answered from the cache."""
    tools = tools or []
    names = [tool.function.name for tool in tools]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise _invalid(f"tools[{index}].function.name", f"{name!r} is declared twice")
    options = types_pb2.GenerationOptions(
        tools=[_tool_pb(tool, index) for index, tool in enumerate(tools)]
    )
    fmt = _response_format_pb(response_format)
    if fmt.type != types_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED:
        # A text answer leaves the field unset: the options then equal the defaults.
        options.response_format.CopyFrom(fmt)
    if presence_penalty:
        options.presence_penalty = presence_penalty
    if frequency_penalty:
        options.frequency_penalty = frequency_penalty
    for token, bias in (logit_bias or {}).items():
        if not (token.isascii() and token.isdigit()) or int(token) >= 2**31:
            raise _invalid("logit_bias", f"keys are token ids (0, 1, 2, ...), not {token[:32]!r}")
        if bias:
            options.logit_bias[int(token)] = bias
    if parallel_tool_calls is not None and tools:
        options.parallel_tool_calls = parallel_tool_calls
    if isinstance(tool_choice, NamedToolChoice):
        name = tool_choice.function.name
        if name not in names:
            declared = ", ".join(repr(n) for n in names) or "none"
            raise _invalid(
                "tool_choice",
                f"the function {name!r} is not in tools (declared: {declared})",
            )
        options.tool_choice = types_pb2.TOOL_CHOICE_FUNCTION
        options.tool_choice_function = name
    elif tool_choice == "required" and not tools:
        raise _invalid("tool_choice", "'required' needs at least one function in tools")
    elif tool_choice is not None and tools:
        options.tool_choice = _CHOICES[tool_choice]
    return options


def tool_calls_pb(
    calls: Sequence[ToolCall], param: str, tools: Sequence[ToolDefinition] | None
) -> list[types_pb2.ToolCall]:
    """An assistant message's tool calls: their arguments are JSON objects and, for a declared
    function, valid for its parameters."""
    schemas = {t.function.name: t.function.parameters for t in tools or []}
    converted = []
    for index, call in enumerate(calls):
        where = f"{param}[{index}].function.arguments"
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError as exc:
            raise _invalid(where, f"not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(arguments, dict):
            raise _invalid(where, "must be a JSON object")
        schema = schemas.get(call.function.name)
        if schema is not None:
            try:
                Draft202012Validator(schema).validate(arguments)
            except SchemaViolation as exc:
                raise _invalid(
                    where, f"do not match the parameters of {call.function.name!r}: {exc.message}"
                ) from None
            except Unresolvable as exc:
                raise _invalid(
                    where, f"cannot be checked: the parameters' schema refers to {exc}"
                ) from None
        converted.append(
            types_pb2.ToolCall(
                id=call.id, name=call.function.name, arguments=call.function.arguments
            )
        )
    return converted


def chat_tools(
    body: ToolFields, max_chars: int
) -> tuple[types_pb2.GenerationOptions, list[types_pb2.ChatMessage]]:
    """A chat turn's options and tool results (the chat API and its WebSocket): a turn is a user
    message or the results of the tool calls of the chat's last answer, not both."""
    if body.tool_results and body.message:
        raise ApiError(
            422,
            "invalid_request",
            "message: a turn is a message or tool_results; send the message in the next turn",
            param="message",
        )
    if not body.tool_results and not body.message.strip():
        raise ApiError(422, "invalid_request", "message: must not be blank", param="message")
    if len(body.message) > max_chars:
        raise ApiError(
            413,
            "message_too_large",
            f"message is {len(body.message)} characters; the limit is {max_chars}",
            param="message",
        )
    results = []
    for index, result in enumerate(body.tool_results or ()):
        if len(result.content) > max_chars:
            raise ApiError(
                413,
                "message_too_large",
                f"tool_results[{index}].content is {len(result.content)} characters; the limit "
                f"is {max_chars}",
                param=f"tool_results[{index}].content",
            )
        results.append(
            types_pb2.ChatMessage(
                role=types_pb2.ROLE_TOOL, content=result.content, tool_call_id=result.tool_call_id
            )
        )
    options = generation_options(
        tools=body.tools,
        tool_choice=body.tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=None,
    )
    return options, results
