"""Tool calls in Hermes' format: offered in the prompt, parsed from the answer (no I/O)."""

from __future__ import annotations

import json

import jsonschema

from parley_worker.engines._chat import answer_prefix, split_tool_calls
from parley_worker.engines.base import ChatMessage, GenerationOptions, Tool, ToolCall
from parley_worker.engines.fake import example
from parley_worker.engines.tools import call_id, parse_tool_calls, template_messages

WEATHER = Tool("get_weather", "The weather", {"type": "object", "properties": {}})
TIME = Tool("get_time")


def test_calls_are_parsed_after_the_text_that_precedes_them() -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": "{}"}</tool_call>'
    )
    content, calls = parse_tool_calls(text, "r1", (WEATHER, TIME))
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {}),
    ]
    assert [c.id for c in calls] == [call_id("r1", 0), call_id("r1", 1)]
    # The same request generated again (redelivered) names its calls the same.
    assert parse_tool_calls(text, "r1", (WEATHER, TIME))[1] == calls


def test_an_unclosed_call_with_trailing_text_still_parses() -> None:
    _, calls = parse_tool_calls('<tool_call>{"name": "get_time", "arguments": {}} and so', "r")
    assert [c.name for c in calls] == ["get_time"]


def test_what_is_not_a_call_of_a_declared_function_stays_text() -> None:
    for text in (
        "<tool_call>not json</tool_call>",
        '<tool_call>{"name": "launch", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
        "no call at all",
    ):
        assert parse_tool_calls(text, "r", (WEATHER, TIME)) == (text, ())


def test_a_forced_call_is_parsed_with_the_start_the_prompt_gave_it() -> None:
    options = GenerationOptions(
        tools=(WEATHER, TIME), tool_choice="function", tool_choice_function="get_time"
    )
    assert answer_prefix(options).endswith('"name": "get_time", "arguments": ')
    content, calls = split_tool_calls('{"tz": "UTC"}}\n</tool_call>', "r", options)
    assert content == ""
    assert calls == (ToolCall(call_id("r", 0), "get_time", '{"tz": "UTC"}'),)


def test_parallel_calls_can_be_refused() -> None:
    text = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>' * 2
    both = split_tool_calls(text, "r", GenerationOptions(tools=(TIME,)))
    one = split_tool_calls(text, "r", GenerationOptions(tools=(TIME,), parallel_tool_calls=False))
    assert (len(both[1]), len(one[1])) == (2, 1)
    # With tool_choice none the same text is text.
    assert split_tool_calls(text, "r", GenerationOptions(tools=(TIME,), tool_choice="none")) == (
        text,
        (),
    )


def test_a_template_without_tools_gets_them_in_the_system_prompt() -> None:
    call = ToolCall("call_1", "get_time", "{}")
    messages = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Time?"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", "12:00", tool_call_id="call_1"),
    )
    rendered = template_messages(messages, GenerationOptions(tools=(TIME,)), native_tools=False)
    assert rendered[0]["role"] == "system"
    assert rendered[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '"name": "get_time"' in rendered[0]["content"]
    assert (
        rendered[2]["content"] == '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    )
    assert rendered[3] == {"role": "user", "content": "<tool_response>\n12:00\n</tool_response>"}
    native = template_messages(messages, GenerationOptions(tools=(TIME,)), native_tools=True)
    assert native[2]["tool_calls"][0]["function"] == {"name": "get_time", "arguments": {}}
    assert native[3]["tool_call_id"] == "call_1"


def test_the_fake_engines_made_up_values_are_valid() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 2},
            "kind": {"enum": ["a", "b"]},
            "n": {"type": ["integer", "null"], "minimum": 3},
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2},
            "flag": {"type": "boolean"},
        },
        "required": ["name", "kind", "n", "items", "flag"],
        "$defs": {"item": {"type": "object", "properties": {"x": {"type": "number"}}}},
    }
    jsonschema.validate(example(schema), schema)
