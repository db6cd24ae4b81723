"""Tools for models whose chat template has no tool support: described in the system prompt, and
called in Hermes' format, one JSON object a call between tags::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

    parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "r1")
    # -> ("", (ToolCall(id="call_...", name="f", arguments="{}"),))
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from parley_worker.engines.base import ChatMessage, GenerationOptions, Tool, ToolCall

__all__ = [
    "TOOL_CALL_START",
    "call_id",
    "parse_tool_calls",
    "template_messages",
    "tools_prompt",
]

TOOL_CALL_START = "<tool_call>"
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def call_id(request_id: str, index: int) -> str:
    """A call's id: the same for a request generated again (redelivered to another worker)."""
    digest = hashlib.sha256(f"{request_id}:{index}".encode()).hexdigest()[:24]
    return f"call_{digest}"


def tools_prompt(options: GenerationOptions) -> str:
    """The system prompt's part that offers the tools (Hermes' wording)."""
    tools = options.forced_tools or options.tools
    listed = "\n".join(json.dumps(t.as_openai()) for t in tools)
    must = (
        "You must call one of these functions."
        if options.forced_tools
        else "You may call one or more functions to assist with the user query."
    )
    return (
        f"# Tools\n\n{must}\n\nYou are provided with function signatures within <tools></tools> "
        f"XML tags:\n<tools>\n{listed}\n</tools>\n\nFor each function call, return a json object "
        "with function name and arguments within <tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def template_messages(
    messages: Sequence[ChatMessage], options: GenerationOptions, *, native_tools: bool
) -> list[dict[str, Any]]:
    """The messages as a chat template takes them. A template without tool support
    (`native_tools` False) gets the tools in the system prompt, the assistant's calls as
    `<tool_call>` text and each tool result as a user message that names its call."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        if native_tools:
            entry: dict[str, Any] = {"role": message.role, "content": message.content}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.loads(c.arguments)},
                    }
                    for c in message.tool_calls
                ]
            if message.tool_call_id:
                entry["tool_call_id"] = message.tool_call_id
            rendered.append(entry)
        elif message.role == "tool":
            rendered.append(
                {
                    "role": "user",
                    "content": f"<tool_response>\n{message.content}\n</tool_response>",
                }
            )
        else:
            calls = "".join(
                f"{TOOL_CALL_START}\n"
                + json.dumps({"name": c.name, "arguments": json.loads(c.arguments)})
                + "\n</tool_call>"
                for c in message.tool_calls
            )
            rendered.append({"role": message.role, "content": message.content + calls})
    if options.tools_enabled and not native_tools:
        prompt = tools_prompt(options)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": f"{rendered[0]['content']}\n\n{prompt}"}
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


def parse_tool_calls(
    text: str, request_id: str, tools: Sequence[Tool] = ()
) -> tuple[str, tuple[ToolCall, ...]]:
    """The text before the first `<tool_call>`, and the calls that follow it. A block that is
    not a JSON object with a declared function's name is left as text (the model failed)."""
    start = text.find(TOOL_CALL_START)
    if start < 0:
        return text, ()
    names = {t.name for t in tools}
    calls: list[ToolCall] = []
    decoder = json.JSONDecoder()
    for match in _TOOL_CALL.finditer(text, start):
        try:
            # What follows the object (a model that does not close the tag) is not the call's.
            call, _ = decoder.raw_decode(match.group(1))
        except json.JSONDecodeError:
            return text, ()
        name = call.get("name") if isinstance(call, dict) else None
        arguments = call.get("arguments", {}) if isinstance(call, dict) else None
        if not isinstance(name, str) or (names and name not in names):
            return text, ()
        if isinstance(arguments, str):  # some models write the arguments' text
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return text, ()
        if not isinstance(arguments, dict):
            return text, ()
        calls.append(ToolCall(call_id(request_id, len(calls)), name, json.dumps(arguments)))
    return text[:start].strip(), tuple(calls)
