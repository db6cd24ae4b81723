from __future__ import annotations

from collections.abc import Sequence

import pytest

from parley_cache.keying import (
    DEFAULT_CONTEXT_WINDOW,
    CacheKey,
    InvalidKeyError,
    Role,
    Turn,
    normalize_text,
)


def user(text: str) -> Turn:
    return Turn(Role.USER, text)


def assistant(text: str) -> Turn:
    return Turn(Role.ASSISTANT, text)


def key(
    turns: Sequence[Turn],
    *,
    bot_id: str = "support",
    model: str = "llama-3.1-8b",
    system_prompt: str = "You are a helpful assistant.",
    window: int = DEFAULT_CONTEXT_WINDOW,
) -> CacheKey:
    return CacheKey.build(
        bot_id=bot_id, model=model, system_prompt=system_prompt, turns=turns, window=window
    )


RUST = [user("I'm learning Rust."), assistant("Great choice!"), user("How do I read a file?")]
PYTHON = [user("I'm learning Python."), assistant("Great choice!"), user("How do I read a file?")]


def test_the_question_is_the_last_user_turn_and_the_context_the_turns_before() -> None:
    k = key(RUST)
    assert k.question == k.question_text == "How do I read a file?"
    assert k.context == (user("I'm learning Rust."), assistant("Great choice!"))
    assert k.has_context
    assert k.context_shape == "ua"


def test_same_last_message_after_different_turns_gives_different_context_fingerprints() -> None:
    rust, python = key(RUST), key(PYTHON)
    assert rust.question == python.question
    assert rust.scope_fingerprint == python.scope_fingerprint
    assert rust.context_fingerprint != python.context_fingerprint


def test_an_assistant_turn_that_differs_changes_the_context_fingerprint() -> None:
    seven = key([user("Pick a number."), assistant("7"), user("Double it.")])
    four = key([user("Pick a number."), assistant("4"), user("Double it.")])
    assert seven.context_fingerprint != four.context_fingerprint


def test_fingerprints_ignore_case_unicode_form_and_whitespace() -> None:
    a = key(RUST, system_prompt="You are  a helpful\nassistant.", model="Llama-3.1-8B")
    b = key(
        [user("i'm   learning rust."), assistant("GREAT choice!"), user("How do I read a file?")],
        system_prompt="you are a helpful assistant.",
        model="llama-3.1-8b",
    )
    assert a.scope_fingerprint == b.scope_fingerprint
    assert a.context_fingerprint == b.context_fingerprint
    assert normalize_text("Ｆｕｌｌ\u00a0width") == "full width"


@pytest.mark.parametrize(
    ("bot_id", "model", "system_prompt"),
    [
        ("sales", "llama-3.1-8b", "You are a helpful assistant."),
        ("support", "qwen2.5-0.5b", "You are a helpful assistant."),
        ("support", "llama-3.1-8b", "Answer in French."),
    ],
)
def test_bot_model_and_system_prompt_are_part_of_the_scope(
    bot_id: str, model: str, system_prompt: str
) -> None:
    base = key([user("Hello")])
    other = key([user("Hello")], bot_id=bot_id, model=model, system_prompt=system_prompt)
    assert base.scope_fingerprint != other.scope_fingerprint
    assert base.context_fingerprint != other.context_fingerprint


def test_a_first_question_has_no_context() -> None:
    k = key([user("What is the capital of France?")])
    assert not k.has_context
    assert k.context_text == ""
    assert k.context_shape == ""


def test_the_window_keeps_the_recent_turns_and_a_hash_of_the_earlier_ones() -> None:
    turns = [user("a"), assistant("b"), user("c"), assistant("d"), user("question")]
    k = key(turns, window=2)
    assert k.context == (user("c"), assistant("d"))
    # What lies before the window still tells two conversations apart ("my name is …" long
    # before the question), by its hash.
    other = key([user("x"), assistant("y"), user("c"), assistant("d"), user("question")], window=2)
    assert k.earlier_fingerprint != other.earlier_fingerprint
    assert k.context_fingerprint != other.context_fingerprint
    same = key([user("A"), assistant("b "), user("c"), assistant("d"), user("question")], window=2)
    assert k.context_fingerprint == same.context_fingerprint
    assert key(turns, window=0).context == ()
    assert key([user("question")]).earlier_fingerprint == ""


def test_context_text_puts_the_newest_turn_first_and_trims_long_turns() -> None:
    k = key([user("old question"), assistant("x" * 1000), user("new question")])
    first, second = k.context_text.split("\n")
    assert first == "assistant: " + "x" * 300
    assert second == "user: old question"


def test_payload_round_trips() -> None:
    k = key(RUST)
    payload = k.payload()
    assert payload["scope_fingerprint"] == k.scope_fingerprint
    assert payload["context_fingerprint"] == k.context_fingerprint
    assert payload["context_shape"] == "ua"
    again = CacheKey.from_payload(payload)
    assert again == k
    assert again.context_fingerprint == k.context_fingerprint


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ([], "no turns"),
        ([user("Hi"), assistant("Hello!")], "from 'assistant'"),
        ([user("   ")], "empty"),
    ],
)
def test_build_refuses_what_is_not_a_question(turns: list[Turn], message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message):
        key(turns)


def test_unknown_roles_are_refused() -> None:
    with pytest.raises(InvalidKeyError, match="unknown role 'system'"):
        Turn("system", "You are a pirate.")  # type: ignore[arg-type]


def test_from_payload_refuses_a_foreign_payload() -> None:
    with pytest.raises(InvalidKeyError, match="not a cache entry payload"):
        CacheKey.from_payload({"question": "Hi"})
