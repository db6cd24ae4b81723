"""A cross-encoder as the cache's pair model, measured against the shipped verifier (not shipped).

Run from the repository root (about 15 minutes on two cores)::

    python -m bench.cache_eval.cross_encoder [--epochs 1]

all-MiniLM-L6-v2 (the cache's own embedding model) with a one-logit head, fine-tuned on the
``fit`` half of ``../shared/data/qqp_dev_20k.jsonl`` (both orders of each pair, binary
cross-entropy), then scored on the ``calibrate`` and ``test`` quarters (the mean of both orders)
with the same figures ``fit`` prints, and timed on one pair at a time on one thread, as the
service would run it. Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np

from bench.cache_eval.fit import DATA_PATH, best_recall_at, load, precision_at_recall

MAX_TOKENS = 96
BATCH = 32


def main() -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from parley_cache.embedder import load_default_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_PATH)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    random.seed(0)
    torch.manual_seed(0)
    pairs = load(args.data)
    fit = [p for p in pairs if p.part == "fit"]
    path = load_default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    steps = int(len(fit) * args.epochs / BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, (steps - s) / steps)
    )
    loss_of = torch.nn.BCEWithLogitsLoss()
    model.train()
    step, started = 0, time.monotonic()
    while step < steps:
        random.shuffle(fit)
        for i in range(0, len(fit) - BATCH + 1, BATCH):
            if step >= steps:
                break
            batch = fit[i : i + BATCH]
            first = [p.a if k % 2 else p.b for k, p in enumerate(batch)]
            second = [p.b if k % 2 else p.a for k, p in enumerate(batch)]
            encoded = tokenizer(
                first, second, truncation=True, max_length=MAX_TOKENS, padding=True,
                return_tensors="pt",
            )  # fmt: skip
            target = torch.tensor([float(p.same) for p in batch])
            loss = loss_of(model(**encoded).logits.squeeze(-1), target)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 50 == 0:
                print(
                    f"step {step}/{steps} loss {loss.item():.3f} {time.monotonic() - started:.0f} s"
                )
    model.eval()

    def logits(first: list[str], second: list[str]) -> list[float]:
        encoded = tokenizer(
            first, second, truncation=True, max_length=MAX_TOKENS, padding=True,
            return_tensors="pt",
        )  # fmt: skip
        return [float(v) for v in model(**encoded).logits.squeeze(-1)]

    print("\n| part | pairs | precision at recall 0.50 | recall at precision 0.95 |")
    print("|---|---|---|---|")
    with torch.no_grad():
        for part in ("calibrate", "test"):
            chosen = [p for p in pairs if p.part == part]
            scores: list[float] = []
            for i in range(0, len(chosen), 64):
                batch = chosen[i : i + 64]
                ab = logits([p.a for p in batch], [p.b for p in batch])
                ba = logits([p.b for p in batch], [p.a for p in batch])
                scores.extend((x + y) / 2 for x, y in zip(ab, ba, strict=True))
            s, y = np.array(scores), np.array([float(p.same) for p in chosen])
            recall95, _ = best_recall_at(s, y, 0.95)
            print(
                f"| {part} | {len(chosen)} | {precision_at_recall(s, y, 0.5):.3f} | {recall95:.3f} |"
            )
        torch.set_num_threads(1)
        times = []
        for p in [p for p in pairs if p.part == "test"][:200]:
            began = time.perf_counter()
            logits([p.a], [p.b])
            times.append((time.perf_counter() - began) * 1000)
    times.sort()
    print(
        f"\none pair, one thread: p50 {statistics.median(times):.1f} ms, "
        f"p99 {times[int(0.99 * len(times)) - 1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
