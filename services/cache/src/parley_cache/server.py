"""CacheService over gRPC: scope, key, embed, search, judge."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import grpc

from parley.v1 import cache_pb2, cache_pb2_grpc, types_pb2
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.guard import MatchPolicy, judge, select_hit
from parley_cache.keying import CacheKey, ContextMode, InvalidKeyError, Role, Turn
from parley_cache.privacy import find_personal_data, is_shared_scope, user_scope
from parley_cache.store import STORE_ERRORS, CacheStore

__all__ = ["CacheServicer", "scope_key"]

log = logging.getLogger(__name__)

_ROLES = {types_pb2.ROLE_USER: Role.USER, types_pb2.ROLE_ASSISTANT: Role.ASSISTANT}


_CONTEXT_MODES = {
    types_pb2.CACHE_CONTEXT_MODE_EXACT: ContextMode.EXACT,
    types_pb2.CACHE_CONTEXT_MODE_SEMANTIC: ContextMode.SEMANTIC,
}


def scope_key(request: cache_pb2.LookupRequest) -> str | None:
    """Where an entry may be shared, as the bot profile asks: per user unless it allows more."""
    if request.scope == types_pb2.CACHE_SCOPE_DISABLED:
        return None
    if request.scope == types_pb2.CACHE_SCOPE_GLOBAL:
        return "global"
    if request.scope == types_pb2.CACHE_SCOPE_TENANT and request.tenant_id:
        return f"tenant:{request.tenant_id}"
    return user_scope(request.user_id)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, store: CacheStore, embedder: Embedder, settings: Settings) -> None:
        self._store = store
        self._embedder = embedder
        self._settings = settings
        self._policies = {
            mode: MatchPolicy(threshold=settings.cache_similarity_threshold, context_mode=mode)
            for mode in ContextMode
        }

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
        if is_shared_scope(scope):
            # Every turn counts, not only the key's window: an answer may repeat a name given
            # long before the question. Such a chat is cached for its own user only.
            personal = find_personal_data(
                m.content for m in request.messages if m.role != types_pb2.ROLE_SYSTEM
            )
            if personal:
                log.info(
                    "personal data in a shared-scope chat; caching it per user",
                    extra={"kinds": sorted(personal.kinds), "requested_scope": scope},
                )
                scope = user_scope(request.user_id)
        mode = _CONTEXT_MODES.get(request.context_mode, self._settings.cache_context_mode)
        policy = self._policies[mode]
        embed_context = mode is ContextMode.SEMANTIC and key.has_context
        context_vector: list[float] | None = None
        if embed_context:
            # Both in the same batch: one hand-off to the model thread for the two.
            vector, context_vector = await asyncio.gather(
                self._embedder.embed(key.question_text), self._embedder.embed(key.context_text)
            )
        else:
            vector = await self._embedder.embed(key.question_text)
        response = cache_pb2.LookupResponse(hit=False)
        response.key.scope_key = scope
        response.key.embedding_model = self._embedder.model_id
        response.key.question_vector.extend(vector)
        if context_vector is not None:
            response.key.context_vector.extend(context_vector)
        response.key.payload = json.dumps(key.payload()).encode()
        response.key.ttl_seconds = self._settings.cache_ttl_seconds
        response.key.max_tokens = request.max_tokens
        if request.bypass:
            return response
        try:
            # A user always sees their own entries too: those of a shared-scope chat that were
            # kept per user because of personal data.
            candidates = await self._store.search(
                vector,
                scopes=sorted({scope, user_scope(request.user_id)}),
                key=key,
                max_tokens=request.max_tokens,
                limit=self._settings.cache_candidates,
                score_threshold=policy.threshold,
                mode=mode,
                context_vector=context_vector,
                user_id=request.user_id,
            )
        except STORE_ERRORS as exc:
            log.warning("qdrant unavailable; answering a miss", extra={"error": repr(exc)})
            return response
        if not candidates:
            return response
        best = select_hit(
            key, ((c.key, c.score, c.context_score) for c in candidates), policy=policy
        )
        if best is None:
            top = candidates[0]
            response.score = top.score
            response.reject_reason = judge(
                key,
                top.key,
                similarity=top.score,
                context_similarity=top.context_score,
                policy=policy,
            ).reason
            return response
        index, verdict = best
        hit = candidates[index]
        return cache_pb2.LookupResponse(
            hit=True,
            answer=hit.answer,
            score=verdict.score,
            entry_id=hit.entry_id,
            truncated=not hit.complete,
        )

    async def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.InvalidateResponse:
        if not (request.bot_id.strip() or request.model.strip()):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bot_id or model: required")
        try:
            deleted = await self._store.invalidate(
                bot_id=request.bot_id.strip(), model=request.model.strip()
            )
        except STORE_ERRORS as exc:
            log.warning("qdrant unavailable; nothing invalidated", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cache store is unavailable")
            raise
        log.info(
            "invalidated cache entries",
            extra={"bot_id": request.bot_id, "model": request.model, "deleted": deleted},
        )
        return cache_pb2.InvalidateResponse(deleted=deleted)

    async def Evict(
        self, request: cache_pb2.EvictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.EvictResponse:
        if not request.user_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "user_id: required")
        if not (request.request_id or request.entry_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request_id: required (or entry_id)"
            )
        if request.entry_id:
            try:
                uuid.UUID(request.entry_id)
            except ValueError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "entry_id: not an entry id")
        try:
            # One user's feedback deletes that user's own entries only; a shared entry is hidden
            # from them, and deleted once enough distinct users rejected it.
            eviction = await self._store.evict(
                user_id=request.user_id,
                request_id=request.request_id,
                entry_id=request.entry_id,
                delete_shared_after=self._settings.cache_shared_evict_after,
            )
        except STORE_ERRORS as exc:
            log.warning("qdrant unavailable; nothing evicted", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cache store is unavailable")
            raise
        log.info(
            "evicted cache entries",
            extra={
                "request_id": request.request_id,
                "entry_id": request.entry_id,
                "deleted": eviction.deleted,
                "hidden": eviction.hidden,
                "deleted_shared": eviction.deleted_shared,
            },
        )
        return cache_pb2.EvictResponse(evicted=eviction.evicted)
