"""The lookup use-case: from a conversation to a hit (an answer) or a miss (a key to store under).

In order: the key (bot, model, system prompt, turns: ``keying``), the scope (narrowed to the user
when the chat holds personal data: ``privacy``), the freshness checks (a request for variety is
never served; a time-sensitive question gets a short TTL: ``freshness``), the question's vector,
the vector search within scope and context (``store``), then the match policy over the
candidates (``policy``), at the threshold the operator's error rate and this scope's feedback
call for (``tuning``). Plain values in and out; ``server`` translates them from and to gRPC.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from parley_cache.config import Settings
from parley_cache.embedder import Embedder
from parley_cache.freshness import asks_for_variety, is_time_sensitive
from parley_cache.keying import CacheKey, ContextMode
from parley_cache.policy import MatchPolicy, MatchVerdict, select_hit
from parley_cache.privacy import find_personal_data, is_shared_scope, user_scope
from parley_cache.store import STORE_ERRORS, CacheStore, Candidate
from parley_cache.tuning import FeedbackTuner
from parley_cache.verifier import Verifier

__all__ = ["LookupInput", "LookupOutcome", "Lookups", "StoreKey"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LookupInput:
    user_id: str
    scope: str  # "user:…", "tenant:…" or "global", as the bot profile allows
    key: CacheKey
    all_turns: Sequence[str]  # every non-system message, for the personal-data check
    bypass: bool = False
    max_tokens: int = 0
    context_mode: ContextMode | None = None
    temperature: float = 0.0
    max_error_rate: float = 0.0  # 0: the deployment's CACHE_MAX_ERROR_RATE


@dataclass(frozen=True, slots=True)
class StoreKey:
    """What a miss hands on so that the fresh answer gets stored (``CacheKey`` on the wire)."""

    scope_key: str
    embedding_model: str
    question_vector: list[float]  # empty: embedded when the answer is stored
    context_vector: list[float] | None
    payload: bytes
    ttl_seconds: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class LookupOutcome:
    hit: bool
    reason: str
    key: StoreKey | None = None  # on a miss
    answer: str = ""
    score: float = 0.0
    entry_id: str = ""
    truncated: bool = False
    reject_reason: str = ""


@dataclass(slots=True)
class Lookups:
    store: CacheStore
    embedder: Embedder
    settings: Settings
    verifier: Verifier
    tuner: FeedbackTuner

    async def lookup(self, request: LookupInput) -> LookupOutcome:
        key, scope = request.key, request.scope
        if is_shared_scope(scope):
            # Every turn counts, not only the key's window: an answer may repeat a name given
            # long before the question. Such a chat is cached for its own user only.
            personal = find_personal_data(request.all_turns)
            if personal:
                log.info(
                    "personal data in a shared-scope chat; caching it per user",
                    extra={"kinds": sorted(personal.kinds), "requested_scope": scope},
                )
                scope = user_scope(request.user_id)
        fresh = is_time_sensitive(key.question)
        unserved = self._unserved(request)
        if unserved is not None:
            # Nothing is searched, so nothing waits for the question's vector: the answer is
            # stored under a key without one, embedded off the hot path (``results``).
            return LookupOutcome(
                hit=False, reason=unserved, key=self._store_key(request, scope, fresh, [], None)
            )
        mode = request.context_mode or self.settings.cache_context_mode
        context_vector: list[float] | None = None
        if mode is ContextMode.SEMANTIC and key.has_context:
            # Both in the same batch: one hand-off to the model thread for the two.
            vector, context_vector = await asyncio.gather(
                self.embedder.embed(key.question_text), self.embedder.embed(key.context_text)
            )
        else:
            vector = await self.embedder.embed(key.question_text)
        store_key = self._store_key(request, scope, fresh, vector, context_vector)
        max_error = request.max_error_rate or self.settings.cache_max_error_rate
        try:
            # A user always sees their own entries too: those of a shared-scope chat that were
            # kept per user because of personal data. The scope's feedback counts are read
            # meanwhile (at most every few seconds: see tuning).
            threshold, candidates = await asyncio.gather(
                self.tuner.threshold(scope, max_error),
                self.store.search(
                    vector,
                    scopes=sorted({scope, user_scope(request.user_id)}),
                    key=key,
                    max_tokens=request.max_tokens,
                    limit=self.settings.cache_candidates,
                    score_threshold=self.settings.cache_similarity_threshold,
                    mode=mode,
                    context_vector=context_vector,
                    user_id=request.user_id,
                ),
            )
        except STORE_ERRORS as exc:
            log.warning("qdrant unavailable; answering a miss", extra={"error": repr(exc)})
            return LookupOutcome(hit=False, reason="cache store unavailable", key=store_key)
        if not candidates:
            return LookupOutcome(hit=False, reason="no stored question close enough", key=store_key)
        policy = MatchPolicy(threshold=threshold, context_mode=mode, verifier=self.verifier)
        index, verdict = await _judge(key, candidates, policy)
        if index is None:
            assert verdict is not None
            return LookupOutcome(
                hit=False,
                reason=verdict.reason,
                key=store_key,
                score=verdict.score,
                reject_reason=verdict.reason,
            )
        assert verdict is not None
        hit = candidates[index]
        self.tuner.served(hit.scope_key or scope)
        return LookupOutcome(
            hit=True,
            reason=verdict.reason,
            answer=hit.answer,
            score=verdict.score,
            entry_id=hit.entry_id,
            truncated=not hit.complete,
        )

    def _unserved(self, request: LookupInput) -> str | None:
        """Why this request is not to be answered from the cache, whatever is stored; None when
        it may be."""
        if request.bypass:
            return "bypass: asked not to answer from the cache"
        if asks_for_variety(request.temperature, self.settings.cache_max_temperature):
            return (
                f"temperature {request.temperature:.2f} above "
                f"{self.settings.cache_max_temperature:.2f}: a varied answer is asked for"
            )
        return None

    def _store_key(
        self,
        request: LookupInput,
        scope: str,
        fresh: bool,
        vector: list[float],
        context_vector: list[float] | None,
    ) -> StoreKey:
        return StoreKey(
            scope_key=scope,
            embedding_model=self.embedder.model_id,
            question_vector=vector,
            context_vector=context_vector,
            payload=json.dumps(request.key.payload()).encode(),
            ttl_seconds=(
                self.settings.cache_fresh_ttl_seconds if fresh else self.settings.cache_ttl_seconds
            ),
            max_tokens=request.max_tokens,
        )

    def rejected(self, scope: str) -> None:
        """A served answer of ``scope`` was rejected (thumbs-down, regenerate, a sampled check
        that disagreed): see ``tuning``."""
        self.tuner.rejected(scope)


async def _judge(
    key: CacheKey, candidates: Sequence[Candidate], policy: MatchPolicy
) -> tuple[int | None, MatchVerdict | None]:
    """The match policy over the candidates, on a worker thread, whatever the texts' length: it
    is CPU work (bench.cache_eval.decision_cost: from a fraction of a millisecond to a few at
    32 000 chars) that would otherwise hold up every other call the event loop serves."""
    triples = [(c.key, c.score, c.context_score) for c in candidates]
    return await asyncio.to_thread(select_hit, key, triples, policy=policy)
