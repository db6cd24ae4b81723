"""`freeze_startup_heap`: what is alive at start-up leaves the collector's walks; garbage made
before it is still collected, and what is made afterwards is collected as usual."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import gc, weakref
from parley_common.heap import freeze_startup_heap

class Node:
    pass

kept = [[i] for i in range(50_000)]           # start-up state: lives on
cycle = Node(); cycle.me = cycle               # start-up garbage: a cycle nobody holds
gone = weakref.ref(cycle); del cycle
frozen = freeze_startup_heap()
assert gone() is None, "garbage from start-up was frozen instead of collected"
assert frozen >= 50_000, frozen
assert len(gc.get_objects()) < 1_000, len(gc.get_objects())   # a full walk skips them now
later = Node(); later.me = later                # made while serving: still collected
ref = weakref.ref(later); del later
gc.collect()
assert ref() is None
print("ok")
"""


def test_start_up_objects_leave_the_collectors_walks_and_garbage_is_still_collected() -> None:
    # In a process of its own: freezing is for the whole process, this one is pytest's.
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
