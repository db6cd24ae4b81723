"""Stores answers from the results topic as cache entries (off the hot path)."""

from __future__ import annotations

import json
import logging

from parley.v1 import envelopes_pb2, types_pb2
from parley_cache.embedder import Embedder
from parley_cache.keying import CacheKey
from parley_cache.privacy import find_personal_data, is_shared_scope, user_scope
from parley_cache.store import CacheStore

__all__ = ["ResultIndexer"]

log = logging.getLogger(__name__)


class ResultIndexer:
    """Stores each cacheable answer with the key its lookup returned.

    A key without a question vector (its lookup searched nothing: a bypass, a varied answer
    asked for) has the question embedded here.

    An entry with prior turns always gets a context vector, whichever context mode its lookup
    used: embedded here, off the hot path, when the lookup (exact mode) did not need one. So a
    bot profile switched to the semantic mode finds the entries it already has.
    """

    def __init__(self, store: CacheStore, embedder: Embedder, *, default_ttl_s: int) -> None:
        self._store = store
        self._embedder = embedder
        self._embedding_model = embedder.model_id
        self._default_ttl_s = default_ttl_s

    async def __call__(self, result: envelopes_pb2.CompletionResult) -> None:
        if (
            result.kind != envelopes_pb2.COMPLETION_KIND_CHAT
            or result.finish_reason
            not in (types_pb2.FINISH_REASON_STOP, types_pb2.FINISH_REASON_LENGTH)
            or not result.HasField("cache_key")
            or not result.text.strip()
        ):
            return  # only complete answers to cacheable questions are reused
        ck = result.cache_key
        if ck.embedding_model != self._embedding_model:
            return  # embedded by another model: its vector does not belong in this collection
        key = CacheKey.from_payload(json.loads(ck.payload))
        scope = ck.scope_key
        if is_shared_scope(scope) and find_personal_data([result.text]):
            # The lookup found none in the chat, but the answer holds some (the model's own
            # doing): it stays with the user who asked.
            if not result.user_id:
                return
            log.info("personal data in an answer; caching it per user", extra={"scope": scope})
            scope = user_scope(result.user_id)
        vector = list(ck.question_vector)
        context_vector = list(ck.context_vector)
        if not vector:
            # A lookup that searched nothing (bypass, a varied answer asked for) left it to us.
            vector = await self._embedder.embed(key.question_text)
        if key.has_context and not context_vector:
            context_vector = await self._embedder.embed(key.context_text)
        await self._store.put(
            request_id=result.request_id,
            vector=vector,
            context_vector=context_vector,
            scope_key=scope,
            key=key,
            answer=result.text,
            ttl_s=ck.ttl_seconds or self._default_ttl_s,
            complete=result.finish_reason == types_pb2.FINISH_REASON_STOP,
            max_tokens=ck.max_tokens,
        )
