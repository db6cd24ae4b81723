"""Start-up time of `make run`: on a new (cold) data folder, then again on the same (warm) one.

    python -m bench.startup                      # the default engine (vLLM) and model
    python -m bench.startup --engine transformers

Each start runs the launcher (`python -m parley_devstack.launcher`, what `make run` runs) on a
data folder of its own under a temporary directory, waits for its "Parley is up" banner, answers
one chat turn, then stops it with Ctrl-C (SIGINT). Printed: seconds to the banner and to the
first answer for both starts, and the machine's load, which start-up time depends on heavily
(vLLM compiles the model at every start).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._harness import REPO, machine
from parley_devstack.ports import pick_free_ports


def _start(data: Path, engine: str, log: Path) -> tuple[float, float]:
    port = pick_free_ports(1)[0]
    env = {**os.environ, "PARLEY_DATA_DIR": str(data)}
    command = [sys.executable, "-m", "parley_devstack.launcher", "run", "--engine", engine]
    command += ["--port", str(port), "--run-dir", str(log.parent / "services")]
    began = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        while "Parley is up" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise SystemExit(f"the launcher exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        up = time.monotonic() - began
        key = log.read_text().split("demo API key:", 1)[1].split()[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/chat",
            data=json.dumps({"message": "Hello!", "max_tokens": 8, "no_cache": True}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
        answered = time.monotonic() - began
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    return up, answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="vllm", choices=["vllm", "transformers", "fake"])
    args = parser.parse_args()
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="parley-startup-") as scratch:
        data = Path(scratch) / "data"
        cold = _start(data, args.engine, Path(scratch) / "cold.log")
        warm = _start(data, args.engine, Path(scratch) / "warm.log")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"## Start-up of `make run` ({args.engine} engine)\n")
    print("| data folder | to the banner s | to the first answer s |\n|---|---|---|")
    print(f"| cold (new) | {cold[0]:.1f} | {cold[1]:.1f} |")
    print(f"| warm (reused) | {warm[0]:.1f} | {warm[1]:.1f} |")
    print(f"\nload average at the end: {load}")


if __name__ == "__main__":
    main()
