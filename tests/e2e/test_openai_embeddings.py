"""`/v1/embeddings` and `/v1/completions` driven by the official `openai` SDK (sync and async,
streaming and not) against the running platform (tiny random-weight model: plumbing only)."""

from __future__ import annotations

import base64
import math
from array import array
from collections.abc import Callable

import httpx
import openai
import pytest

from parley_devstack.platform import Platform

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
MODEL = "parley-tiny"
EMBEDDING_MODEL = "all-minilm-l6-v2"


def _key(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


@pytest.fixture
def user(new_user: NewUser) -> httpx.Client:
    return new_user("embeddings-user")


@pytest.fixture
def sdk(user: httpx.Client, platform: Platform) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{platform.gateway_url}/v1", api_key=_key(user), max_retries=0, timeout=60
    )


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_of_texts_carry_meaning(sdk: openai.OpenAI) -> None:
    texts = [
        "How do I reverse a list in Python?",
        "What's the way to reverse a Python list?",
        "How do I make pancakes?",
    ]
    result = sdk.embeddings.create(model=EMBEDDING_MODEL, input=texts, encoding_format="float")
    assert result.model == EMBEDDING_MODEL
    assert [e.index for e in result.data] == [0, 1, 2]
    vectors = [e.embedding for e in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert math.isclose(_dot(vectors[0], vectors[0]), 1.0, abs_tol=1e-4)
    assert _dot(vectors[0], vectors[1]) > 0.8 > 0.3 > _dot(vectors[0], vectors[2])
    # The tokenizer's count, special tokens included: more than one token a text.
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 3


def test_base64_is_the_same_vector(sdk: openai.OpenAI, user: httpx.Client) -> None:
    text = "The same text, two encodings"
    floats = sdk.embeddings.create(model=EMBEDDING_MODEL, input=text, encoding_format="float")
    raw = user.post(
        "/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": text, "encoding_format": "base64"},
    )
    assert raw.status_code == 200, raw.text
    decoded = array("f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(floats.data[0].embedding, abs=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    default = sdk.embeddings.create(model=EMBEDDING_MODEL, input=text)
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


async def test_async_sdk_embeds(user: httpx.Client, platform: Platform) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{platform.gateway_url}/v1", api_key=_key(user), max_retries=0, timeout=60
    ) as client:
        result = await client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
    assert len(result.data) == 1
    assert len(result.data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": EMBEDDING_MODEL, "input": [1, 2, 3]}, "input"),
        ({"model": EMBEDDING_MODEL, "input": [[1, 2]]}, "input"),
        ({"model": EMBEDDING_MODEL, "input": []}, "input"),
        ({"model": EMBEDDING_MODEL, "input": ["fine", "  "]}, "input[1]"),
        ({"model": EMBEDDING_MODEL, "input": "word " * 400}, "input[0]"),
        ({"model": EMBEDDING_MODEL, "input": "x", "dimensions": 64}, "dimensions"),
        ({"model": EMBEDDING_MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x"}, "model"),
    ],
)
def test_bad_embedding_requests_are_400_naming_the_param(
    user: httpx.Client, body: dict[str, object], param: str
) -> None:
    response = user.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_unknown_embedding_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.code == "model_not_found"
    assert EMBEDDING_MODEL in missing.value.message


def test_legacy_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=5,
        temperature=0,
        extra_body={"no_cache": True},
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.text
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.usage.prompt_tokens > 0


def test_legacy_completion_streams(sdk: openai.OpenAI) -> None:
    stream = sdk.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"no_cache": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text
    assert finishes[-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    whole = sdk.completions.create(
        model=MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0,
        extra_body={"no_cache": True},
    )
    assert whole.choices[0].text == text  # greedy: the same answer streamed or not


async def test_legacy_completion_async(user: httpx.Client, platform: Platform) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{platform.gateway_url}/v1", api_key=_key(user), max_retries=0, timeout=60
    ) as client:
        completion = await client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)
        stream = await client.completions.create(
            model=MODEL, prompt="Hi", max_tokens=3, stream=True
        )
        texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert texts


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 2}, "logprobs"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"max_tokens": 10**6}, "max_tokens"),
    ],
)
def test_bad_legacy_completions_are_400(
    user: httpx.Client, extra: dict[str, object], param: str
) -> None:
    response = user.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_unknown_completion_model_is_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi")
