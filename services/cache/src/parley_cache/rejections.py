"""Negative feedback on stored entries: a user's own deleted, a shared one hidden, then deleted.

See ``CacheStore.evict`` and the README's "Negative feedback" for the policy; the compare-and-set
that keeps concurrent rejections from losing each other is in :meth:`Rejections._reject`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Final

from qdrant_client import AsyncQdrantClient, models

from parley_cache.points import match
from parley_cache.privacy import is_shared_scope, user_scope

__all__ = ["Eviction", "Rejections"]

log = logging.getLogger(__name__)

# How many entries one rejection can name: the entry an answer was served from (entry_id) and
# the one stored from the request it answered (request_id); the ids are unique.
_EVICT_MATCHES: Final = 4
# Compare-and-set rounds beyond the threshold for one rejection: each lost round means another
# user's rejection landed, so ``delete_shared_after`` rounds always reach the deletion.
_EXTRA_REJECT_ROUNDS: Final = 3


@dataclass(frozen=True, slots=True)
class Eviction:
    """What one user's thumbs-down did.

    ``deleted``: entries of the user's own scope, deleted. ``hidden``: entries of a shared scope
    (a tenant, global) newly hidden from this user, of which ``deleted_shared`` were then
    rejected by enough distinct users to be deleted for everyone.
    """

    deleted: int = 0
    hidden: int = 0
    deleted_shared: int = 0
    # The scope of the entry named by id (the answer served), when this call found it: the
    # rejection counts against it (``tuning``). Empty once it is gone (a repeated rejection).
    entry_scope: str = ""

    @property
    def evicted(self) -> int:
        """Entries this user is no longer served because of this call (0 when repeated)."""
        return self.deleted + self.hidden


class _Rejection(enum.Enum):
    UNCHANGED = "unchanged"  # already rejected by this user, or gone
    HIDDEN = "hidden"  # this user is now on its rejected_by
    DELETED = "deleted"  # this user's rejection reached the threshold


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


class Rejections:
    def __init__(self, client: AsyncQdrantClient, collection: str) -> None:
        self._client = client
        self.collection = collection

    async def evict(
        self,
        *,
        user_id: str,
        request_id: str = "",
        entry_id: str = "",
        delete_shared_after: int,
    ) -> Eviction:
        """A thumbs-down by ``user_id`` on the entry stored from ``request_id`` or with id
        ``entry_id``: deleted when it is the user's own, hidden from that user when it is shared
        (a tenant's, global) and deleted for everyone once ``delete_shared_after`` distinct users
        rejected it. Entries of other users' own scopes are never touched.

        The caller vouches that the entry is one this user was served or asked for: the gateway
        takes both ids from the user's own stored message, never from the client.
        """
        if delete_shared_after < 1:
            raise ValueError(f"delete_shared_after must be >= 1, got {delete_shared_after}")
        which: list[models.Condition] = []
        if request_id:
            which.append(match("request_id", request_id))
        if entry_id:
            which.append(models.HasIdCondition(has_id=[entry_id]))
        if not which:
            return Eviction()
        found, _ = await self._client.scroll(
            self.collection,
            scroll_filter=models.Filter(should=which),
            limit=_EVICT_MATCHES,
            with_payload=["scope_key"],
            with_vectors=False,
        )
        own, shared = [], []
        entry_scope = ""
        for point in found:
            scope = str((point.payload or {}).get("scope_key", ""))
            if entry_id and str(point.id) == entry_id:
                entry_scope = scope
            if scope == user_scope(user_id):
                own.append(point.id)
            elif scope and is_shared_scope(scope):
                shared.append(str(point.id))
        if own:
            await self._client.delete(
                self.collection, points_selector=models.PointIdsList(points=own), wait=True
            )
        hidden = deleted_shared = 0
        for shared_id in shared:
            outcome = await self._reject(shared_id, user_id, delete_after=delete_shared_after)
            hidden += outcome is not _Rejection.UNCHANGED
            deleted_shared += outcome is _Rejection.DELETED
        return Eviction(
            deleted=len(own), hidden=hidden, deleted_shared=deleted_shared, entry_scope=entry_scope
        )

    async def _reject(self, entry_id: str, user_id: str, *, delete_after: int) -> _Rejection:
        """Add ``user_id`` to the entry's ``rejected_by``, or delete the entry when that makes
        ``delete_after`` users.

        Qdrant cannot append to a list, so this reads the list and writes it back longer, on
        the condition that it still has the length read (compare-and-set): Qdrant applies a
        shard's updates one at a time, filter included, so of two concurrent rejections that
        read the same list one write matches and the other matches nothing; the loser reads
        again and retries. The list only grows while the entry lives, so its length is a
        version. ``STRONG`` ordering sends the writes through one replica, so that replicas
        apply them in the same order.
        """
        wrote = False
        for _ in range(delete_after + _EXTRA_REJECT_ROUNDS):
            points = await self._client.retrieve(
                self.collection, ids=[entry_id], with_payload=["rejected_by"], with_vectors=False
            )
            if not points:  # deleted meanwhile (other users' rejections, TTL, invalidation)
                return _Rejection.HIDDEN if wrote else _Rejection.UNCHANGED
            seen = _strings((points[0].payload or {}).get("rejected_by"))
            if user_id in seen:
                return _Rejection.HIDDEN if wrote else _Rejection.UNCHANGED
            if len(seen) + 1 >= delete_after:
                await self._client.delete(
                    self.collection,
                    points_selector=models.PointIdsList(points=[entry_id]),
                    wait=True,
                    ordering=models.WriteOrdering.STRONG,
                )
                return _Rejection.DELETED
            unchanged: models.Condition = (
                models.IsEmptyCondition(is_empty=models.PayloadField(key="rejected_by"))
                if not seen
                else models.FieldCondition(
                    key="rejected_by",
                    values_count=models.ValuesCount(gte=len(seen), lte=len(seen)),
                )
            )
            await self._client.set_payload(
                self.collection,
                payload={"rejected_by": [*seen, user_id]},
                points=models.Filter(must=[models.HasIdCondition(has_id=[entry_id]), unchanged]),
                wait=True,
                ordering=models.WriteOrdering.STRONG,
            )
            wrote = True
        log.warning(
            "a rejection of a shared cache entry lost every round to concurrent ones; not recorded",
            extra={"entry_id": entry_id},
        )
        return _Rejection.UNCHANGED
