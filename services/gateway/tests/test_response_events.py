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
