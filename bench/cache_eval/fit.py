"""Fit the cache's verifier on labelled Quora pairs, calibrate it, and report on pairs it never saw.

Run from the repository root::

    python -m bench.cache_eval.fit                # fit, report, write the weights
    python -m bench.cache_eval.fit --compare      # also the feature sets that were not chosen

The data (``../shared/data/qqp_dev_20k.jsonl`` by default, or ``--data``) is read at run time and
never copied: only the fitted coefficients and the calibration table are written, to
``parley_cache/verifier.json``. Each pair goes, by a hash of its id, to one of three parts:

- ``fit`` (50 %): the coefficients are fitted on it, together with the single-turn pairs of the
  ``tune`` split of ``bench/cache_eval/pairs.jsonl`` (hand-made hard negatives: Quora has few
  pairs that differ in one number, operator or negation);
- ``calibrate`` (25 %): the calibration table (threshold -> measured precision and recall) is
  measured on it, and the service picks its threshold from that table;
- ``test`` (25 %): nothing is chosen on it; the figures printed are measured there (and on the
  ``test`` split of the hand-made pairs), each beside plain MiniLM cosine (what GPTCache and
  most semantic caches do) at the same operating point.

Question vectors are computed once with the bundled all-MiniLM-L6-v2 and kept under
``--cache-dir`` (outside the repository).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from parley_cache.signals import FEATURE_NAMES, pair_features, same_words
from parley_cache.verifier import (
    CALIBRATION_GRID,
    VERIFIER_PATH,
    Calibration,
    VerifierWeights,
)

HANDMADE_PATH = Path(__file__).with_name("pairs.jsonl")
# Hand-made training pairs of what Quora lacks: code, non-English text, added qualifiers, long
# prompts with one changed word. Fit only; the held-out ones are in heldout_pairs.jsonl.
FIT_PAIRS_PATH = Path(__file__).with_name("fit_pairs.jsonl")
# Each hand-made fit pair counts this many times: 400 of them against 10 000 Quora pairs would
# otherwise teach nothing about operators or negation, which Quora rarely shows.
HAND_WEIGHT: float = 2.0
DATA_PATH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qqp_dev_20k.jsonl"
PARTS = ("fit", "calibrate", "test")
L2: float = 1.0  # ridge on the standardized coefficients (not the intercept)

Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class QuoraPair:
    id: str
    a: str
    b: str
    same: bool
    part: str


def part_of(pair_id: object) -> str:
    """A stable part for a pair id: 50 % fit, 25 % calibrate, 25 % test."""
    byte = hashlib.sha256(str(pair_id).encode()).digest()[0]
    return "fit" if byte < 128 else "calibrate" if byte < 192 else "test"


def load_handmade(path: Path) -> list[QuoraPair]:
    """The single-turn pairs of the hand-made set: ``tune`` goes to fit, ``test`` is held out."""
    pairs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            row = json.loads(line)
            if len(row["a"]["turns"]) > 1 or len(row["b"]["turns"]) > 1:
                continue
            pairs.append(
                QuoraPair(
                    f"hand-{number}",
                    row["a"]["turns"][-1]["content"],
                    row["b"]["turns"][-1]["content"],
                    bool(row["same"]),
                    "fit" if row["split"] == "tune" else "hand-test",
                )
            )
    return pairs


def load_fit_pairs(path: Path) -> list[QuoraPair]:
    with path.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return [
        QuoraPair(f"fit-{n}", row["a"], row["b"], bool(row["same"]), "fit")
        for n, row in enumerate(rows)
    ]


def load(path: Path) -> list[QuoraPair]:
    pairs = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            pairs.append(
                QuoraPair(str(row["id"]), row["a"], row["b"], bool(row["same"]), part_of(row["id"]))
            )
    return pairs


def cosines(pairs: Sequence[QuoraPair], cache_dir: Path) -> tuple[Array, dict[str, Array]]:
    """Cosine of each pair's two questions, and every text's vector (each text embedded once:
    the vectors are kept under ``cache_dir``, and only texts not there yet are embedded)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    texts_path, vectors_path = cache_dir / "texts.json", cache_dir / "vectors.npy"
    known: list[str] = []
    vectors = np.zeros((0, 384), dtype=np.float32)
    if texts_path.exists() and vectors_path.exists():
        known, vectors = json.loads(texts_path.read_text(encoding="utf-8")), np.load(vectors_path)
    missing = sorted(({p.a for p in pairs} | {p.b for p in pairs}) - set(known))
    if missing:
        from sentence_transformers import SentenceTransformer

        from parley_cache.embedder import load_default_model_path

        model = SentenceTransformer(load_default_model_path(), device="cpu")
        new = model.encode(missing, batch_size=64, normalize_embeddings=True)
        known, vectors = known + missing, np.vstack([vectors, new.astype(np.float32)])
        np.save(vectors_path, vectors)
        texts_path.write_text(json.dumps(known), encoding="utf-8")
    by_text = {t: vectors[i].astype(np.float64) for i, t in enumerate(known)}
    cos = np.array([float(by_text[p.a] @ by_text[p.b]) for p in pairs])
    return cos, by_text


def fit_logistic(
    x: Array, y: Array, sample_weight: Array, l2: float = L2, steps: int = 30
) -> tuple[Array, float]:
    """L2-regularized, weighted logistic regression by Newton's method: (weights, intercept)."""
    n, d = x.shape
    design = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    ridge = np.full(d + 1, l2)
    ridge[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (sample_weight * (p - y)) + ridge * w
        curvature = sample_weight * p * (1 - p)
        hessian = (design * curvature[:, None]).T @ design + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return w[:-1], float(w[-1])


def precision_recall(scores: Array, y: Array, threshold: float) -> tuple[float, float, int]:
    hits = scores >= threshold
    true_hits = int((hits & (y > 0)).sum())
    n_hits = int(hits.sum())
    precision = true_hits / n_hits if n_hits else 1.0
    return precision, true_hits / max(int((y > 0).sum()), 1), n_hits


def best_recall_at(scores: Array, y: Array, precision: float) -> tuple[float, float]:
    """The highest recall whose precision is at least ``precision``, and its threshold."""
    order = np.argsort(-scores)
    tp = np.cumsum(y[order])
    n = np.arange(1, len(y) + 1)
    ok = np.flatnonzero(tp / n >= precision)
    if not len(ok):
        return 0.0, 1.0
    last = int(ok.max())
    return float(tp[last] / y.sum()), float(scores[order][last])


def precision_at_recall(scores: Array, y: Array, recall: float) -> float:
    order = np.argsort(-scores)
    tp = np.cumsum(y[order])
    k = int(np.searchsorted(tp, math.ceil(recall * y.sum())))
    return float(tp[k] / (k + 1))


def calibration(scores: Array, y: Array) -> Calibration:
    rows = []
    for threshold in CALIBRATION_GRID:
        precision, recall, hits = precision_recall(scores, y, threshold)
        rows.append((threshold, precision, recall, hits))
    return Calibration(rows=tuple(rows), positives=int(y.sum()), pairs=len(y))


FeatureSet = Callable[[Sequence[QuoraPair], Array, dict[str, Array]], Array]


def signal_features(pairs: Sequence[QuoraPair], cos: Array, _: dict[str, Array]) -> Array:
    return np.array([pair_features(p.a, p.b, c) for p, c in zip(pairs, cos, strict=True)])


def cosine_only(pairs: Sequence[QuoraPair], cos: Array, _: dict[str, Array]) -> Array:
    return cos[:, None]


def with_vector_products(
    pairs: Sequence[QuoraPair], cos: Array, vectors: dict[str, Array]
) -> Array:
    """The two vectors' elementwise product and distance: a learned weighting of dimensions."""
    base = signal_features(pairs, cos, vectors)
    prod = np.array([vectors[p.a] * vectors[p.b] for p in pairs])
    dist = np.array([np.abs(vectors[p.a] - vectors[p.b]) for p in pairs])
    return np.hstack([base, prod, dist])


FEATURE_SETS: dict[str, FeatureSet] = {
    "cosine (logistic)": cosine_only,
    "signals": signal_features,
    "signals + vector products": with_vector_products,
}


def fit_and_score(
    x: Array,
    y: Array,
    parts: npt.NDArray[np.str_],
    sample_weight: Array,
    decided: npt.NDArray[np.bool_],
) -> tuple[Array, Array, float, Array, Array]:
    """Standardize on the fit part, fit there; (scores of all, weights, intercept, mean, std).

    ``decided``: pairs the verifier scores 1.0 before the model (``same_words``): left out of
    the fit, scored 1.0 in every part."""
    fit = (parts == "fit") & ~decided
    mean, std = x[fit].mean(axis=0), x[fit].std(axis=0)
    std[std == 0] = 1.0
    z = (x - mean) / std
    weights, intercept = fit_logistic(z[fit], y[fit], sample_weight[fit])
    scores = np.where(decided, 1.0, 1.0 / (1.0 + np.exp(-(z @ weights + intercept))))
    return scores, weights, intercept, mean, std


def report_row(name: str, scores: Array, y: Array, cos: Array) -> str:
    recall95, _ = best_recall_at(scores, y, 0.95)
    recall98, _ = best_recall_at(scores, y, 0.98)
    base95, _ = best_recall_at(cos, y, 0.95)
    base98, _ = best_recall_at(cos, y, 0.98)
    p50, base_p50 = precision_at_recall(scores, y, 0.5), precision_at_recall(cos, y, 0.5)
    return (
        f"| {name} | {p50:.3f} ({base_p50:.3f}) | {recall95:.3f} ({base95:.3f}) "
        f"| {recall98:.3f} ({base98:.3f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_PATH)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/parley-cache-eval"))
    parser.add_argument("--out", type=Path, default=VERIFIER_PATH)
    parser.add_argument("--compare", action="store_true", help="also the feature sets not chosen")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    quora = load(args.data)
    pairs = quora + load_handmade(HANDMADE_PATH) + load_fit_pairs(FIT_PAIRS_PATH)
    y = np.array([float(p.same) for p in pairs])
    parts = np.array([p.part for p in pairs])
    sample_weight = np.array([1.0 if i < len(quora) else HAND_WEIGHT for i in range(len(pairs))])
    cos, vectors = cosines(pairs, args.cache_dir)
    decided = np.array([same_words(p.a, p.b) for p in pairs])
    test, hand_test = parts == "test", parts == "hand-test"
    counts = {part: int((parts == part).sum()) for part in (*PARTS, "hand-test")}
    print(f"Quora pairs: {len(quora)}, hand-made single-turn pairs: {len(pairs) - len(quora)}")
    print(f"Parts: {counts} (fit: Quora's fit part and the hand-made tune split).\n")
    print("Baseline in brackets: plain MiniLM cosine on the same pairs.\n")
    print("| method | held out | precision at recall 0.50 | recall at precision 0.95 | at 0.98 |")
    print("|---|---|---|---|---|")
    for label, mask in (("Quora test", test), ("hand-made test", hand_test)):
        print(report_row(f"plain cosine | {label}", cos[mask], y[mask], cos[mask]))
    chosen = {"signals": FEATURE_SETS["signals"]}
    for name, make in (FEATURE_SETS if args.compare else chosen).items():
        x = make(pairs, cos, vectors)
        scores, *_ = fit_and_score(x, y, parts, sample_weight, decided)
        for label, mask in (("Quora test", test), ("hand-made test", hand_test)):
            print(report_row(f"{name} | {label}", scores[mask], y[mask], cos[mask]))

    x = signal_features(pairs, cos, vectors)
    scores, weights, intercept, mean, std = fit_and_score(x, y, parts, sample_weight, decided)
    calib = parts == "calibrate"  # Quora pairs only: the real users' questions
    table = calibration(scores[calib], y[calib])
    print(
        "\nCalibration (measured on the calibrate part), and the test part at the same threshold:\n"
    )
    print(
        "| max error | threshold | calibrate precision | Quora test precision | recall "
        "| cosine's precision at that recall | hand-made test precision / recall | cosine's |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for max_error in (0.02, 0.05, 0.10, 0.15, 0.20):
        threshold = table.threshold_for(max_error)
        precision, recall, _ = precision_recall(scores[test], y[test], threshold)
        hand_precision, hand_recall, _ = precision_recall(
            scores[hand_test], y[hand_test], threshold
        )
        cal_precision, _ = table.measured(threshold)
        base = precision_at_recall(cos[test], y[test], recall) if recall > 0 else 1.0
        hand_base = (
            precision_at_recall(cos[hand_test], y[hand_test], hand_recall) if hand_recall else 1.0
        )
        print(
            f"| {max_error:.2f} | {threshold:.3f} | {cal_precision:.3f} | {precision:.3f} "
            f"| {recall:.3f} | {base:.3f} | {hand_precision:.3f} / {hand_recall:.3f} "
            f"| {hand_base:.3f} |"
        )
    print("\nCoefficients (standardized features):")
    for name, w in zip(FEATURE_NAMES, weights, strict=True):
        print(f"  {name:24s} {w:+.3f}")
    if not args.no_write:
        VerifierWeights(
            names=FEATURE_NAMES,
            mean=tuple(float(v) for v in mean),
            scale=tuple(float(v) for v in std),
            coefficients=tuple(float(v) for v in weights),
            intercept=intercept,
            calibration=table,
        ).write(args.out)
        print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
