"""Embeddings on request, by the real all-MiniLM-L6-v2: vectors of the lookups' batcher, token
counts by its tokenizer, and texts that cannot be embedded refused, naming the text."""

from __future__ import annotations

import pytest

from parley_cache.embedder import Embedder
from parley_cache.embeddings import EmbedInputError, UnknownModelError, embed_texts


async def test_vectors_and_tokens(embedder: Embedder) -> None:
    texts = ["How do I reverse a list?", "ok"]
    result = await embed_texts(embedder, texts, model=embedder.model_id)
    assert result.model == embedder.model_id
    assert result.dimension == len(result.vectors[0]) == 384
    assert result.vectors == [await embedder.embed(t) for t in texts]
    assert result.prompt_tokens == sum(embedder.count_tokens(texts))
    assert embedder.count_tokens(["ok"]) == [3]  # [CLS] ok [SEP]


@pytest.mark.parametrize(
    ("texts", "field"),
    [([], "texts"), (["fine", " "], "texts[1]"), (["word " * 300], "texts[0]")],
)
async def test_refusals_name_the_text(embedder: Embedder, texts: list[str], field: str) -> None:
    with pytest.raises(EmbedInputError) as refused:
        await embed_texts(embedder, texts)
    assert refused.value.field == field


async def test_another_model_is_refused(embedder: Embedder) -> None:
    with pytest.raises(UnknownModelError, match="all-minilm-l6-v2"):
        await embed_texts(embedder, ["x"], model="text-embedding-3-small")
