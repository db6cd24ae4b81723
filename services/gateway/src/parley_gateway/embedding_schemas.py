"""Request and response bodies of `POST /v1/embeddings`, as OpenAI defines them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Embedding", "EmbeddingList", "EmbeddingRequest", "EmbeddingUsage"]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="the cache's embedding model")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text or a list of texts (up to 2,048); token arrays are not supported"
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64`: little-endian float32, base64-encoded"
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="only the model's own dimension is supported"
    )
    user: str | None = Field(default=None, max_length=256, description="your end user's id")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
