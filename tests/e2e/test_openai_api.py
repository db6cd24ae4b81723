"""The OpenAI-compatible API driven by the official `openai` SDK (sync and async, streaming and
not) against the running platform: answers, chunks, usage, sampling parameters that reach the
worker, errors in OpenAI's shape, and calls bound to a stored chat."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from transformers import AutoTokenizer

from parley_devstack.platform import Platform
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
MODEL = "parley-tiny"
NO_CACHE: dict[str, Any] = {"no_cache": True}


def _key(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def user(new_user: NewUser) -> httpx.Client:
    return new_user("openai-user")


@pytest.fixture
def sdk(user: httpx.Client, platform: Platform) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform.gateway_url}/v1", api_key=_key(user), max_retries=0, timeout=60
    )


@pytest.fixture
def prompt_tokens(tiny_model: Path) -> Callable[[list[Any]], int]:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))

    def count(messages: list[Any]) -> int:
        ids: Any = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True
        )
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    return count


def test_models(sdk: openai.OpenAI) -> None:
    models = sdk.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].owned_by == "parley"
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


def test_completion_sync(
    sdk: openai.OpenAI, user: httpx.Client, prompt_tokens: Callable[[list[Any]], int]
) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    completion = sdk.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=7, temperature=0, extra_body=NO_CACHE
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7
    # The client's messages are the whole context, counted as the worker's chat template does.
    assert completion.usage.prompt_tokens == prompt_tokens(messages)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 7

    # max_completion_tokens is the newer name of the same budget.
    newer = sdk.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=3, temperature=0, extra_body=NO_CACHE
    )
    assert newer.usage is not None
    assert newer.usage.completion_tokens == 3
    # Greedy decoding: the shorter answer is the start of the longer one.
    assert choice.message.content.startswith(newer.choices[0].message.content or "?")

    # A stateless call stores no chat.
    assert user.get("/chats").json()["chats"] == []


def test_stream_sync_with_usage(sdk: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Tell me about rivers."}
    ]
    whole = sdk.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, extra_body=NO_CACHE
    )
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_CACHE,
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert all(f is None for f in finishes[:-1])
    # include_usage: a last chunk without choices carries the usage; the others have none.
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert whole.usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_field(platform: Platform, user: httpx.Client) -> None:
    with user.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "stream": True,
            "no_cache": True,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert all('"usage"' not in line for line in lines)


def test_sampling_parameters_reach_the_worker(sdk: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write something about mountains."}
    ]

    def ask(**params: Any) -> ChatCompletion:
        completion: ChatCompletion = sdk.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=30, extra_body=NO_CACHE, **params
        )
        return completion

    greedy = ask(temperature=0).choices[0].message.content or ""
    assert ask(temperature=0).choices[0].message.content == greedy
    # top_p 0 leaves only the most likely token: greedy, whatever the temperature.
    assert ask(temperature=1.5, top_p=0).choices[0].message.content == greedy
    # The same seed, the same sample; other seeds, other samples.
    seeded = ask(temperature=1.5, seed=7).choices[0].message.content
    assert ask(temperature=1.5, seed=7).choices[0].message.content == seeded
    others = {ask(temperature=1.5, seed=s).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {seeded}) > 1
    # A stop string taken from the greedy answer cuts it right there.
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 4]
    assert stop.strip()
    cut = ask(temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)]


async def test_async_client(user: httpx.Client, platform: Platform) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{platform.gateway_url}/v1", api_key=_key(user), max_retries=0, timeout=60
    )
    async with client:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "Name three birds."}
        ]
        whole = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=9, temperature=0, extra_body=NO_CACHE
        )
        assert whole.choices[0].finish_reason == "length"
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=9,
            temperature=0,
            stream=True,
            extra_body=NO_CACHE,
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert len(parts) > 1
        assert "".join(parts) == whole.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as refused:
            # Above MAX_CHOICES (4 by default).
            await client.chat.completions.create(model=MODEL, messages=messages, n=5)
        assert refused.value.param == "n"


def _openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def test_errors_in_openai_shape(platform: Platform, user: httpx.Client) -> None:
    url = "/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]

    missing = _openai_error(user.post(url, json={"model": MODEL}), 400)
    assert (missing["type"], missing["param"], missing["code"]) == (
        "invalid_request_error",
        "messages",
        "missing_required_parameter",
    )
    unknown = _openai_error(user.post(url, json={"model": MODEL, "messages": hi, "foo": 1}), 400)
    assert (unknown["param"], unknown["code"]) == ("foo", "unknown_parameter")
    hot = _openai_error(
        user.post(url, json={"model": MODEL, "messages": hi, "temperature": 3}), 400
    )
    assert hot["param"] == "temperature"
    budget = _openai_error(
        user.post(url, json={"model": MODEL, "messages": hi, "max_tokens": 100_000}), 400
    )
    assert budget["param"] == "max_tokens"
    options = _openai_error(
        user.post(
            url, json={"model": MODEL, "messages": hi, "stream_options": {"include_usage": True}}
        ),
        400,
    )
    assert options["param"] == "stream_options"
    tool = _openai_error(
        user.post(url, json={"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}), 400
    )
    assert tool["param"] == "messages[0].tool_call_id"
    bad_json = _openai_error(
        user.post(url, content=b"{", headers={"Content-Type": "application/json"}), 400
    )
    assert bad_json["code"] == "invalid_json"
    model = _openai_error(user.post(url, json={"model": "gpt-4o", "messages": hi}), 404)
    assert (model["param"], model["code"]) == ("model", "model_not_found")
    # ~12k tokens do not fit the tiny model's 2048-token window.
    long = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 1100}]
    context = _openai_error(user.post(url, json={"model": MODEL, "messages": long}), 400)
    assert context["code"] == "context_length_exceeded"
    too_long = _openai_error(
        user.post(
            url, json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 40_000}]}
        ),
        413,
    )
    assert too_long["code"] == "message_too_large"
    huge = _openai_error(
        user.post(
            url, json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
        ),
        413,
    )
    assert huge["code"] == "request_too_large"

    anonymous = _openai_error(httpx.get(f"{platform.gateway_url}/v1/models"), 401)
    assert anonymous["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as bad_key:
        openai.OpenAI(
            base_url=f"{platform.gateway_url}/v1", api_key="pk-not-a-key", max_retries=0
        ).models.list()
    assert bad_key.value.status_code == 401
    assert bad_key.value.code == "invalid_api_key"
    admin = _openai_error(
        httpx.get(
            f"{platform.gateway_url}/v1/models",
            headers={"Authorization": f"Bearer {platform.admin_api_key}"},
        ),
        403,
    )
    assert admin["type"] == "invalid_request_error"
    # The chat API keeps its own shape.
    rest = user.post("/chat", json={})
    assert rest.status_code == 422
    assert set(rest.json()["error"]) >= {"type", "message"}


def test_bound_to_a_stored_chat(
    sdk: openai.OpenAI,
    user: httpx.Client,
    new_user: NewUser,
    prompt_tokens: Callable[[list[Any]], int],
) -> None:
    first = user.post("/chat", json={"message": "Remember the word kiwi.", "max_tokens": 5})
    assert first.status_code == 200, first.text
    chat_id = first.json()["chat_id"]
    answer1 = first.json()["answer"]["content"]
    eventually(lambda: len(user.get(f"/chat/{chat_id}").json()["messages"]) == 2, what="answer")

    # Only the last message counts: the chat's stored history is the context.
    bound = sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "ignored, the chat has its own history"},
            {"role": "user", "content": "What was the word?"},
        ],
        max_tokens=4,
        extra_body={"chat_id": chat_id, "no_cache": True},
    )
    assert (bound.model_extra or {})["parley"]["chat_id"] == chat_id
    assert bound.usage is not None
    history = [
        {"role": "system", "content": "You are a helpful AI assistant named Parley."},
        {"role": "user", "content": "Remember the word kiwi."},
        {"role": "assistant", "content": answer1},
        {"role": "user", "content": "What was the word?"},
    ]
    assert bound.usage.prompt_tokens == prompt_tokens(history)

    # The same through the header, streamed.
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Spell it."}],
        max_tokens=4,
        stream=True,
        extra_headers={"X-Parley-Chat-Id": chat_id},
        extra_body=NO_CACHE,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def stored() -> list[dict[str, Any]] | None:
        messages: list[dict[str, Any]] = user.get(f"/chat/{chat_id}").json()["messages"]
        return messages if len(messages) == 6 else None

    messages = eventually(stored, what="six stored messages")
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "Remember the word kiwi.",
        "What was the word?",
        "Spell it.",
    ]
    assert messages[3]["content"] == bound.choices[0].message.content
    assert messages[5]["content"] == streamed

    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"chat_id": "f" * 32},
        )
    with pytest.raises(openai.BadRequestError) as last_not_user:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "assistant", "content": "x"}],
            extra_body={"chat_id": chat_id},
        )
    assert last_not_user.value.param == "messages"


def test_a_cache_hit_says_its_score_and_reason(user: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Which planet is called the red planet?"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    first = user.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    assert "X-Parley-Cache-Score" not in first.headers

    def hit() -> httpx.Response | None:
        again = user.post("/v1/chat/completions", json=body)
        return again if again.json()["parley"]["cached"] else None

    served = eventually(hit, what="the answer served from the cache")
    assert float(served.headers["X-Parley-Cache-Score"]) == 1.0
    assert served.headers["X-Parley-Cache-Reason"].startswith("verifier 1.000 >=")
    assert served.json()["parley"]["cache_reason"] == served.headers["X-Parley-Cache-Reason"]
    # Asked for variety, the same question is generated again.
    hot = user.post("/v1/chat/completions", json={**body, "temperature": 1.0})
    assert hot.status_code == 200, hot.text
    assert hot.json()["parley"]["cached"] is False
