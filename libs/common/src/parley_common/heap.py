"""The start-up heap of a long-running service, kept out of the garbage collector's way.

What a service builds before it serves (imported modules, the embedding model, the tokenizer,
the gRPC and HTTP wiring) lives until the process ends, yet every full collection of CPython's
cyclic garbage collector walks all of it again: in the cache service, half a million objects and
~300 ms with the world stopped — on the event loop or on a thread deciding a lookup, whichever
allocated last (`python -m bench.gc_pauses`). `freeze_startup_heap()` collects once, then moves
everything alive to the collector's permanent generation (`gc.freeze`), so later collections
walk only what was made while serving. Call it once, when start-up is done.
"""

from __future__ import annotations

import gc
import logging
import time

__all__ = ["freeze_startup_heap"]

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect, then freeze what is alive; returns how many objects were frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "start-up heap frozen",
        extra={"objects": frozen, "ms": round((time.perf_counter() - started) * 1000, 1)},
    )
    return frozen
