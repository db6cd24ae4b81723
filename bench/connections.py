"""Open connections: how many concurrent streaming clients one gateway process holds, and the
memory each costs.

Clients open SSE streams at a steady rate; each stream is a turn the fake engine answers at one
token a second, so it stays open (and receives a chunk every second) until every client is in.
Counted: streams open at the same time (a first chunk read, no `done` yet), errors, and the
gateway's resident memory (RSS) idle and at the peak; memory per stream = the difference divided
by the streams open.

Run from the repository root: `python -m bench.connections [--quick] [--streams N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from bench._harness import Bench, machine, progress, rss_kib, table
from bench._http import HttpError

__all__ = ["run"]

TARGET = 1000
OPEN_PER_S = 40.0  # how fast clients arrive; about what StartTurn sustains on 2 busy cores


@dataclass
class Tally:
    open: int = 0
    finished: int = 0
    peak_open: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    chunks: int = 0


async def run(bench: Bench, *, quick: bool = False, streams: int | None = None) -> str:
    count = streams or (200 if quick else TARGET)
    ramp_s = count / OPEN_PER_S
    hold_tokens = int(ramp_s + 20)  # one token a second: open until everyone is in, and then some
    bench.restart_workers(
        {"FAKE_TTFT_S": "0", "FAKE_TOKENS_PER_S": "1", "MAX_CONCURRENCY": str(count + 100)}
    )
    keys = await bench.create_users(min(count, 100))
    gateway_pid = bench.pids()["gateway-0"]
    tally = Tally()
    # One turn first: the idle figure then includes what a gateway allocates on its first turn.
    async with bench.connection() as conn:
        await conn.request("POST", "/chat", {"message": "warm up", "max_tokens": 2}, keys[0])
    await asyncio.sleep(1)
    idle_kib = rss_kib(gateway_pid)
    peak_kib = idle_kib

    async def client(index: int) -> None:
        await asyncio.sleep(index / OPEN_PER_S)
        body = {
            "message": f"Stay a while {index} {secrets.token_hex(4)}",
            "max_tokens": hold_tokens,
            "stream": True,
            "no_cache": True,
        }
        opened = False
        done = False
        errors_before = sum(tally.errors.values())
        try:
            async with bench.connection(timeout=hold_tokens + 120) as conn:
                async for event, data, _ in conn.events(
                    "POST", "/chat", body, keys[index % len(keys)]
                ):
                    if event == "chunk":
                        tally.chunks += 1
                        if not opened:
                            opened = True
                            tally.open += 1
                            tally.peak_open = max(tally.peak_open, tally.open)
                    elif event == "done":
                        done = True
                    elif event == "error":
                        tally.errors[str(data["type"])] += 1
        except HttpError as exc:
            tally.errors[f"HTTP {exc.status}"] += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            tally.errors[type(exc).__name__] += 1
        finally:
            if opened:
                tally.open -= 1
            if done:
                tally.finished += 1
            elif sum(tally.errors.values()) == errors_before:
                tally.errors["no done event"] += 1

    async def watch() -> None:
        nonlocal peak_kib
        while True:
            await asyncio.sleep(0.5)
            if tally.open >= tally.peak_open:
                peak_kib = max(peak_kib, rss_kib(gateway_pid))

    progress(f"connections: opening {count} streams")
    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(count)))
    seconds = time.perf_counter() - started
    watcher.cancel()
    after_kib = rss_kib(gateway_pid)
    errors = count - tally.finished
    per_stream = (peak_kib - idle_kib) / max(tally.peak_open, 1)
    met = tally.peak_open >= TARGET and errors == 0
    rows = [
        ["streams opened", str(count)],
        ["open at the same time (peak)", f"**{tally.peak_open}**"],
        ["completed with a `done` event", str(tally.finished)],
        ["errors", ", ".join(f"{k}: {v}" for k, v in tally.errors.items() if v) or "0"],
        ["chunks relayed", f"{tally.chunks:,} in {seconds:.0f} s"],
        [
            "gateway RSS idle / at the peak / after",
            f"{idle_kib / 1024:.0f} / {peak_kib / 1024:.0f} / {after_kib / 1024:.0f} MiB",
        ],
        ["memory per open stream", f"**{per_stream:.0f} KiB**"],
    ]
    return (
        "## Open connections\n\n"
        f"{count} clients arrive at {OPEN_PER_S:.0f} a second on one gateway process; each "
        f"streams a {hold_tokens}-token answer at one token a second.\n\n"
        + table(["", ""], rows)
        + f"\n\nTarget: {TARGET} streams held at once with no errors: "
        f"**{'met' if met else 'missed' if count >= TARGET else 'not tried (quick run)'}**.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 streams instead of 1,000")
    parser.add_argument("--streams", type=int, default=None)
    args = parser.parse_args()
    print("\n".join(f"- {k}: {v}" for k, v in machine().items()), flush=True)
    with Bench(gateway_env={"MAX_QUEUE_DEPTH": "0"}) as bench:
        print(asyncio.run(run(bench, quick=args.quick, streams=args.streams)))


if __name__ == "__main__":
    main()
