"""Concurrent lookups through the gRPC service: embedded together in micro-batches, with the same
results as one lookup at a time."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from parley.v1 import types_pb2

if TYPE_CHECKING:
    from conftest import CacheFactory, CacheService
    from parley_cache.embedder import Embedder

pytestmark = pytest.mark.integration

STORED = {
    "How do I reverse a list in Python?": "Use reversed() or list.reverse().",
    "What is the capital of France?": "Paris.",
    "How do I make pancakes?": "Flour, eggs, milk; fry.",
    "Why is the sky blue?": "Rayleigh scattering.",
    "How many legs does a spider have?": "Eight.",
    "How do I undo the last git commit?": "git reset --soft HEAD~1",
    "What is the boiling point of water at sea level?": "100 °C.",
    "Who wrote Pride and Prejudice?": "Jane Austen.",
}
LOOKUPS = [
    "What's the way to reverse a Python list?",
    "Which city is the capital of France?",
    "What's a recipe for pancakes?",
    "What makes the sky look blue?",
    "How many legs do spiders have?",
    "How can I revert my most recent commit in git?",
    "What's the boiling point of water at sea level?",
    "Who is the author of Pride and Prejudice?",
    "How do I reverse a list in Java?",  # hard negative: another language
    "What is the capital of Germany?",  # another entity
    "How many legs does an ant have?",
    "How do I make waffles?",
    "Why is the sea blue?",
    "What is the boiling point of water on Everest?",
    "Who wrote Sense and Sensibility?",
    "How do I undo the last git push?",
]


@pytest.fixture
async def forgetful_cache(make_cache: CacheFactory, forgetful_embedder: Embedder) -> CacheService:
    return await make_cache(embedder=forgetful_embedder)


async def test_32_concurrent_lookups_match_single_lookups(forgetful_cache: CacheService) -> None:
    # An embedder that keeps no vectors: the concurrent lookups embed their texts again, together.
    cache = forgetful_cache
    for question, answer in STORED.items():
        await cache.ask("alice", question, answer=answer)
    # 32 lookups: every question for its owner (a mix of hits and misses), and for another user.
    calls = [(user, text) for user in ("alice", "bob") for text in LOOKUPS]
    assert len(calls) == 32

    one_by_one = [await cache.lookup(user, text) for user, text in calls]
    before = cache.embedder.stats
    together = await asyncio.gather(*(cache.lookup(user, text) for user, text in calls))
    batches = cache.embedder.stats.batches - before.batches

    assert batches < len(calls) / 2, f"{batches} model calls for {len(calls)} lookups"
    hits = 0
    for (user, text), single, batched in zip(calls, one_by_one, together, strict=True):
        assert (batched.hit, batched.answer, batched.entry_id) == (
            single.hit,
            single.answer,
            single.entry_id,
        ), text
        assert batched.score == pytest.approx(single.score, abs=1e-4)
        assert batched.reject_reason == single.reject_reason
        hits += batched.hit
        if user == "bob":
            assert not batched.hit
    # Most paraphrases hit, the near-misses do not: the comparison above covered both outcomes.
    assert hits >= 4
    assert all(not r.hit for r in together[8:16])


async def test_concurrent_semantic_lookups_embed_question_and_context_together(
    forgetful_cache: CacheService,
) -> None:
    cache = forgetful_cache
    semantic = {"context_mode": types_pb2.CACHE_CONTEXT_MODE_SEMANTIC}
    languages = ("Rust", "Go", "Java", "Python", "Ruby", "Haskell", "Kotlin", "Swift")
    chats = [
        (f"I write {language}.", f"Great, {language} is a fine choice!", question)
        for language, question in zip(
            languages,
            (
                "How do I read a file?",
                "How do I start a web server?",
                "How do I parse JSON?",
                "How do I sort a list?",
                "How do I open a socket?",
                "How do I write a test?",
                "How do I format a date?",
                "How do I call a REST API?",
            ),
            strict=True,
        )
    ]
    for index, chat in enumerate(chats):
        await cache.ask("alice", *chat, answer=f"answer {index}", **semantic)
    before = cache.embedder.stats
    found = await asyncio.gather(*(cache.lookup("alice", *chat, **semantic) for chat in chats))
    after = cache.embedder.stats
    assert [(r.hit, r.answer) for r in found] == [(True, f"answer {i}") for i in range(8)]
    assert after.texts - before.texts == 16  # a question and a context each
    assert after.batches - before.batches <= 4
