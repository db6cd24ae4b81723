"""The Responses event stream as a function of what is observed: the live stream and one
rebuilt from the stored answer number the same events alike, so a resume continues exactly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest

from parley_gateway.responses import (
    Observation,
    Outcome,
    ResponseMeta,
    TextSoFar,
    completion_id_of,
    event_stream,
    words,
)
from parley_gateway.schemas import TurnToolCall

META = ResponseMeta(response_id="resp_" + "a" * 32, model="m", created_at=1)
ANSWER = "Hello there,  world!\nHow are you? "


def test_words_of_a_growing_text_are_those_of_the_final_text() -> None:
    final = words(ANSWER, final=True)
    assert "".join(final) == ANSWER
    assert final[:3] == ["Hello", " there,", "  world!"]
    for cut in range(len(ANSWER) + 1):
        partial = words(ANSWER[:cut], final=False)
        assert partial == final[: len(partial)], cut
        assert len("".join(partial)) <= cut


def test_words_of_empty_and_blank_texts() -> None:
    assert words("", final=True) == []
    assert words("  ", final=True) == ["  "]
    assert words("word", final=False) == []


def test_response_ids() -> None:
    assert completion_id_of("resp_" + "0123456789abcdef" * 2) == "0123456789abcdef" * 2
    for bad in ("", "resp_", "resp_xyz", "0123456789abcdef" * 2, "resp_" + "A" * 32):
        assert completion_id_of(bad) is None


async def _observed(items: Sequence[Observation]) -> AsyncIterator[Observation]:
    for item in items:
        yield item


async def _events(items: Sequence[Observation], after: int = -1) -> list[dict[str, object]]:
    out = []
    async for frame in event_stream(META, _observed(items), starting_after=after):
        block = frame.decode()
        if block.startswith(":"):
            continue
        data = next(line for line in block.splitlines() if line.startswith("data: "))
        out.append(json.loads(data.removeprefix("data: ")))
    return out


DONE = Outcome("completed", text=ANSWER, input_tokens=5, output_tokens=9)
LIVE: list[Observation] = [
    TextSoFar(ANSWER[:3]),
    TextSoFar(ANSWER[:14]),
    None,
    TextSoFar(ANSWER[:27]),
    DONE,
]


async def test_live_and_rebuilt_streams_are_the_same_events() -> None:
    live = await _events(LIVE)
    rebuilt = await _events([None, DONE])
    assert live == rebuilt
    assert [e["sequence_number"] for e in live] == list(range(len(live)))
    types = [e["type"] for e in live]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e["delta"] for e in live if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == ANSWER  # type: ignore[arg-type]
    completed = live[-1]["response"]
    assert completed["status"] == "completed"  # type: ignore[index]
    assert completed["output"][0]["content"][0]["text"] == ANSWER  # type: ignore[index]
    assert completed["usage"]["total_tokens"] == 14  # type: ignore[index]


@pytest.mark.parametrize("after", [-1, 0, 3, 5, 9, 40])
async def test_a_resume_sends_exactly_the_events_after_n(after: int) -> None:
    whole = await _events(LIVE)
    resumed = await _events([DONE], after)
    assert resumed == [e for e in whole if int(e["sequence_number"]) > after]  # type: ignore[call-overload]


async def test_an_answer_that_started_over_differently_ends_with_an_error() -> None:
    events = await _events([TextSoFar("One two "), TextSoFar("Three "), DONE])
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "answer_restarted"


async def test_a_failed_response_ends_with_response_failed() -> None:
    from parley_gateway.response_schemas import ResponseError

    failed = Outcome("failed", error=ResponseError(code="generation_failed", message="boom"))
    events = await _events([TextSoFar("Some "), failed])
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "generation_failed"  # type: ignore[index]


async def test_a_cut_answer_is_incomplete() -> None:
    events = await _events([Outcome("incomplete", text="cut", input_tokens=1, output_tokens=1)])
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}  # type: ignore[index]


CALLS = (
    TurnToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}'),
    TurnToolCall(id="call_2", name="get_time", arguments='{"city": "Oslo"}'),
)
PER_CALL = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]


async def test_an_answer_of_function_calls_streams_their_items_only() -> None:
    events = await _events([None, Outcome("completed", tool_calls=CALLS, output_tokens=9)])
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        *PER_CALL * 2,
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1]
    assert added[0]["item"] == {
        "type": "function_call",
        "id": META.function_call_item_id(0),
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": "",
        "status": "in_progress",
    }
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["item_id"], e["arguments"]) for e in done] == [
        (META.function_call_item_id(i), c.arguments) for i, c in enumerate(CALLS)
    ]
    output = events[-1]["response"]["output"]  # type: ignore[index]
    assert [item["type"] for item in output] == ["function_call", "function_call"]
    assert [item["call_id"] for item in output] == ["call_1", "call_2"]
    assert output[0]["status"] == "completed"


async def test_text_before_function_calls_is_the_first_item() -> None:
    text = "Let me look. "
    outcome = Outcome("completed", text=text, tool_calls=CALLS[:1], output_tokens=5)
    live = await _events([TextSoFar(text), outcome])
    assert live == await _events([outcome])
    types = [e["type"] for e in live]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-5:] == [*PER_CALL, "response.completed"]
    calls = [e for e in live if e["type"] == "response.function_call_arguments.delta"]
    assert [e["output_index"] for e in calls] == [1]
    output = live[-1]["response"]["output"]  # type: ignore[index]
    assert [item["type"] for item in output] == ["message", "function_call"]


@pytest.mark.parametrize("after", [1, 2, 4, 6, 9, 10])
async def test_a_resume_inside_function_calls_sends_exactly_the_events_after_n(
    after: int,
) -> None:
    outcome = Outcome("completed", tool_calls=CALLS, output_tokens=9)
    whole = await _events([outcome])
    resumed = await _events([None, outcome], after)
    assert resumed == [e for e in whole if int(e["sequence_number"]) > after]  # type: ignore[call-overload]
