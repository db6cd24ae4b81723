"""The embedder against the real all-MiniLM-L6-v2 (bundled offline), no mocks."""

from __future__ import annotations

import asyncio
import math

import pytest

from parley_cache.embedder import DEFAULT_MODEL_ID, Embedder, load_default_model_path

QUESTIONS = [
    "How do I reverse a list in Python?",
    "What's the way to reverse a Python list?",
    "How do I make pancakes?",
    "What is the capital of France?",
    "Explain the difference between TCP and UDP, with an example of when to use each one.",
    "ok",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(max_wait_ms=20.0)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_describes_its_model(embedder: Embedder) -> None:
    assert embedder.dimension == 384
    assert embedder.model_id == DEFAULT_MODEL_ID
    assert load_default_model_path().endswith("model")
    assert load_default_model_path("/models/mine") == "/models/mine"


async def test_vectors_are_unit_norm_and_carry_meaning(embedder: Embedder) -> None:
    reverse, reworded, pancakes = await asyncio.gather(
        *(embedder.embed(text) for text in QUESTIONS[:3])
    )
    assert len(reverse) == 384
    assert math.isclose(_dot(reverse, reverse), 1.0, abs_tol=1e-5)
    assert _dot(reverse, reworded) > 0.8
    assert _dot(reverse, pancakes) < 0.3


async def test_batched_and_single_embeddings_are_equal(embedder: Embedder) -> None:
    batched = await embedder.embed_many(QUESTIONS)
    concurrent = await asyncio.gather(*(embedder.embed(text) for text in QUESTIONS))
    for text, in_batch, in_micro_batch in zip(QUESTIONS, batched, concurrent, strict=True):
        alone = (await embedder.embed_many([text]))[0]
        assert max(abs(x - y) for x, y in zip(alone, in_batch, strict=True)) < 1e-5
        assert max(abs(x - y) for x, y in zip(alone, in_micro_batch, strict=True)) < 1e-5


async def test_concurrent_calls_share_micro_batches(embedder: Embedder) -> None:
    before = embedder.stats
    texts = [f"question number {i}" for i in range(40)]
    vectors = await asyncio.gather(*(embedder.embed(text) for text in texts))
    after = embedder.stats
    assert len(vectors) == 40
    assert after.texts - before.texts == 40
    # 40 callers within the wait window: one full batch of 32 and one of 8, not 40 model calls.
    assert after.batches - before.batches <= 3
    alone = (await embedder.embed_many([texts[7]]))[0]
    assert max(abs(x - y) for x, y in zip(vectors[7], alone, strict=True)) < 1e-5


async def test_a_lone_caller_is_embedded_on_its_own() -> None:
    quick = Embedder(max_wait_ms=0.0)
    async with quick:
        before = quick.stats
        await quick.embed("one lonely question")
        assert quick.stats.batches - before.batches == 1
    assert await quick.embed_many([]) == []


def test_rejects_bad_batching_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Embedder(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Embedder(max_wait_ms=-1)
