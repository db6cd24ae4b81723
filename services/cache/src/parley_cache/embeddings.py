"""Embeddings on request (the gateway's `/v1/embeddings`): the cache's own model, batched.

Each text joins the micro-batches that lookups share (``Embedder.embed``), so concurrent callers
and lookups are embedded together. A text longer than the model reads is refused rather than
cut silently: its vector would describe its first part only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from parley_cache.embedder import Embedder

__all__ = ["MAX_TEXTS", "EmbedInputError", "Embeddings", "UnknownModelError", "embed_texts"]

MAX_TEXTS: Final = 2048  # as OpenAI's embeddings endpoint


class EmbedInputError(ValueError):
    """A text that cannot be embedded; ``field`` names it (``texts[3]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UnknownModelError(LookupError):
    """A model other than the cache's embedding model was asked for."""


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    model: str
    prompt_tokens: int
    dimension: int
    max_tokens: int


async def embed_texts(embedder: Embedder, texts: Sequence[str], *, model: str = "") -> Embeddings:
    """The vectors of ``texts`` and their tokens; ``model``, when given, must be the embedder's."""
    if model and model != embedder.model_id:
        raise UnknownModelError(
            f"the embedding model {model[:256]!r} does not exist; this platform embeds with "
            f"{embedder.model_id!r}"
        )
    if not texts:
        raise EmbedInputError("texts", "at least one text is required")
    if len(texts) > MAX_TEXTS:
        raise EmbedInputError("texts", f"at most {MAX_TEXTS} texts a call, got {len(texts)}")
    for index, text in enumerate(texts):
        if not text.strip():
            raise EmbedInputError(f"texts[{index}]", "an empty text has no embedding")
    counts = embedder.count_tokens(texts)
    for index, count in enumerate(counts):
        if count > embedder.max_tokens:
            raise EmbedInputError(
                f"texts[{index}]",
                f"{count} tokens; the embedding model reads at most {embedder.max_tokens}: "
                "split the text",
            )
    vectors = await asyncio.gather(*(embedder.embed(text) for text in texts))
    return Embeddings(
        vectors=list(vectors),
        model=embedder.model_id,
        prompt_tokens=sum(counts),
        dimension=embedder.dimension,
        max_tokens=embedder.max_tokens,
    )
