from __future__ import annotations

import pytest

from parley.v1 import envelopes_pb2, types_pb2
from parley_worker.envelopes import (
    Outcome,
    done_chunk,
    finish_reason,
    generation_request,
    result_envelope,
)


def _request(**fields: object) -> envelopes_pb2.CompletionRequest:
    request = envelopes_pb2.CompletionRequest(
        schema_version=1,
        request_id="r1",
        chat_id="c1",
        user_id="u1",
        model="m",
        kind=envelopes_pb2.COMPLETION_KIND_SUMMARY,
        messages=[
            types_pb2.ChatMessage(role=types_pb2.ROLE_SYSTEM, content="Be brief."),
            types_pb2.ChatMessage(role=types_pb2.ROLE_USER, content="Hi"),
        ],
        user_message_ordinal=4,
        summary_through_ordinal=9,
        bot_id="b",
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def test_generation_request_maps_roles_and_sampling_defaults() -> None:
    request = _request()
    request.sampling.max_tokens = 12
    request.sampling.temperature = 0.0
    request.sampling.stop.append("\n")
    gen = generation_request(request)
    assert [(m.role, m.content) for m in gen.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert gen.sampling.max_tokens == 12
    assert gen.sampling.temperature == 0.0
    assert gen.sampling.top_p == 1.0
    assert gen.sampling.stop == ("\n",)
    assert gen.sampling.seed is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.ClearField("messages"), "no messages"),
        (lambda r: r.messages[0].__setattr__("role", 0), "role 0"),
        (lambda r: r.sampling.__setattr__("top_p", 0.0), "top_p"),
        (lambda r: r.sampling.__setattr__("temperature", -1.0), "temperature"),
    ],
)
def test_invalid_requests_raise_a_readable_value_error(mutate: object, message: str) -> None:
    request = _request()
    mutate(request)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        generation_request(request)


def test_result_echoes_the_request_and_caches_only_complete_answers() -> None:
    request = _request()
    request.cache_key.scope_key = "user:u1"
    ok = result_envelope(
        request,
        Outcome(types_pb2.FINISH_REASON_LENGTH, "text", 5, 7),
        worker_id="w",
        now_ms=123,
    )
    assert ok.kind == envelopes_pb2.COMPLETION_KIND_SUMMARY
    assert ok.summary_through_ordinal == 9
    assert ok.user_message_ordinal == 4
    assert (ok.chat_id, ok.user_id, ok.bot_id, ok.worker_id) == ("c1", "u1", "b", "w")
    assert (ok.usage.prompt_tokens, ok.usage.completion_tokens) == (5, 7)
    assert ok.HasField("cache_key")
    cancelled = result_envelope(
        request, Outcome(types_pb2.FINISH_REASON_CANCELLED, "te"), worker_id="w", now_ms=1
    )
    assert not cancelled.HasField("cache_key")
    failed = result_envelope(
        request, Outcome(types_pb2.FINISH_REASON_ERROR, error="boom"), worker_id="w", now_ms=1
    )
    assert failed.error == "boom"
    assert not failed.HasField("cache_key")


def test_done_chunk_carries_finish_usage_and_error() -> None:
    chunk = done_chunk("r", 3, Outcome(types_pb2.FINISH_REASON_ERROR, error="too long"))
    assert (chunk.seq, chunk.done, chunk.error) == (3, True, "too long")
    assert chunk.finish_reason == types_pb2.FINISH_REASON_ERROR


def test_unknown_engine_finish_reason_is_an_error() -> None:
    assert finish_reason("stop") == types_pb2.FINISH_REASON_STOP
    with pytest.raises(RuntimeError, match="unknown finish reason 'abort'"):
        finish_reason("abort")
