"""How far Quora's labels can be trusted where the cache hits: a second, blind annotation.

Run from the repository root::

    python -m bench.cache_eval.audit

The sample (``quora_audit.jsonl``: pair ids and the second label only, never the questions) is the
verifier's hits on the held-out ``test`` quarter at the default ``CACHE_MAX_ERROR_RATE`` 0.15
(threshold 0.790, verifier of commit 69bdb3e): 827 hits, of which Quora labels 125 "not
duplicate" (all 125 audited) and 702 "duplicate" (80 drawn at random). Each pair was labelled
again by an annotator who saw only the two questions (not Quora's label, not the score), asking
the cache's question: would one good answer to the first be a correct, complete answer to the
second? Labels: ``same``, ``different``, ``unsure``.

It prints the agreement, the precision at that operating point under each reading, and the
precision on Quora's labels of a judge that decided exactly as the second annotator did (the
most any method that judges meaning the same way could show there).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from bench.cache_eval.fit import DATA_PATH

AUDIT_PATH = Path(__file__).with_name("quora_audit.jsonl")
# The frame the sample was drawn from (see the module docstring).
HITS, QUORA_WRONG, QUORA_RIGHT = 827, 125, 702


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_PATH)
    args = parser.parse_args()
    quora = {}
    with args.data.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            quora[str(row["id"])] = bool(row["same"])
    rows = [json.loads(line) for line in AUDIT_PATH.open(encoding="utf-8") if line.strip()]
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        expected = "wrong_hit" if not quora[row["id"]] else "right_hit"
        if expected != row["sample"]:
            raise SystemExit(f"pair {row['id']}: Quora's label does not match the sample's")
        counts[(row["sample"], row["second_label"])] += 1
    print("Second, blind annotation of the verifier's hits (Quora test quarter, threshold 0.790)\n")
    print("| Quora's label | pairs in frame | audited | second: same | different | unsure |")
    print("|---|---|---|---|---|---|")
    shares = {}
    for sample, label, frame in (
        ("right_hit", "duplicate", QUORA_RIGHT),
        ("wrong_hit", "not duplicate", QUORA_WRONG),
    ):
        same, different, unsure = (counts[(sample, x)] for x in ("same", "different", "unsure"))
        audited = same + different + unsure
        shares[sample] = same / audited
        print(f"| {label} | {frame} | {audited} | {same} | {different} | {unsure} |")
    quora_precision = QUORA_RIGHT / HITS
    second_same = QUORA_RIGHT * shares["right_hit"] + QUORA_WRONG * shares["wrong_hit"]
    second_precision = second_same / HITS
    # A judge hitting exactly the pairs the second annotator calls "same", scored on Quora's labels.
    judge_on_quora = QUORA_RIGHT * shares["right_hit"] / second_same
    print(f"\nprecision on Quora's labels: {quora_precision:.3f}")
    print(f"precision on the second annotation (estimated from the sample): {second_precision:.3f}")
    print(
        "a judge deciding as the second annotator, on Quora's labels: "
        f"{judge_on_quora:.3f} (its hits: {second_same:.0f} of {HITS})"
    )


if __name__ == "__main__":
    main()
