"""The Responses API driven by the official `openai` SDK (sync and async, streaming and not)
against the running platform (tiny random-weight model: plumbing only): create, stream,
retrieve, delete, background with polling, conversations continued with previous_response_id,
and streams resumed after event N, also on another replica after the first was killed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from parley_devstack.platform import Platform
from tests.conftest import eventually
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
MODEL = "parley-tiny"
FRESH: dict[str, Any] = {"no_cache": True}


def _key(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


def _sdk(url: str, user: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=_key(user), max_retries=0, timeout=120)


@pytest.fixture
def user(new_user: NewUser) -> httpx.Client:
    return new_user("responses-user")


@pytest.fixture
def sdk(user: httpx.Client, platform: Platform) -> openai.OpenAI:
    return _sdk(platform.gateway_url, user)


def _deltas(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def _comparable(event: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = event.model_dump(exclude={"response"})
    if hasattr(event, "response"):
        response = event.response
        dumped["response"] = (response.id, response.status, response.output_text, response.usage)
    return dumped


def test_create_retrieve_continue_delete(sdk: openai.OpenAI, user: httpx.Client) -> None:
    first = sdk.responses.create(
        model=MODEL,
        input="Tell me a story",
        instructions="You tell stories.",
        max_output_tokens=6,
        temperature=0,
        extra_body=FRESH,
    )
    assert first.object == "response"
    assert first.id.startswith("resp_")
    assert first.status == "incomplete"  # cut at max_output_tokens
    assert first.incomplete_details is not None
    assert first.incomplete_details.reason == "max_output_tokens"
    assert first.output_text
    assert first.usage is not None
    assert first.usage.output_tokens == 6
    assert first.instructions == "You tell stories."

    stored = eventually(
        lambda: (r := sdk.responses.retrieve(first.id)).status != "in_progress" and r,
        what="the stored response",
    )
    assert stored.output_text == first.output_text
    assert stored.usage is not None
    assert stored.usage.output_tokens == 6
    # What it was asked is kept with it.
    assert stored.instructions == "You tell stories."
    assert stored.temperature == 0
    assert stored.max_output_tokens == 6

    second = sdk.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "And then?"}],
        previous_response_id=first.id,
        max_output_tokens=4,
        temperature=0,
        extra_body=FRESH,
    )
    assert second.previous_response_id == first.id
    assert sdk.responses.retrieve(second.id).previous_response_id == first.id
    chat_id = second.model_dump()["parley_chat_id"]
    assert chat_id == first.model_dump()["parley_chat_id"]
    # The conversation is a Parley chat, continued server-side.
    chat = eventually(
        lambda: (c := user.get(f"/chat/{chat_id}").json()) and len(c["messages"]) == 4 and c,
        what="both turns stored in the chat",
    )
    assert [m["content"] for m in chat["messages"]][::2] == ["Tell me a story", "And then?"]
    assert chat["messages"][3]["content"] == second.output_text

    sdk.responses.delete(second.id)
    for gone in (first.id, second.id):
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(gone)
    with pytest.raises(openai.NotFoundError) as continued:
        sdk.responses.create(model=MODEL, input="more", previous_response_id=first.id)
    assert continued.value.param == "previous_response_id"  # type: ignore[attr-defined]


def test_stream_then_resume_after_n(sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(
        model=MODEL, input="Go", max_output_tokens=40, temperature=0, stream=True, extra_body=FRESH
    )
    events = list(stream)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    assert [e.type for e in events[:4]] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    final = events[-1]
    assert final.type == "response.incomplete"
    text = final.response.output_text
    assert _deltas(events) == text
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text

    for after in (2, 5, len(events) - 3):
        resumed = list(sdk.responses.retrieve(final.response.id, stream=True, starting_after=after))
        assert [e.sequence_number for e in resumed] == numbers[after + 1 :]
        # The same events; a response snapshot read back lacks only the request's settings
        # (temperature, max_output_tokens), which are not stored.
        assert [_comparable(e) for e in resumed] == [_comparable(e) for e in events[after + 1 :]]


def test_store_false_is_not_kept(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model=MODEL,
        input=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
        ],
        store=False,
        max_output_tokens=3,
        extra_body=FRESH,
    )
    assert response.output_text
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


def test_background_then_poll_and_stream(sdk: openai.OpenAI) -> None:
    started = sdk.responses.create(
        model=MODEL,
        input="A long tale",
        background=True,
        max_output_tokens=300,
        temperature=0,
        extra_body=FRESH,
    )
    assert started.status in ("queued", "in_progress")
    assert started.background is True
    events = list(sdk.responses.retrieve(started.id, stream=True))
    assert events[-1].type == "response.incomplete"
    polled = eventually(
        lambda: (
            (r := sdk.responses.retrieve(started.id)).status not in ("queued", "in_progress") and r
        ),
        what="the background response to finish",
    )
    assert polled.output_text == events[-1].response.output_text == _deltas(events)
    assert polled.usage is not None
    assert polled.usage.output_tokens == 300


async def test_async_sdk(user: httpx.Client, platform: Platform) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{platform.gateway_url}/v1", api_key=_key(user), max_retries=0, timeout=120
    ) as client:
        response = await client.responses.create(
            model=MODEL, input="Hi", max_output_tokens=4, extra_body=FRESH
        )
        stream = await client.responses.create(
            model=MODEL, input="Hi", max_output_tokens=4, stream=True, extra_body=FRESH
        )
        events = [event async for event in stream]
        retrieved = await client.responses.retrieve(response.id)
    assert response.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert retrieved.id == response.id


def test_another_users_response_is_404(
    sdk: openai.OpenAI, new_user: NewUser, platform: Platform
) -> None:
    mine = sdk.responses.create(model=MODEL, input="Mine", max_output_tokens=2, extra_body=FRESH)
    other = _sdk(platform.gateway_url, new_user("responses-intruder"))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        list(other.responses.retrieve(mine.id, stream=True, starting_after=0))
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as continued:
        other.responses.create(model=MODEL, input="Theirs", previous_response_id=mine.id)
    assert continued.value.param == "previous_response_id"  # type: ignore[attr-defined]
    assert sdk.responses.retrieve(mine.id).id == mine.id  # untouched


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_" + "0" * 32}, "previous_response_id"),
        ({"input": "x", "previous_response_id": "nonsense"}, "previous_response_id"),
    ],
)
def test_unknown_previous_response_is_404(
    user: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = user.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": 42}, "input"),
        ({"input": []}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input",
        ),
        ({"input": [{"role": "assistant", "content": "last"}]}, "input"),
        ({"input": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "input"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "background": True, "store": False}, "background"),
        ({"input": "x", "text": {"format": {"type": "json_object"}}}, "text.format.type"),
        ({"input": "x", "max_output_tokens": 10**6}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 4000}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 4000, "store": False}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": "x", "unknown": 1}, "unknown"),
    ],
)
def test_bad_responses_are_400_naming_the_param(
    user: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = user.post("/v1/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(error["param"]).startswith(param), error


def test_resume_on_another_replica_after_the_first_was_killed(
    platform: Platform, user: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with extra_gateways(platform, tmp_path_factory.mktemp("responses"), 1, {}) as (gateway,):
        accepting = _sdk(gateway_url(gateway), user)
        seen: list[Any] = []
        stream = accepting.responses.create(
            model=MODEL,
            input="A long tale",
            max_output_tokens=1500,
            temperature=0,
            stream=True,
            extra_body=FRESH,
        )
        with pytest.raises((httpx.TransportError, openai.APIConnectionError)):  # noqa: PT012
            for event in stream:
                seen.append(event)
                if event.type == "response.output_text.delta" and len(seen) >= 6:
                    gateway.kill()  # mid-generation, with the stream open
        assert len(seen) >= 6
        response_id = seen[0].response.id
        last = seen[-1].sequence_number
        resumed = list(
            _sdk(platform.gateway_url, user).responses.retrieve(
                response_id, stream=True, starting_after=last
            )
        )
        assert [e.sequence_number for e in resumed] == list(
            range(last + 1, last + 1 + len(resumed))
        )
        final = resumed[-1]
        assert final.type == "response.incomplete"
        assert final.response.usage.output_tokens == 1500
        assert _deltas(seen) + _deltas(resumed) == final.response.output_text


def test_an_image_part_is_refused_naming_it(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(
            model=MODEL,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": "https://example.com/a.png"},
                    ],
                }
            ],
        )
    assert "input[0].content[1]" in refused.value.message
    assert "input_image" in refused.value.message


def test_cancel_a_background_response(sdk: openai.OpenAI) -> None:
    started = sdk.responses.create(
        model=MODEL,
        input="A very long tale",
        background=True,
        max_output_tokens=1800,
        temperature=0,
        extra_body=FRESH,
    )
    eventually(
        lambda: sdk.responses.retrieve(started.id).status == "in_progress", what="in progress"
    )
    sdk.responses.cancel(started.id)
    final = eventually(
        lambda: (
            (r := sdk.responses.retrieve(started.id)).status not in ("queued", "in_progress") and r
        ),
        timeout=60,
        what="the cancelled response",
    )
    assert final.status == "cancelled"
    assert final.usage is not None
    assert final.usage.output_tokens < 1800


@pytest.mark.parametrize("store", [True, False])
def test_instructions_reach_the_model(sdk: openai.OpenAI, store: bool) -> None:
    def input_tokens(**extra: Any) -> int:
        response = sdk.responses.create(
            model=MODEL, input="Hi", max_output_tokens=1, store=store, extra_body=FRESH, **extra
        )
        assert response.usage is not None
        return response.usage.input_tokens

    plain = input_tokens()
    # The worker's own count of the prompt it was given: the instructions replaced the bot's
    # system prompt (about ten tokens) with about a hundred.
    assert input_tokens(instructions="You are a pirate who loves the sea. " * 12) > plain + 50
