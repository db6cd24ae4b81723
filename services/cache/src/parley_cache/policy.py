"""The match policy: may a stored entry answer a lookup, and why (or why not)?

:func:`judge` decides for one candidate that the vector search returned: same scope (bot, model,
system prompt), same conversation context, then the verifier's probability that the two
questions have the same answer against the policy's threshold. :func:`select_hit` picks the best
accepted candidate. Every verdict, hit or miss, carries its score and a reason an operator can
read (``X-Parley-Cache-Reason``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from parley_cache.keying import DEFAULT_CONTEXT_THRESHOLD, CacheKey, ContextMode, Role
from parley_cache.verifier import Verifier, default_verifier

__all__ = ["MatchPolicy", "MatchVerdict", "judge", "select_hit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchPolicy:
    threshold: float  # on the verifier's probability (see Calibration.threshold_for)
    context_mode: ContextMode = ContextMode.EXACT
    context_threshold: float = DEFAULT_CONTEXT_THRESHOLD
    verifier: Verifier = field(default_factory=default_verifier)


@dataclass(frozen=True, slots=True)
class MatchVerdict:
    hit: bool
    score: float  # the verifier's probability (0 when it did not get to run)
    similarity: float  # cosine of the question vectors
    reason: str


def judge(
    query: CacheKey,
    entry: CacheKey,
    *,
    similarity: float,
    context_similarity: float | None = None,
    policy: MatchPolicy,
) -> MatchVerdict:
    """Is ``entry`` (a stored question, ``similarity`` away by cosine) an answer for ``query``?

    ``context_similarity`` is the cosine of the two context vectors; only
    ``ContextMode.SEMANTIC`` reads it, and only when the query has prior turns.
    """

    def miss(reason: str, score: float = 0.0) -> MatchVerdict:
        return MatchVerdict(hit=False, score=score, similarity=similarity, reason=reason)

    if query.scope_fingerprint != entry.scope_fingerprint:
        return miss("different bot, model or system prompt")
    if query.earlier_fingerprint != entry.earlier_fingerprint:
        return miss("different conversation context (earlier turns)")
    if policy.context_mode is ContextMode.EXACT:
        if query.context_fingerprint != entry.context_fingerprint:
            return miss("different conversation context")
    elif query.context_shape != entry.context_shape:
        return miss("different conversation context")
    elif query.has_context:
        if context_similarity is None or context_similarity < policy.context_threshold:
            return miss("different conversation context")
        # Each reworded user turn must pass the verifier as a question would; the context
        # cosine stands in for the turn's own (one vector covers all prior turns).
        for mine, theirs in zip(query.context, entry.context, strict=True):
            if mine.role is not Role.USER:
                continue
            turn_score = policy.verifier.score(theirs.content, mine.content, context_similarity)
            if turn_score < policy.threshold:
                return miss(
                    f"context: verifier {turn_score:.3f} below {policy.threshold:.3f} on a prior "
                    "turn",
                    turn_score,
                )
    score = policy.verifier.score(entry.question, query.question, similarity)
    if score < policy.threshold:
        return miss(
            f"verifier {score:.3f} below {policy.threshold:.3f} (cosine {similarity:.3f})", score
        )
    return MatchVerdict(
        hit=True,
        score=score,
        similarity=similarity,
        reason=f"verifier {score:.3f} >= {policy.threshold:.3f} (cosine {similarity:.3f})",
    )


def select_hit(
    query: CacheKey,
    candidates: Iterable[tuple[CacheKey, float, float | None]],
    *,
    policy: MatchPolicy,
) -> tuple[int | None, MatchVerdict | None]:
    """The best accepted candidate's index and verdict among (entry, similarity, context
    similarity) triples from a vector search; without one, (None, the best rejected verdict)."""
    best: tuple[int, MatchVerdict] | None = None
    best_miss: MatchVerdict | None = None
    for index, (entry, similarity, context_similarity) in enumerate(candidates):
        verdict = judge(
            query,
            entry,
            similarity=similarity,
            context_similarity=context_similarity,
            policy=policy,
        )
        if verdict.hit:
            if best is None or verdict.score > best[1].score:
                best = (index, verdict)
        elif best_miss is None or verdict.score > best_miss.score:
            best_miss = verdict
    if best is not None:
        return best
    return None, best_miss
