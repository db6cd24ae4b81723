"""Stores answers from the results topic as cache entries (off the hot path)."""

from __future__ import annotations

import json
import logging

from parley.v1 import envelopes_pb2, types_pb2
from parley_cache.keying import CacheKey
from parley_cache.store import CacheStore

__all__ = ["ResultIndexer"]

log = logging.getLogger(__name__)


class ResultIndexer:
    def __init__(self, store: CacheStore, *, embedding_model: str, default_ttl_s: int) -> None:
        self._store = store
        self._embedding_model = embedding_model
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
        if ck.embedding_model != self._embedding_model or not ck.question_vector:
            return  # embedded by another model: its vector does not belong in this collection
        key = CacheKey.from_payload(json.loads(ck.payload))
        await self._store.put(
            request_id=result.request_id,
            vector=list(ck.question_vector),
            scope_key=ck.scope_key,
            key=key,
            answer=result.text,
            ttl_s=ck.ttl_seconds or self._default_ttl_s,
            complete=result.finish_reason == types_pb2.FINISH_REASON_STOP,
            max_tokens=ck.max_tokens,
        )
