"""The semantic cache's evaluation.

Run from the repository root::

    python -m bench.cache_eval score PAIRS.jsonl --out DECISIONS.jsonl   # any labelled pairs
    python -m bench.cache_eval                                           # the bundled pairs
    python -m bench.cache_eval.fit                                       # fit the verifier
    python -m bench.cache_eval.latency                                   # lookup latency

``score`` runs each pair through a real Qdrant and the real cache service (``score.py``); without
a command, it scores ``pairs.jsonl``, ``heldout_pairs.jsonl``,
``blind_pairs.jsonl``, ``blind2_pairs.jsonl`` and ``blind3_pairs.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.cache_eval import score

HERE = Path(__file__).parent
BUNDLED = (
    HERE / "pairs.jsonl",
    HERE / "heldout_pairs.jsonl",
    HERE / "blind_pairs.jsonl",
    HERE / "blind2_pairs.jsonl",
    HERE / "blind3_pairs.jsonl",
)


def main(argv: list[str]) -> None:
    if not argv:
        for path in BUNDLED:
            print(f"## {path.name}")
            score.run(score.parse([str(path)]))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.cache_eval")
    commands = parser.add_subparsers(dest="command", required=True)
    score.add_arguments(commands.add_parser("score", help=score.__doc__.split("\n")[0]))
    score.run(parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
