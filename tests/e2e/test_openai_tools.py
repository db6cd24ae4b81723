"""Tool calling and structured output through the whole platform (gateway, Kafka, worker and back),
driven by the official `openai` SDK, sync and async, streaming and not, and by LangChain's
`ChatOpenAI` (`bind_tools`, `with_structured_output`). The workers run the fake
engine, which calls the tools a message names (or the one it is forced to) with arguments made
up from the tool's schema, and answers a response format with an instance of its schema: the
platform's plumbing is what is tested here, not a model's choices."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from httpx_ws import connect_ws
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel, SecretStr

from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack
from tests.conftest import eventually, parse_sse

pytestmark = pytest.mark.e2e

MODEL = "fake"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
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
            "description": "The weather in a city",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def fake_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform on the fake engine, on a stack of its own (its workers must not take the
    tiny-model platform's requests)."""
    scratch = tmp_path_factory.mktemp("tools-platform")
    with (
        LocalStack(scratch / "stack") as stack,
        Platform(stack.addresses, run_dir=scratch / "run", model_dir=None, engine="fake") as up,
    ):
        yield up


@pytest.fixture(scope="module")
def api_key(fake_platform: Platform) -> str:
    admin = {"Authorization": f"Bearer {fake_platform.admin_api_key}"}
    with httpx.Client(base_url=fake_platform.gateway_url, timeout=60, headers=admin) as http:
        user = http.post("/admin/users", json={"name": "tools"})
        assert user.status_code == 201, user.text
        key = http.post(f"/admin/users/{user.json()['user_id']}/keys", json={"name": "t"})
        assert key.status_code == 201, key.text
        return str(key.json()["api_key"])


@pytest.fixture
def sdk(fake_platform: Platform, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{fake_platform.gateway_url}/v1", api_key=api_key, max_retries=0, timeout=60
    )


@pytest.fixture
def async_sdk(fake_platform: Platform, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{fake_platform.gateway_url}/v1", api_key=api_key, max_retries=0, timeout=60
    )


def _ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def test_a_tool_call_with_valid_arguments(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=_ask("Use get_weather for Paris."), tools=TOOLS
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0


def test_tool_choice_forces_none_or_a_function(sdk: openai.OpenAI) -> None:
    forced = sdk.chat.completions.create(
        model=MODEL,
        messages=_ask("Hello there."),
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert forced.choices[0].finish_reason == "tool_calls"
    calls = forced.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_time"]

    required = sdk.chat.completions.create(
        model=MODEL, messages=_ask("Hello there."), tools=TOOLS, tool_choice="required"
    )
    assert required.choices[0].finish_reason == "tool_calls"

    text = sdk.chat.completions.create(
        model=MODEL,
        messages=_ask("Use get_weather for Paris."),
        tools=TOOLS,
        tool_choice="none",
        max_tokens=3,
    )
    assert text.choices[0].finish_reason == "length"
    assert text.choices[0].message.tool_calls is None
    assert text.choices[0].message.content


def test_parallel_tool_calls(sdk: openai.OpenAI) -> None:
    both = sdk.chat.completions.create(
        model=MODEL, messages=_ask("get_weather and get_time for Oslo"), tools=TOOLS
    )
    calls = both.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2

    one = sdk.chat.completions.create(
        model=MODEL,
        messages=_ask("get_weather and get_time for Oslo"),
        tools=TOOLS,
        parallel_tool_calls=False,
    )
    calls = one.choices[0].message.tool_calls
    assert calls is not None
    assert len(calls) == 1


def test_a_round_trip_with_the_tool_result(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(
        model=MODEL, messages=_ask("Use get_weather for Paris."), tools=TOOLS
    )
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    messages: list[ChatCompletionMessageParam] = [
        *_ask("Use get_weather for Paris."),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in calls
            ],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 21}'},
    ]
    answer = sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, max_tokens=4)
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content


def _assemble(deltas: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        if delta.id:
            assert not call["id"], "the id comes once, in the call's first delta"
            call["id"] = delta.id
        if delta.function and delta.function.name:
            call["name"] = delta.function.name
        if delta.function and delta.function.arguments:
            call["arguments"] += delta.function.arguments
    return calls


def test_streamed_tool_calls(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=_ask("get_weather and get_time for Oslo"),
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    # As OpenAI: the first delta of a call has its id and name, the others argument fragments.
    assert deltas[0].id
    assert deltas[0].function
    assert deltas[0].function.name == "get_weather"
    assert len(deltas) > 2
    calls = _assemble(deltas)
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_SCHEMA)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_async_sdk_streaming_and_not(async_sdk: openai.AsyncOpenAI) -> None:
    async def run() -> tuple[Any, list[Any]]:
        whole = await async_sdk.chat.completions.create(
            model=MODEL, messages=_ask("get_time in Rome"), tools=TOOLS
        )
        stream = await async_sdk.chat.completions.create(
            model=MODEL, messages=_ask("get_time in Rome"), tools=TOOLS, stream=True
        )
        return whole, [chunk async for chunk in stream]

    whole, chunks = asyncio.run(run())
    calls = whole.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "get_time"
    streamed = _assemble(
        [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    )
    assert streamed[0]["name"] == "get_time"
    assert json.loads(streamed[0]["arguments"]) == json.loads(calls[0].function.arguments)


def test_structured_output(sdk: openai.OpenAI, async_sdk: openai.AsyncOpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL,
        messages=_ask("Describe a person."),
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        },
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content or ""), PERSON_SCHEMA)

    async def streamed() -> str:
        stream = await async_sdk.chat.completions.create(
            model=MODEL,
            messages=_ask("Anything, as JSON."),
            response_format={"type": "json_object"},
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert isinstance(json.loads(asyncio.run(streamed())), dict)


def test_options_are_never_answered_from_the_cache(sdk: openai.OpenAI) -> None:
    question = _ask("Which planet is called the red planet?")

    def cached(**options: Any) -> bool:
        completion = sdk.chat.completions.create(
            model=MODEL, messages=question, max_tokens=4, temperature=0, **options
        )
        assert completion.model_extra is not None
        return bool(completion.model_extra["parley"]["cached"])

    # The plain question is answered from the cache once its first answer is stored ...
    cached()
    eventually(lambda: cached() or None, what="the plain answer served from the cache")
    # ... the same question with options that change the answer never is.
    for options in (
        {"tools": TOOLS},
        {"response_format": {"type": "json_object"}},
        {"presence_penalty": 0.5},
        {"logit_bias": {"7": 3}},
        {"n": 2},
    ):
        assert not cached(**options), options


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "'nope' is not in tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "at least one function"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}]},
            "tools[0].function.parameters",
            "not a valid JSON Schema",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools.0.function.name",
            "",
        ),
        (
            {"tools": [TOOLS[0], TOOLS[0]]},
            "tools[1].function.name",
            "declared twice",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "required": 3}},
                }
            },
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "string"}},
                }
            },
            "response_format.json_schema.schema",
            "JSON object",
        ),
    ],
)
def test_bad_tools_and_formats_are_400s_naming_the_param(
    sdk: openai.OpenAI, body: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=_ask("Hi"), extra_body=body)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == param, error
    assert words in error["message"]


def test_bad_tool_messages_are_400s_naming_the_message(sdk: openai.OpenAI) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
    }
    cases: list[tuple[list[Any], str, str]] = [
        (
            [
                *_ask("Hi"),
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "content": "1"},
            ],
            "messages[2].tool_call_id",
            "needs the id",
        ),
        (
            [*_ask("Hi"), {"role": "tool", "tool_call_id": "call_9", "content": "1"}],
            "messages[1].tool_call_id",
            "answers no tool call",
        ),
        (
            [
                *_ask("Hi"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {**call, "function": {"name": "get_weather", "arguments": "{not json"}}
                    ],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
            "not valid JSON",
        ),
        (
            [
                *_ask("Hi"),
                {
                    "role": "assistant",
                    "tool_calls": [
                        {**call, "function": {"name": "get_weather", "arguments": '{"city": 3}'}}
                    ],
                },
            ],
            "messages[1].tool_calls[0].function.arguments",
            "do not match the parameters of 'get_weather'",
        ),
    ]
    for messages, param, words in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["param"] == param, error
        assert words in error["message"], error


def test_the_schema_of_the_api_documents_tools(fake_platform: Platform) -> None:
    schema = httpx.get(f"{fake_platform.gateway_url}/openapi.json", timeout=30).json()
    request = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"tools", "tool_choice", "parallel_tool_calls", "response_format"} <= set(request)


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


class Person(BaseModel):
    name: str
    age: int


def test_langchain_bind_tools_round_trip(fake_platform: Platform, api_key: str) -> None:
    """LangChain's ChatOpenAI, a client nobody here wrote, with tools bound."""
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{fake_platform.gateway_url}/v1",
        api_key=SecretStr(api_key),
        max_retries=0,
        timeout=60,
    )
    bound = llm.bind_tools([GetWeather])
    question = HumanMessage("Use GetWeather for Paris.")
    called = bound.invoke([question])
    assert isinstance(called, AIMessage)
    assert [c["name"] for c in called.tool_calls] == ["GetWeather"]
    GetWeather.model_validate(called.tool_calls[0]["args"])

    streamed = [chunk for chunk in bound.stream([question])]
    merged = streamed[0]
    for chunk in streamed[1:]:
        merged = merged + chunk
    assert isinstance(merged, AIMessageChunk)
    assert [c["name"] for c in merged.tool_calls] == ["GetWeather"]
    GetWeather.model_validate(merged.tool_calls[0]["args"])

    call_id = called.tool_calls[0]["id"]
    assert call_id
    answer = bound.invoke(
        [question, called, ToolMessage('{"temperature": 21}', tool_call_id=call_id)]
    )
    assert isinstance(answer, AIMessage)
    assert not answer.tool_calls
    assert answer.content


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_structured_output(fake_platform: Platform, api_key: str, method: Any) -> None:
    llm = ChatOpenAI(
        model=MODEL,
        base_url=f"{fake_platform.gateway_url}/v1",
        api_key=SecretStr(api_key),
        max_retries=0,
        timeout=60,
    )
    if method == "json_mode":
        # Any JSON object (the schema is not sent): LangChain parses it into a dict.
        parsed = llm.with_structured_output(Person.model_json_schema(), method=method).invoke(
            "Invent a person, as JSON with a name and an age."
        )
        assert isinstance(parsed, dict)
        return
    structured = llm.with_structured_output(Person, method=method)
    person = structured.invoke("Invent a person, as JSON with a name and an age.")
    assert isinstance(person, Person)


def test_penalties_and_logit_bias_are_taken_and_bypass_the_cache(sdk: openai.OpenAI) -> None:
    for _ in range(2):
        completion = sdk.chat.completions.create(
            model=MODEL,
            messages=_ask("Tell me about penalties."),
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={"42": 5},
            max_tokens=3,
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.model_extra is not None
        assert completion.model_extra["parley"]["cached"] is False
    for key in ("x", "\u00b2", "-1"):  # "²" is a digit to str.isdigit, not a token id
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(model=MODEL, messages=_ask("Hi"), logit_bias={key: 1})
        assert isinstance(refused.value.body, dict)
        assert refused.value.body["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=_ask("Hi"), presence_penalty=3)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "presence_penalty"


def test_several_choices_streamed_and_not(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=_ask("get_time in Rome"), tools=TOOLS, n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    for choice in completion.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
    assert completion.usage is not None
    one = sdk.chat.completions.create(model=MODEL, messages=_ask("get_time in Rome"), tools=TOOLS)
    assert one.usage is not None
    # The prompt counts once; every choice's answer counts.
    assert completion.usage.prompt_tokens == one.usage.prompt_tokens
    assert completion.usage.completion_tokens == 3 * one.usage.completion_tokens

    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=_ask("Hello"),
        n=2,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finishes = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length"}
    assert all(texts.values())
    assert usage is not None
    assert usage.completion_tokens == 6

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=_ask("Hi"), n=5)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "n"
    assert "at most 4" in refused.value.body["message"]


def test_logprobs_in_openai_shapes(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=_ask("Hello"), max_tokens=3, logprobs=True, top_logprobs=1
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == 3
    assert "".join(t.token for t in logprobs.content) == completion.choices[0].message.content
    first = logprobs.content[0]
    assert first.logprob == 0.0
    assert first.bytes == list(first.token.encode())
    assert [t.token for t in first.top_logprobs] == [first.token]

    stream = sdk.chat.completions.create(
        model=MODEL, messages=_ask("Hello"), max_tokens=3, logprobs=True, stream=True
    )
    streamed = [
        t
        for c in stream
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert len(streamed) == 3

    plain = sdk.chat.completions.create(model=MODEL, messages=_ask("Hello"), max_tokens=3)
    assert plain.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=_ask("Hi"), top_logprobs=2)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "top_logprobs"


# Tools on a stored chat: the chat API, its WebSocket, and /v1/chat/completions with chat_id. The
# tool's result names get_time: were it sent to the model as a user's message, the fake engine
# would call that tool; as a tool message it answers in text.
RESULT = '{"celsius": 21, "next": "get_time"}'


@pytest.fixture
def rest(fake_platform: Platform, api_key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=fake_platform.gateway_url, timeout=60, headers=headers) as http:
        yield http


def _stored(rest: httpx.Client, chat_id: str, count: int) -> list[dict[str, Any]]:
    """The chat's messages once its `count`th is stored (answers come from the results topic)."""

    def messages() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = rest.get(f"/chat/{chat_id}").json()["messages"]
        return found if len(found) >= count else None

    return eventually(messages, what=f"{count} messages stored")


def _check_round_trip(messages: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
    assert [m["role"] for m in messages[-4:]] == ["user", "assistant", "tool", "assistant"]
    called, results, answered = messages[-3:]
    assert called["finish_reason"] == "tool_calls"
    assert called["tool_calls"] == calls
    assert results["tool_results"] == [{"tool_call_id": calls[0]["id"], "content": RESULT}]
    assert answered["tool_calls"] is None
    assert answered["content"]
    assert answered["parent_id"] == results["message_id"]


def test_tools_on_the_chat_api_continue_the_chat_server_side(rest: httpx.Client) -> None:
    started = rest.post("/chat", json={"message": "Use get_weather for Paris.", "tools": TOOLS})
    assert started.status_code == 200, started.text
    chat_id = started.json()["chat_id"]
    answer = started.json()["answer"]
    assert answer["finish_reason"] == "tool_calls"
    calls = answer["tool_calls"]
    assert [c["name"] for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER_SCHEMA)

    # Only a call of the chat's last answer can be answered: nothing is stored for the others.
    for results, words in (
        ([{"tool_call_id": "call_nope", "content": "1"}], "'call_nope' is not a tool call"),
        ([{"tool_call_id": calls[0]["id"], "content": "1"}] * 2, "answered twice"),
    ):
        refused = rest.post(
            f"/chat/{chat_id}/completion", json={"tool_results": results, "tools": TOOLS}
        )
        assert refused.status_code == 400, refused.text
        assert words in refused.json()["error"]["message"]
    both = rest.post(
        f"/chat/{chat_id}/completion",
        json={"message": "and this", "tool_results": [{"tool_call_id": "c", "content": "1"}]},
    )
    assert both.status_code == 422, both.text

    results = [{"tool_call_id": calls[0]["id"], "content": RESULT}]
    streamed = rest.post(
        f"/chat/{chat_id}/completion",
        json={"tool_results": results, "tools": TOOLS, "max_tokens": 4, "stream": True},
    )
    assert streamed.status_code == 200, streamed.text
    events = parse_sse(streamed.text)
    done = [data for event, data in events if event == "done"]
    assert done, events
    assert done[0]["finish_reason"] == "length"
    assert "tool_calls" not in done[0]
    messages = _stored(rest, chat_id, 4)
    assert len(messages) == 4
    _check_round_trip(messages, calls)

    # A tool result answered: the chat goes on with a question.
    after = rest.post(f"/chat/{chat_id}/completion", json={"message": "Thanks", "max_tokens": 2})
    assert after.status_code == 200, after.text
    assert after.json()["answer"]["finish_reason"] == "length"


def test_turns_with_tools_are_never_answered_from_the_cache(rest: httpx.Client) -> None:
    question = {"message": "Which ocean is the largest?", "max_tokens": 4, "temperature": 0}

    def cached(**fields: Any) -> bool:
        answered = rest.post("/chat", json={**question, **fields})
        assert answered.status_code == 200, answered.text
        return bool(answered.json()["answer"]["cached"])

    cached()
    eventually(lambda: cached() or None, what="the plain answer served from the cache")
    assert not cached(tools=TOOLS)


def test_tools_over_the_websocket(fake_platform: Platform, api_key: str) -> None:
    def until_done(socket: Any) -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = socket.receive_json(timeout=30)
            if frame["type"] in ("done", "error"):
                return frame

    with (
        httpx.Client() as plain,
        connect_ws(f"{fake_platform.gateway_url}/chat/ws", plain) as socket,
    ):
        socket.send_json({"type": "auth", "api_key": api_key})
        assert socket.receive_json(timeout=10)["type"] == "ready"
        socket.send_json({"type": "message", "message": "get_time in Lima", "tools": TOOLS})
        done = until_done(socket)
        assert done["type"] == "done", done
        assert done["answer"]["finish_reason"] == "tool_calls"
        calls = done["answer"]["tool_calls"]
        assert [c["name"] for c in calls] == ["get_time"]
        chat_id = done["chat_id"]

        socket.send_json(
            {
                "type": "message",
                "chat_id": chat_id,
                "tool_results": [{"tool_call_id": "call_other", "content": "1"}],
                "tools": TOOLS,
            }
        )
        refused = until_done(socket)
        assert refused["type"] == "error"
        assert "'call_other' is not a tool call" in refused["error"]["message"]

        socket.send_json(
            {
                "type": "message",
                "chat_id": chat_id,
                "tool_results": [{"tool_call_id": calls[0]["id"], "content": RESULT}],
                "tools": TOOLS,
                "max_tokens": 3,
            }
        )
        done = until_done(socket)
        assert done["type"] == "done", done
        assert done["answer"]["finish_reason"] == "length"
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=fake_platform.gateway_url, timeout=60, headers=headers) as http:
        _check_round_trip(_stored(http, chat_id, 4), calls)


def test_chat_completions_with_chat_id_and_tools(sdk: openai.OpenAI, rest: httpx.Client) -> None:
    opened = rest.post("/chat", json={"message": "Hello", "max_tokens": 2})
    assert opened.status_code == 200, opened.text
    chat_id = opened.json()["chat_id"]
    _stored(rest, chat_id, 2)
    asked = _ask("Use get_weather for Paris.")
    first = sdk.chat.completions.create(
        model=MODEL, messages=asked, tools=TOOLS, extra_body={"chat_id": chat_id}
    )
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    called: ChatCompletionMessageParam = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in calls
        ],
    }

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[*asked, called, {"role": "tool", "tool_call_id": "call_x", "content": "1"}],
            tools=TOOLS,
            extra_body={"chat_id": chat_id},
        )
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "messages[2].tool_call_id"

    # The chat holds the conversation: the tool message alone continues it.
    answer = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "tool", "tool_call_id": calls[0].id, "content": RESULT}],
        tools=TOOLS,
        max_tokens=4,
        extra_body={"chat_id": chat_id},
    )
    assert answer.choices[0].finish_reason == "length"
    assert answer.choices[0].message.tool_calls is None
    messages = _stored(rest, chat_id, 6)
    _check_round_trip(
        messages,
        [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls],
    )


# The Responses API: function tools in its own shape, stored and stateless, streamed and not.
RESPONSE_TOOLS: list[Any] = [{"type": "function", **t["function"]} for t in TOOLS]


def _function_calls(response: Any) -> list[Any]:
    return [item for item in response.output if item.type == "function_call"]


def test_responses_function_call_round_trip(sdk: openai.OpenAI, rest: httpx.Client) -> None:
    first = sdk.responses.create(
        model=MODEL, input="Use get_weather for Paris.", tools=RESPONSE_TOOLS
    )
    assert first.status == "completed"
    (call,) = _function_calls(first)
    assert call.name == "get_weather"
    assert call.call_id
    assert call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    assert [t.name for t in first.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    # Stored with the response: read back on GET.
    assert _function_calls(sdk.responses.retrieve(first.id)) == [call]

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(
            model=MODEL,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}],
            tools=RESPONSE_TOOLS,
        )
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "input[0].call_id", refused.value.body

    answer = sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": RESULT}],
        tools=RESPONSE_TOOLS,
        max_output_tokens=4,
    )
    assert answer.previous_response_id == first.id
    assert _function_calls(answer) == []
    assert answer.output_text
    # The tool turn is the chat's: its stored messages hold the call and its result.
    chat_id = first.parley_chat_id  # type: ignore[attr-defined]
    assert answer.parley_chat_id == chat_id  # type: ignore[attr-defined]
    _check_round_trip(
        _stored(rest, chat_id, 4),
        [{"id": call.call_id, "name": call.name, "arguments": call.arguments}],
    )
    # The chat's last answer is text now: a result for the old call answers nothing.
    with pytest.raises(openai.BadRequestError) as stale:
        sdk.responses.create(
            model=MODEL,
            previous_response_id=answer.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "x"}],
            tools=RESPONSE_TOOLS,
        )
    assert isinstance(stale.value.body, dict)
    assert stale.value.body["param"] == "input", stale.value.body
    assert "made no tool calls" in stale.value.body["message"]


def test_responses_stream_function_calls_and_replay_them(
    sdk: openai.OpenAI, rest: httpx.Client
) -> None:
    events = list(
        sdk.responses.create(
            model=MODEL,
            input="get_weather and get_time for Oslo",
            tools=RESPONSE_TOOLS,
            stream=True,
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    per_call = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert types[2:-1] == per_call * 2  # only calls: no message item
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [e.output_index for e in done] == [0, 1]
    final = events[-1].response  # type: ignore[union-attr]
    calls = _function_calls(final)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert [d.arguments for d in done] == [c.arguments for c in calls]
    assert [d.item_id for d in done] == [c.id for c in calls]

    # Replayed after event 3 from the stored answer, numbered the same.
    replay = rest.get(f"/v1/responses/{final.id}", params={"stream": "true", "starting_after": 3})
    assert replay.status_code == 200, replay.text
    replayed = [data for _, data in parse_sse(replay.text)]
    live = [e.model_dump(mode="json", exclude_none=True) for e in events[4:]]
    assert [e["sequence_number"] for e in replayed] == list(range(4, len(events)))
    assert [e["type"] for e in replayed] == [e["type"] for e in live]
    assert replayed[-1]["response"]["output"] == live[-1]["response"]["output"]


def test_responses_tool_choice_async_streamed_and_not(async_sdk: openai.AsyncOpenAI) -> None:
    async def main() -> None:
        forced = await async_sdk.responses.create(
            model=MODEL,
            input="Hello there.",
            tools=RESPONSE_TOOLS,
            tool_choice={"type": "function", "name": "get_time"},
            parallel_tool_calls=False,
        )
        assert [c.name for c in _function_calls(forced)] == ["get_time"]
        assert forced.tool_choice.name == "get_time"  # type: ignore[union-attr]
        assert forced.parallel_tool_calls is False

        stream = await async_sdk.responses.create(
            model=MODEL,
            input="Use get_weather for Paris.",
            tools=RESPONSE_TOOLS,
            tool_choice="none",
            max_output_tokens=4,
            stream=True,
        )
        events = [e async for e in stream]
        assert "response.function_call_arguments.delta" not in {e.type for e in events}
        final = events[-1].response  # type: ignore[union-attr]
        assert _function_calls(final) == []
        assert final.output_text

        required = await async_sdk.responses.create(
            model=MODEL, input="Hi", tools=RESPONSE_TOOLS, tool_choice="required", stream=True
        )
        kinds = [e.type async for e in required]
        assert "response.function_call_arguments.done" in kinds

    asyncio.run(main())


BOTH = "get_weather and get_time for Oslo"


def test_responses_tool_choice_and_parallel_tool_calls(sdk: openai.OpenAI) -> None:
    parallel = sdk.responses.create(model=MODEL, input=BOTH, tools=RESPONSE_TOOLS)
    calls = _function_calls(parallel)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.call_id for c in calls}) == len({c.id for c in calls}) == 2
    assert parallel.parallel_tool_calls is True
    assert parallel.tool_choice == "auto"

    single = sdk.responses.create(
        model=MODEL, input=BOTH, tools=RESPONSE_TOOLS, parallel_tool_calls=False
    )
    assert [c.name for c in _function_calls(single)] == ["get_weather"]
    assert single.parallel_tool_calls is False
    assert sdk.responses.retrieve(single.id).parallel_tool_calls is False

    required = sdk.responses.create(
        model=MODEL, input="Hello there.", tools=RESPONSE_TOOLS, tool_choice="required"
    )
    (call,) = _function_calls(required)
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    assert required.tool_choice == "required"
    assert sdk.responses.retrieve(required.id).tool_choice == "required"

    none = sdk.responses.create(
        model=MODEL,
        input="Use get_weather for Paris.",
        tools=RESPONSE_TOOLS,
        tool_choice="none",
        max_output_tokens=4,
    )
    assert _function_calls(none) == []
    assert none.output_text
    assert none.tool_choice == "none"

    events = list(
        sdk.responses.create(
            model=MODEL,
            input="Use get_weather for Paris.",
            tools=RESPONSE_TOOLS,
            tool_choice={"type": "function", "name": "get_time"},
            stream=True,
        )
    )
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.item.type, e.item.name, e.item.arguments) for e in added] == [  # type: ignore[union-attr]
        ("function_call", "get_time", "")
    ]
    final = events[-1].response  # type: ignore[union-attr]
    assert [c.name for c in _function_calls(final)] == ["get_time"]
    assert final.tool_choice.name == "get_time"
    assert sdk.responses.retrieve(final.id).tool_choice.name == "get_time"  # type: ignore[union-attr]


def test_responses_async_function_calls_streamed_replayed_and_answered(
    async_sdk: openai.AsyncOpenAI,
) -> None:
    async def main() -> None:
        stream = await async_sdk.responses.create(
            model=MODEL, input=BOTH, tools=RESPONSE_TOOLS, stream=True
        )
        events = [e async for e in stream]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        final = events[-1].response  # type: ignore[union-attr]
        calls = _function_calls(final)
        assert [d.delta for d in deltas] == [c.arguments for c in calls]  # type: ignore[union-attr]
        assert [d.item_id for d in deltas] == [c.id for c in calls]  # type: ignore[union-attr]

        # Resumed inside the second call's events: exactly the events after N, alike.
        after = deltas[1].sequence_number - 1
        resumed = await async_sdk.responses.retrieve(final.id, stream=True, starting_after=after)
        replayed = [e async for e in resumed]
        assert [e.model_dump(mode="json") for e in replayed[:-1]] == [
            e.model_dump(mode="json") for e in events[after + 1 : -1]
        ]
        assert replayed[-1].type == "response.completed"
        assert replayed[-1].response.output == final.output  # type: ignore[union-attr]

        # Both results, streamed: the stored chat's tool turn, answered in text.
        answered = await async_sdk.responses.create(
            model=MODEL,
            previous_response_id=final.id,
            input=[
                {"type": "function_call_output", "call_id": c.call_id, "output": RESULT}
                for c in calls
            ],
            tools=RESPONSE_TOOLS,
            max_output_tokens=4,
            stream=True,
        )
        answer_events = [e async for e in answered]
        kinds = {e.type for e in answer_events}
        assert "response.output_text.delta" in kinds
        assert "response.function_call_arguments.delta" not in kinds
        answer = answer_events[-1].response  # type: ignore[union-attr]
        assert answer.previous_response_id == final.id
        assert answer.output_text
        assert _function_calls(answer) == []

        single = await async_sdk.responses.create(
            model=MODEL, input=BOTH, tools=RESPONSE_TOOLS, parallel_tool_calls=False
        )
        assert [c.name for c in _function_calls(single)] == ["get_weather"]

    asyncio.run(main())


def test_responses_background_function_calls_polled_and_replayed(sdk: openai.OpenAI) -> None:
    started = sdk.responses.create(
        model=MODEL, input="Use get_weather for Paris.", tools=RESPONSE_TOOLS, background=True
    )
    assert started.status in ("queued", "in_progress")
    done = eventually(
        lambda: (
            (r := sdk.responses.retrieve(started.id)).status not in ("queued", "in_progress") and r
        ),
        what="the background response done",
    )
    assert done.status == "completed"
    (call,) = _function_calls(done)
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)

    events = list(sdk.responses.retrieve(started.id, stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1].response.output == done.output  # type: ignore[union-attr]
    tail = list(sdk.responses.retrieve(started.id, stream=True, starting_after=4))
    assert [e.model_dump(mode="json") for e in tail] == [
        e.model_dump(mode="json") for e in events[5:]
    ]


def test_responses_stateless_conversation_with_function_calls(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(
        model=MODEL, input="Use get_weather for Paris.", tools=RESPONSE_TOOLS, store=False
    )
    (call,) = _function_calls(first)
    conversation: list[Any] = [
        {"role": "user", "content": "Use get_weather for Paris."},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"t": 21}'},
    ]
    answer = sdk.responses.create(
        model=MODEL, input=conversation, tools=RESPONSE_TOOLS, store=False, max_output_tokens=4
    )
    assert _function_calls(answer) == []
    assert answer.output_text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "name": "f", "parameters": {"type": 3}}]},
            "tools[0].parameters",
        ),
        ({"tools": [{"type": "function", "name": "f", "nonsense": 1}]}, "tools[0].nonsense"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "store": False,
                "input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}],
            },
            "input[0].call_id",
        ),
        (
            {
                "store": False,
                "input": [
                    {"role": "user", "content": "Hi"},
                    {
                        "type": "function_call",
                        "call_id": "c1",
                        "name": "get_weather",
                        "arguments": '{"city": 1}',
                    },
                    {"type": "function_call_output", "call_id": "c1", "output": "x"},
                ],
            },
            "input[1].arguments",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]},
            "input[0].call_id",
        ),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input"),
    ],
)
def test_bad_response_tools_are_400s_naming_the_param(
    sdk: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    request = {"model": MODEL, "input": "Hi", "tools": RESPONSE_TOOLS, **body}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.post("/responses", body=request, cast_to=httpx.Response)
    error = refused.value.body
    assert isinstance(error, dict)
    assert str(error["param"]).startswith(param), error


def test_an_unknown_tool_in_tool_choice_is_named(async_sdk: openai.AsyncOpenAI) -> None:
    async def main() -> None:
        with pytest.raises(openai.BadRequestError) as refused:
            await async_sdk.responses.create(
                model=MODEL,
                input="Hi",
                tools=RESPONSE_TOOLS,
                tool_choice={"type": "function", "name": "get_stock_price"},
                stream=True,
            )
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["param"] == "tool_choice"
        assert "'get_stock_price' is not in tools" in error["message"]
        assert "'get_weather', 'get_time'" in error["message"]

    asyncio.run(main())
