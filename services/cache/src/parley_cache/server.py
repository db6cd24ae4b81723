"""CacheService over gRPC: a translator between the wire and ``lookup`` and ``store``."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import grpc

from parley.v1 import cache_pb2, cache_pb2_grpc, types_pb2
from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.embeddings import EmbedInputError, UnknownModelError, embed_texts
from parley_cache.keying import CacheKey, ContextMode, InvalidKeyError, Turn, question_text_of
from parley_cache.lookup import LookupInput, LookupOutcome, Lookups
from parley_cache.privacy import user_scope
from parley_cache.store import STORE_ERRORS, CacheStore
from parley_cache.tuning import FeedbackTuner
from parley_cache.verifier import Verifier, default_verifier
from parley_common.grpc_errors import abort_bad_field
from parley_common.vocabulary import Role

__all__ = ["CacheServicer", "scope_key"]

log = logging.getLogger(__name__)

_CONTEXT_MODES = {
    types_pb2.CACHE_CONTEXT_MODE_EXACT: ContextMode.EXACT,
    types_pb2.CACHE_CONTEXT_MODE_SEMANTIC: ContextMode.SEMANTIC,
}


def _lookup_input(request: cache_pb2.LookupRequest, scope: str) -> LookupInput:
    system = [m.content for m in request.messages if m.role == types_pb2.ROLE_SYSTEM]
    key = CacheKey.build(
        bot_id=request.bot_id,
        model=request.model,
        system_prompt="\n".join(system),
        turns=[
            Turn(role, m.content)
            for m in request.messages
            if (role := Role.from_pb(m.role)) in (Role.USER, Role.ASSISTANT)
        ],
    )
    return LookupInput(
        user_id=request.user_id,
        scope=scope,
        key=key,
        all_turns=[m.content for m in request.messages if m.role != types_pb2.ROLE_SYSTEM],
        bypass=request.bypass,
        max_tokens=request.max_tokens,
        context_mode=_CONTEXT_MODES.get(request.context_mode),
        temperature=request.temperature,
        max_error_rate=request.max_error_rate,
    )


def _response(outcome: LookupOutcome) -> cache_pb2.LookupResponse:
    response = cache_pb2.LookupResponse(
        hit=outcome.hit,
        answer=outcome.answer,
        score=outcome.score,
        entry_id=outcome.entry_id,
        truncated=outcome.truncated,
        reason=outcome.reason,
        reject_reason=outcome.reject_reason,
    )
    if outcome.key is not None:
        stored = outcome.key
        response.key.scope_key = stored.scope_key
        response.key.embedding_model = stored.embedding_model
        response.key.question_vector.extend(stored.question_vector)
        if stored.context_vector is not None:
            response.key.context_vector.extend(stored.context_vector)
        response.key.payload = stored.payload
        response.key.ttl_seconds = stored.ttl_seconds
        response.key.max_tokens = stored.max_tokens
    return response


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
    def __init__(
        self,
        store: CacheStore,
        embedder: Embedder,
        settings: Settings,
        verifier: Verifier | None = None,
        tuner: FeedbackTuner | None = None,
    ) -> None:
        """``tuner``: the per-scope feedback counts (``FeedbackTuner(…, FeedbackCounts(…))`` to
        share them across replicas); none: counted in memory by this servicer only."""
        self._store = store
        self._embedder = embedder
        self._settings = settings
        verifier = verifier or default_verifier()
        self._lookups = Lookups(
            store,
            embedder,
            settings,
            verifier,
            tuner or FeedbackTuner(verifier.weights.calibration),
        )

    async def Lookup(
        self, request: cache_pb2.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.LookupResponse:
        scope = scope_key(request)
        if scope is None or not request.user_id:
            return cache_pb2.LookupResponse(hit=False, reason="caching disabled for this bot")
        if not 0 <= request.max_error_rate < 1:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "max_error_rate: a share of wrong hits, 0 < rate < 1 (0: CACHE_MAX_ERROR_RATE)",
            )
        try:
            lookup = _lookup_input(request, scope)
        except InvalidKeyError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"messages: {exc}")
            raise
        return _response(await self._lookups.lookup(lookup))

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
        if request.entry_id and eviction.evicted:
            # A rejected served answer counts against its scope's error rate (tuning).
            self._lookups.rejected(eviction.entry_scope)
        return cache_pb2.EvictResponse(evicted=eviction.evicted)

    async def Embed(
        self, request: cache_pb2.EmbedRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.EmbedResponse:
        try:
            embeddings = await embed_texts(self._embedder, list(request.texts), model=request.model)
        except UnknownModelError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        except EmbedInputError as exc:
            await abort_bad_field(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                str(exc),
                field=exc.field,
                description=str(exc),
            )
            raise
        return cache_pb2.EmbedResponse(
            embeddings=[cache_pb2.Embedding(vector=v) for v in embeddings.vectors],
            model=embeddings.model,
            prompt_tokens=embeddings.prompt_tokens,
            dimension=embeddings.dimension,
            max_tokens=embeddings.max_tokens,
        )

    async def CompareSampledAnswer(
        self,
        request: cache_pb2.CompareSampledAnswerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> cache_pb2.CompareSampledAnswerResponse:
        try:
            uuid.UUID(request.entry_id)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "entry_id: not an entry id")
        if not request.generated_answer.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "generated_answer: empty")
        try:
            served = await self._store.served_answer(request.entry_id)
        except STORE_ERRORS as exc:
            log.warning("qdrant unavailable; sample not compared", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the cache store is unavailable")
            raise
        if served is None:
            return cache_pb2.CompareSampledAnswerResponse(found=False)
        scope, answer = served
        # One batch for the two; the vectors are unit norm, so their dot product is the cosine.
        mine, theirs = await asyncio.gather(
            self._embedder.embed(answer), self._embedder.embed(request.generated_answer)
        )
        similarity = float(sum(a * b for a, b in zip(mine, theirs, strict=True)))
        agreed = similarity >= self._settings.cache_sample_min_similarity
        if not agreed:
            self._lookups.rejected(scope)
        log.info(
            "sampled hit compared",
            extra={
                "entry_id": request.entry_id,
                "similarity": round(similarity, 4),
                "agreed": agreed,
            },
        )
        return cache_pb2.CompareSampledAnswerResponse(
            found=True, similarity=similarity, agreed=agreed
        )

    async def Prime(
        self, request: cache_pb2.PrimeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> cache_pb2.PrimeResponse:
        question = question_text_of(request.question)
        if question:
            await self._embedder.embed(question)
        return cache_pb2.PrimeResponse()
