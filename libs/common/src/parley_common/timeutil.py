from __future__ import annotations

import time

__all__ = ["now_ms"]


def now_ms() -> int:
    """Wall-clock time in Unix milliseconds (what crosses process boundaries)."""
    return time.time_ns() // 1_000_000
