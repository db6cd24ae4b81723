"""Keeping the measured error under the operator's rate online: feedback raises a scope's bar.

The threshold a lookup uses comes from the verifier's calibration table for the error rate the
operator set. Offline measurements do not know one scope's traffic, so the service also counts,
per scope, the hits it served and the ones users rejected (a thumbs-down on a served answer, or a
regenerate right after it: both arrive as ``Evict`` with the served entry's id). When a scope's
observed error rate, smoothed towards the rate the table promised, exceeds the operator's rate,
the scope is looked up as if the operator had asked for a proportionally smaller rate: a higher
threshold from the same table.

Counts are kept in memory per replica, for the most recent ``max_scopes`` scopes: enough to react
within a session of use; nothing here needs to survive a restart to stay safe, since a restart
only falls back to the calibrated threshold.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from parley_cache.verifier import Calibration

__all__ = ["FeedbackTuner"]

# How many served hits the prior is worth, and the rejections a scope needs before its bar moves:
# one user's thumbs-down evicts the entry (Evict), and must not also shut the scope off.
_PRIOR_HITS: Final = 20.0
_MIN_REJECTIONS: Final = 3
_SERVED_MEMORY: Final = 100_000  # served entry ids remembered, to attribute a later rejection


@dataclass(slots=True)
class _Counts:
    hits: int = 0
    rejected: int = 0


class FeedbackTuner:
    def __init__(self, calibration: Calibration, *, max_scopes: int = 10_000) -> None:
        self._calibration = calibration
        self._max_scopes = max_scopes
        self._scopes: OrderedDict[str, _Counts] = OrderedDict()
        self._served: OrderedDict[str, str] = OrderedDict()  # entry id -> scope

    def threshold(self, scope: str, max_error: float) -> float:
        """The verifier threshold for a lookup in ``scope`` at the operator's ``max_error``."""
        counts = self._scopes.get(scope)
        if counts is None or counts.rejected < _MIN_REJECTIONS:
            return self._calibration.threshold_for(max_error)
        observed = (counts.rejected + _PRIOR_HITS * max_error) / (counts.hits + _PRIOR_HITS)
        if observed <= max_error:
            return self._calibration.threshold_for(max_error)
        return self._calibration.threshold_for(max_error * max_error / observed)

    def served(self, scope: str, entry_id: str) -> None:
        self._counts(scope).hits += 1
        self._served[entry_id] = scope
        self._served.move_to_end(entry_id)
        while len(self._served) > _SERVED_MEMORY:
            self._served.popitem(last=False)

    def rejected(self, entry_id: str) -> None:
        """A user rejected the answer of ``entry_id``; counts only if this replica served it."""
        scope = self._served.pop(entry_id, None)
        if scope is not None:
            self._counts(scope).rejected += 1

    def _counts(self, scope: str) -> _Counts:
        counts = self._scopes.get(scope)
        if counts is None:
            counts = self._scopes[scope] = _Counts()
            while len(self._scopes) > self._max_scopes:
                self._scopes.popitem(last=False)
        else:
            self._scopes.move_to_end(scope)
        return counts
