"""The learned verifier: is a stored question's answer right for the question asked?

A logistic regression over ``parley_cache.signals`` (the MiniLM cosine, word and character
trigram overlap, words one side adds, numbers, symbols, negation, names, length), fitted on real
users' question pairs by ``python -m bench.cache_eval.fit``; its coefficients and a calibration
table are in ``verifier.json`` beside this module. The output is a probability that the two
questions have the same answer.

The calibration table says, for each threshold on that probability, the precision and recall
measured on pairs the coefficients were not fitted on. An operator states the share of wrong
hits they accept (``CACHE_MAX_ERROR_RATE`` or a bot profile's value) and
:meth:`Calibration.threshold_for` turns it into the lowest threshold whose measured precision,
and that of every threshold above it, is at least ``1 - max_error``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from parley_cache.signals import FEATURE_NAMES, difference, pair_features

__all__ = [
    "CALIBRATION_GRID",
    "VERIFIER_PATH",
    "Calibration",
    "Verifier",
    "VerifierWeights",
    "default_verifier",
]

VERIFIER_PATH: Final = Path(__file__).with_name("verifier.json")
CALIBRATION_GRID: Final = tuple(round(0.5 + 0.005 * i, 3) for i in range(100))  # 0.5 .. 0.995
# A threshold is trusted only when it served this many calibration pairs: fewer are noise.
_MIN_HITS: Final = 100


@dataclass(frozen=True, slots=True)
class Calibration:
    rows: tuple[tuple[float, float, float, int], ...]  # threshold, precision, recall, hits
    positives: int
    pairs: int

    def threshold_for(self, max_error: float) -> float:
        """The lowest threshold at and above which measured precision is >= 1 - max_error."""
        chosen = 1.0
        for threshold, precision, _, hits in sorted(self.rows, reverse=True):
            if hits < _MIN_HITS:
                continue
            if precision < 1.0 - max_error:
                break
            chosen = threshold
        return chosen

    def measured(self, threshold: float) -> tuple[float, float]:
        """(precision, recall) measured at the highest table threshold not above ``threshold``."""
        best = (1.0, 0.0)
        for row_threshold, precision, recall, _ in sorted(self.rows):
            if row_threshold > threshold:
                break
            best = (precision, recall)
        return best


@dataclass(frozen=True, slots=True)
class VerifierWeights:
    names: Sequence[str]
    mean: Sequence[float]
    scale: Sequence[float]
    coefficients: Sequence[float]
    intercept: float
    calibration: Calibration

    def write(self, path: Path) -> None:
        document = {
            "about": "fitted by python -m bench.cache_eval.fit on the fit part of Quora pairs; "
            "calibration measured on the calibrate part",
            "features": list(self.names),
            "mean": [round(v, 6) for v in self.mean],
            "scale": [round(v, 6) for v in self.scale],
            "coefficients": [round(v, 6) for v in self.coefficients],
            "intercept": round(self.intercept, 6),
            "calibration": {
                "pairs": self.calibration.pairs,
                "positives": self.calibration.positives,
                "rows": [
                    {"threshold": t, "precision": round(p, 4), "recall": round(r, 4), "hits": h}
                    for t, p, r, h in self.calibration.rows
                ],
            },
        }
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> VerifierWeights:
        document = json.loads(path.read_text(encoding="utf-8"))
        if tuple(document["features"]) != FEATURE_NAMES:
            raise ValueError(f"{path}: fitted for other features; run bench.cache_eval.fit")
        table = document["calibration"]
        return cls(
            names=tuple(document["features"]),
            mean=tuple(document["mean"]),
            scale=tuple(document["scale"]),
            coefficients=tuple(document["coefficients"]),
            intercept=float(document["intercept"]),
            calibration=Calibration(
                rows=tuple(
                    (r["threshold"], r["precision"], r["recall"], r["hits"]) for r in table["rows"]
                ),
                positives=table["positives"],
                pairs=table["pairs"],
            ),
        )


class Verifier:
    def __init__(self, weights: VerifierWeights) -> None:
        self.weights = weights
        # Folded once: w·((x - mean) / scale) + b == (w / scale)·x + (b - Σ w·mean / scale).
        self._slopes = [w / s for w, s in zip(weights.coefficients, weights.scale, strict=True)]
        self._offset = weights.intercept - sum(
            k * m for k, m in zip(self._slopes, weights.mean, strict=True)
        )

    def score(self, stored: str, asked: str, cosine: float) -> float:
        """Probability that ``stored``'s answer is right for ``asked`` (cosine: their vectors')."""
        # Quora's pairs that differ in punctuation alone are mostly labelled "different" (that is
        # how its negatives were sampled), so a fitted model would learn the opposite of what a
        # cache needs; such pairs are decided before it.
        diff = difference(stored, asked)  # what same_words reads, computed once for both
        if diff.same:
            return 1.0
        features = pair_features(stored, asked, cosine, diff)
        logit = self._offset + sum(k * x for k, x in zip(self._slopes, features, strict=True))
        return 1.0 / (1.0 + math.exp(-max(min(logit, 40.0), -40.0)))


@cache
def default_verifier() -> Verifier:
    return Verifier(VerifierWeights.read(VERIFIER_PATH))
