"""Multi-turn lookups against the real Qdrant: the same last message in another conversation is
another question."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from parley.v1 import types_pb2

if TYPE_CHECKING:
    from conftest import CacheFactory, CacheService

pytestmark = pytest.mark.integration

RUST = ("I write Rust.", "Great, Rust is a fine choice!")
PYTHON = ("I write Python.", "Great, Python is a fine choice!")
RUST_REWORDED = ("I'm programming in Rust.", "Great, Rust is a fine choice!")
FOLLOW_UP = "How do I read a file?"
SEMANTIC = {"context_mode": types_pb2.CACHE_CONTEXT_MODE_SEMANTIC}


async def test_same_last_message_after_different_turns_gets_no_shared_answer(
    cache: CacheService,
) -> None:
    await cache.ask("alice", *RUST, FOLLOW_UP, answer="Use std::fs::read_to_string.")
    for turns in (PYTHON, ("What is a file descriptor?", "A small integer naming an open file.")):
        other = await cache.lookup("alice", *turns, FOLLOW_UP)
        assert not other.hit, other.answer
    # Nor the question alone, without any earlier turn, nor under another system prompt.
    assert not (await cache.lookup("alice", FOLLOW_UP)).hit
    assert not (await cache.lookup("alice", *RUST, FOLLOW_UP, system="You are a pirate.")).hit
    same = await cache.lookup("alice", *RUST, FOLLOW_UP)
    assert same.hit
    assert same.answer == "Use std::fs::read_to_string."


async def test_each_context_keeps_its_own_answer(cache: CacheService) -> None:
    await cache.ask("alice", *RUST, FOLLOW_UP, answer="Rust: std::fs::read_to_string.")
    await cache.ask("alice", *PYTHON, FOLLOW_UP, answer="Python: open(path).read().")
    for turns, answer in ((RUST, "Rust"), (PYTHON, "Python")):
        for mode in ({}, SEMANTIC):
            found = await cache.lookup("alice", *turns, FOLLOW_UP, **mode)
            assert found.hit, mode
            assert found.answer.startswith(answer), (mode, found.answer)


async def test_semantic_mode_reuses_answers_across_reworded_conversations(
    cache: CacheService,
) -> None:
    stored = await cache.lookup("alice", *RUST, FOLLOW_UP, **SEMANTIC)
    assert len(stored.key.context_vector) == 384  # stored with its context vector
    await cache.answer(stored, "Use std::fs::read_to_string.", user_id="alice")

    reworded = await cache.lookup("alice", *RUST_REWORDED, FOLLOW_UP, **SEMANTIC)
    assert reworded.hit
    assert reworded.answer == "Use std::fs::read_to_string."
    # The exact mode, the default, wants the very same turns.
    assert not (await cache.lookup("alice", *RUST_REWORDED, FOLLOW_UP)).hit
    # Semantic is still not loose: another language, or one turn fewer, is another question.
    python = await cache.lookup("alice", *PYTHON, FOLLOW_UP, **SEMANTIC)
    assert not python.hit
    assert not (await cache.lookup("alice", FOLLOW_UP, **SEMANTIC)).hit


async def test_semantic_mode_finds_the_right_context_among_many(cache: CacheService) -> None:
    """A follow-up asked after many conversations: the matching one must still be found, even
    though every stored question is identical (the question search alone cannot rank them)."""
    languages = ["Go", "Java", "Kotlin", "Swift", "Ruby", "Haskell", "Elixir", "Scala", "Perl"]
    for language in languages:
        await cache.ask(
            "alice",
            f"I write {language}.",
            f"Great, {language} is a fine choice!",
            FOLLOW_UP,
            answer=f"In {language}: ...",
            **SEMANTIC,
        )
    await cache.ask("alice", *RUST, FOLLOW_UP, answer="In Rust: ...", **SEMANTIC)
    found = await cache.lookup("alice", *RUST_REWORDED, FOLLOW_UP, **SEMANTIC)
    assert found.hit
    assert found.answer == "In Rust: ..."


async def test_the_services_default_mode_applies_when_a_lookup_names_none(
    make_cache: CacheFactory,
) -> None:
    cache = await make_cache(cache_context_mode="semantic")
    await cache.ask("alice", *RUST, FOLLOW_UP, answer="Use std::fs::read_to_string.")
    assert (await cache.lookup("alice", *RUST_REWORDED, FOLLOW_UP)).hit
    exact = {"context_mode": types_pb2.CACHE_CONTEXT_MODE_EXACT}
    assert not (await cache.lookup("alice", *RUST_REWORDED, FOLLOW_UP, **exact)).hit
