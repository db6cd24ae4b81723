"""Tools and structured output on real language: SmolLM2-135M-Instruct on the transformers engine
(the `real_platform` fixture), through the official `openai` SDK. Its chat template has no tools,
so they are offered in the system prompt in Hermes' format; a forced call and a response format
are enforced by xgrammar while decoding. A 135M model picks tools poorly: what is asserted is
the mechanics (a call parsed, its arguments valid for the tool's schema, a JSON answer that
parses and validates), not the model's judgement."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionToolParam

from parley_devstack.models import DEFAULT_MODEL
from parley_devstack.platform import Platform

pytestmark = pytest.mark.e2e

MODEL = DEFAULT_MODEL.model_id
CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": CITY_SCHEMA,
        },
    }
]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def sdk(real_platform: Platform) -> openai.OpenAI:
    admin = {"Authorization": f"Bearer {real_platform.admin_api_key}"}
    with httpx.Client(base_url=real_platform.gateway_url, headers=admin, timeout=30) as http:
        user = http.post("/admin/users", json={"name": "real-tools"})
        assert user.status_code == 201, user.text
        key = http.post(f"/admin/users/{user.json()['user_id']}/keys", json={"name": "t"})
        assert key.status_code == 201, key.text
    return openai.OpenAI(
        base_url=f"{real_platform.gateway_url}/v1",
        api_key=key.json()["api_key"],
        max_retries=0,
        timeout=180,
    )


@pytest.mark.parametrize(
    "tool_choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_a_forced_tool_call_is_parsed_with_valid_arguments(
    sdk: openai.OpenAI, tool_choice: Any
) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,
        tool_choice=tool_choice,
        temperature=0,
        max_tokens=60,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), CITY_SCHEMA)


def test_a_streamed_forced_call(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather in Oslo, please."}],
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(arguments), CITY_SCHEMA)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_json_schema_output_parses_and_validates(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
        temperature=0,
        max_tokens=60,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content or ""), PERSON_SCHEMA)


def test_json_object_output_parses(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=80,
    )
    choice = completion.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:  # cut at max_tokens: still JSON so far, never prose
        assert choice.finish_reason == "length"
        assert (choice.message.content or "").lstrip().startswith("{")


def test_logprobs_are_the_models(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None
    tokens = choice.logprobs.content
    assert tokens
    assert "".join(t.token for t in tokens) == choice.message.content
    for token in tokens:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        # Greedy: the token chosen is the most likely one.
        assert token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == pytest.approx(token.logprob)
        assert [t.logprob for t in token.top_logprobs] == sorted(
            (t.logprob for t in token.top_logprobs), reverse=True
        )


def test_a_schema_the_grammar_cannot_enforce_is_a_400_naming_it(sdk: openai.OpenAI) -> None:
    # A valid JSON Schema (the gateway accepts it) whose pattern xgrammar does not support.
    letters: dict[str, Any] = {
        "type": "object",
        "properties": {"word": {"type": "string", "pattern": "(?<=a)b"}},
        "required": ["word"],
    }
    asks: list[tuple[dict[str, Any], str]] = [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "word", "schema": letters},
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {
                "tools": [
                    *TOOLS,
                    {"type": "function", "function": {"name": "spell", "parameters": letters}},
                ],
                "tool_choice": {"type": "function", "function": {"name": "spell"}},
            },
            "tools[1].function.parameters",
        ),
    ]
    for body, param in asks:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "A word, please."}],
                max_tokens=20,
                extra_body=body,
            )
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["param"] == param, error
        assert "cannot be enforced" in error["message"]
        assert "Lookbehind is not supported" in error["message"]
