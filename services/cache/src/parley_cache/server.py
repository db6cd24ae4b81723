"""CacheService over gRPC: scope, key, embed, search, judge."""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from parley.v1 import cache_pb2, cache_pb2_grpc, types_pb2
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.guard import MatchPolicy, judge, select_hit
from parley_cache.keying import CacheKey, InvalidKeyError, Role, Turn
from parley_cache.store import CacheStore

__all__ = ["CacheServicer", "scope_key"]

log = logging.getLogger(__name__)

_ROLES = {types_pb2.ROLE_USER: Role.USER, types_pb2.ROLE_ASSISTANT: Role.ASSISTANT}


def scope_key(request: cache_pb2.LookupRequest) -> str | None:
    """Where an entry may be shared: per user unless the bot profile allows more."""
    if request.scope == types_pb2.CACHE_SCOPE_DISABLED:
        return None
    if request.scope == types_pb2.CACHE_SCOPE_GLOBAL:
        return "global"
    if request.scope == types_pb2.CACHE_SCOPE_TENANT and request.tenant_id:
        return f"tenant:{request.tenant_id}"
    return f"user:{request.user_id}"


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, store: CacheStore, embedder: Embedder, settings: Settings) -> None:
        self._store = store
        self._embedder = embedder
        self._settings = settings
        self._policy = MatchPolicy(threshold=settings.cache_similarity_threshold)

    async def Lookup(
        self, request: cache_pb2.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.LookupResponse:
        scope = scope_key(request)
        if scope is None or not request.user_id:
            return cache_pb2.LookupResponse(hit=False)
        system = [m.content for m in request.messages if m.role == types_pb2.ROLE_SYSTEM]
        try:
            key = CacheKey.build(
                bot_id=request.bot_id,
                model=request.model,
                system_prompt="\n".join(system),
                turns=[
                    Turn(_ROLES[m.role], m.content) for m in request.messages if m.role in _ROLES
                ],
            )
        except InvalidKeyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"messages: {exc}")
            raise
        vector = await self._embedder.embed(key.question_text)
        response = cache_pb2.LookupResponse(hit=False)
        response.key.scope_key = scope
        response.key.embedding_model = self._embedder.model_id
        response.key.question_vector.extend(vector)
        response.key.payload = json.dumps(key.payload()).encode()
        response.key.ttl_seconds = self._settings.cache_ttl_seconds
        response.key.max_tokens = request.max_tokens
        if request.bypass:
            return response
        try:
            candidates = await self._store.search(
                vector,
                scope_key=scope,
                key=key,
                max_tokens=request.max_tokens,
                limit=self._settings.cache_candidates,
            )
        except (ResponseHandlingException, UnexpectedResponse) as exc:
            log.warning("qdrant unavailable; answering a miss", extra={"error": repr(exc)})
            return response
        if not candidates:
            return response
        best = select_hit(key, ((c.key, c.score, None) for c in candidates), policy=self._policy)
        if best is None:
            top = candidates[0]
            response.score = top.score
            response.reject_reason = judge(
                key, top.key, similarity=top.score, policy=self._policy
            ).reason
            return response
        index, verdict = best
        hit = candidates[index]
        return cache_pb2.LookupResponse(
            hit=True, answer=hit.answer, score=verdict.score, entry_id=hit.entry_id
        )
