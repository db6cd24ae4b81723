"""`POST /v1/embeddings`: OpenAI's embeddings, by the semantic cache's own sentence model.

The cache service embeds (gRPC `CacheService/Embed`): every text joins the micro-batches its
lookups share, so the gateway holds no model. The model is named as the cache names it
(`all-minilm-l6-v2` by default); vectors are unit norm. The request counts against the user's
requests per minute, and its tokens (by the embedding model's tokenizer) against the tokens.
"""

from __future__ import annotations

import base64
import logging
import re
from array import array
from typing import Any

import grpc
from fastapi import APIRouter

from parley.v1 import cache_pb2, session_pb2
from parley_gateway.deps import PartsDep, User, admit
from parley_gateway.embedding_schemas import (
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from parley_gateway.errors import ApiError, from_grpc
from parley_gateway.openai_schemas import OpenAIErrorBody

router = APIRouter(prefix="/v1", tags=["openai"])

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorBody, "description": "an invalid request (the param is named)"},
    401: {"model": OpenAIErrorBody, "description": "missing, malformed or revoked API key"},
    404: {"model": OpenAIErrorBody, "description": "not the embedding model served"},
    429: {"model": OpenAIErrorBody, "description": "over a rate limit; retry after Retry-After"},
    503: {"model": OpenAIErrorBody, "description": "the cache service is down; retry later"},
}

_TEXT_FIELD = re.compile(r"^texts(\[\d+\])?$")


def _texts(body: EmbeddingRequest) -> list[str]:
    raw = body.input
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise ApiError(
            422, "invalid_request", "input: at least one text is required", param="input"
        )
    texts = [item for item in raw if isinstance(item, str)]
    if len(texts) != len(raw):
        raise ApiError(
            422,
            "invalid_request",
            "input: token arrays are not supported (they are another tokenizer's ids); send text",
            param="input",
        )
    return texts


def _encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector
    packed = array("f", vector)
    if packed.itemsize != 4:  # pragma: no cover - every platform Python runs on has 4
        raise RuntimeError("float32 arrays are needed for base64 embeddings")
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _cache_error(exc: grpc.aio.AioRpcError) -> ApiError:
    error = from_grpc(exc, "cache")
    if error.status == 404:
        return ApiError(404, "not_found", error.message, param="model", code="model_not_found")
    if error.param and _TEXT_FIELD.match(error.param):
        error.param = "input" + error.param.removeprefix("texts")
        error.message = error.message.replace("texts", "input", 1)
    return error


@router.post(
    "/embeddings",
    response_model=EmbeddingList,
    responses=_ERRORS,
    summary="Create embeddings",
)
async def create_embeddings(body: EmbeddingRequest, user: User, parts: PartsDep) -> EmbeddingList:
    """Vectors of a text or a list of texts, in order, with the tokens they took."""
    texts = _texts(body)
    if parts.cache is None:
        raise ApiError(503, "service_unavailable", "the cache service is not connected")
    await admit(parts, user, uses_workers=False)
    try:
        embedded = await parts.cache.Embed(
            cache_pb2.EmbedRequest(texts=texts, model=body.model),
            timeout=parts.settings.grpc_timeout_s,
        )
    except grpc.aio.AioRpcError as exc:
        raise _cache_error(exc) from exc
    if body.dimensions is not None and body.dimensions != embedded.dimension:
        raise ApiError(
            422,
            "invalid_request",
            f"dimensions: {embedded.model} has {embedded.dimension} dimensions and cannot be "
            "shortened; leave dimensions out",
            param="dimensions",
        )
    try:
        await parts.session.add_tokens(
            session_pb2.AddTokensRequest(user_id=user.user_id, tokens=embedded.prompt_tokens)
        )
    except ApiError as exc:
        # The vectors are made: the caller gets them; the minute's tokens miss this call's.
        log.warning("could not count embedding tokens", extra={"error": exc.message})
    return EmbeddingList(
        data=[
            Embedding(index=index, embedding=_encode(list(e.vector), body.encoding_format))
            for index, e in enumerate(embedded.embeddings)
        ],
        model=embedded.model,
        usage=EmbeddingUsage(
            prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens
        ),
    )
