"""The embedder against the real all-MiniLM-L6-v2 (bundled offline), no mocks."""

from __future__ import annotations

import asyncio
import math

import pytest

from parley_cache.embedder import (
    DEFAULT_MODEL_ID,
    Embedder,
    EmbedderStats,
    length_groups,
    load_default_model_path,
)

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


def _max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


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
    with pytest.raises(ValueError, match="memo_size"):
        Embedder(memo_size=-1)
    with pytest.raises(ValueError, match="precision"):
        Embedder(precision="float16")  # type: ignore[arg-type]


async def test_vectors_are_those_of_sentence_transformers_encode(embedder: Embedder) -> None:
    # The model's modules are called directly; encode() is the reference they must match.
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(load_default_model_path(), device="cpu").encode(
        QUESTIONS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    ours = await embedder.embed_many(QUESTIONS)
    concurrent = await asyncio.gather(*(embedder.embed(f"{text} ") for text in QUESTIONS))
    for expected, got, micro in zip(reference.tolist(), ours, concurrent, strict=True):
        assert _max_diff(expected, got) < 1e-5
        # A trailing space changes nothing the tokenizer reads.
        assert _max_diff(expected, micro) < 1e-5


async def test_a_text_asked_again_reuses_its_vector() -> None:
    async with Embedder(memo_size=2) as small:
        first = await small.embed("What is the capital of France?")
        before = small.stats
        first[0] = 42.0  # a caller changing its copy changes nothing for the next one
        again = await small.embed("What is the capital of France?")
        assert small.stats == EmbedderStats(
            batches=before.batches, texts=before.texts, reused=before.reused + 1
        )
        alone = (await small.embed_many(["What is the capital of France?"]))[0]
        assert again == alone
        assert await small.embed("What is the capital of Spain?") != again

        # Only the last two texts are kept: a third one pushes the oldest out.
        await small.embed("How do I make pancakes?")
        before = small.stats
        await small.embed("What is the capital of France?")
        assert (small.stats.batches, small.stats.reused) == (before.batches + 1, before.reused)


async def test_concurrent_callers_with_the_same_text_share_one_row(embedder: Embedder) -> None:
    before = embedder.stats
    vectors = await asyncio.gather(*(embedder.embed("one text, five callers") for _ in range(5)))
    after = embedder.stats
    assert (after.batches - before.batches, after.texts - before.texts) == (1, 1)
    assert all(vector == vectors[0] for vector in vectors)
    vectors[0][0] = 42.0
    assert vectors[1][0] != 42.0


async def test_bfloat16_vectors_stay_within_float32_ones(embedder: Embedder) -> None:
    async with Embedder(runtime="torch", precision="bfloat16", memo_size=0) as half:
        assert half.precision == "bfloat16"
        reduced = await half.embed_many(QUESTIONS)
        alone = [(await half.embed_many([text]))[0] for text in QUESTIONS]
    full = await embedder.embed_many(QUESTIONS)
    for low, high, single in zip(reduced, full, alone, strict=True):
        assert math.isclose(_dot(low, low), 1.0, abs_tol=1e-5)
        assert _dot(low, high) > 0.999
        assert _dot(low, single) > 0.999
    # Still the same meaning: similar questions close, unrelated ones far.
    assert _dot(reduced[0], reduced[1]) > 0.8
    assert _dot(reduced[0], reduced[2]) < 0.3


def test_texts_of_very_different_lengths_go_to_separate_model_calls() -> None:
    short = ["ok", "What is the capital of France?", "How do I make pancakes?"]
    long = ["word " * 100, "word " * 120]
    texts = [short[0], long[0], short[1], long[1], short[2]]
    groups = length_groups(texts, max_batch_size=32)
    assert sorted(i for group in groups for i in group) == list(range(len(texts)))
    assert [sorted(group) for group in groups] == [[0, 2, 4], [1, 3]]
    assert [len(group) for group in length_groups(["same length"] * 70, 32)] == [32, 32, 6]
    assert length_groups([], 32) == []
