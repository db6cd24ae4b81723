"""Parley beside a peer: LiteLLM's proxy and Parley in front of the same fake engine, one run.

    python -m bench.peer                  # 1, 10 and 50 clients, 20 s a level
    python -m bench.peer --levels 1,10 --seconds 10 --only engine,litellm,parley-v1

Measured in the same run, with the same closed-loop streaming clients (each sends its next request
when the last one has ended) and an engine that answers 16 tokens after 50 ms:

- `engine`: the fake engine alone, an OpenAI-compatible server (`bench._fake_openai`);
- `litellm`: LiteLLM's proxy (PyPI `litellm[proxy]`, pinned below, one worker, in a virtualenv of
  its own, `.venv-litellm`) in front of that server;
- `parley-v1`: Parley's `/v1/chat/completions`, stateless, the cache skipped
  (`Cache-Control: no-cache`); its workers run the fake engine with the same pacing;
- `parley-v1-cache`: the same with the cache looked up (every question new: a miss);
- `parley-chat`: a full chat turn, `POST /chat` streamed (history stored, cache lookup, Kafka, the
  answer stored).

Printed per level: TTFT and total p50/p99, the latency added to the engine alone, requests/s,
errors by type, CPU milliseconds per request of each process, and ratios to LiteLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench._harness import REPO, machine, pct
from parley_devstack.platform import Platform
from parley_devstack.ports import pick_free_ports
from parley_devstack.stack import LocalStack

# Not 1.82.7, 1.82.8 or 1.107.0: those releases were reported compromised.
LITELLM = "litellm[proxy]==1.106.12"
LITELLM_VENV = REPO / ".venv-litellm"
TTFT_S = 0.05
TOKENS = 16
SCENARIOS = ["engine", "litellm", "parley-v1", "parley-v1-cache", "parley-chat"]
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Level:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)


def _ensure_litellm() -> Path:
    python = LITELLM_VENV / "bin" / "python"
    stamp = LITELLM_VENV / f".installed-{LITELLM}"
    if not stamp.exists():
        print(f"installing {LITELLM} into {LITELLM_VENV} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", LITELLM], check=True)
        stamp.touch()
    return LITELLM_VENV / "bin" / "litellm"


def _wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def _process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    try:
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_s(pids: dict[str, list[int]]) -> dict[str, float]:
    used: dict[str, float] = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        used[name] = total / _TICKS
    return used


async def _client(
    http: httpx.AsyncClient, url: str, body_for: object, headers: dict[str, str], level: Level,
    until: float, chat: bool,
) -> None:  # fmt: skip
    n = 0
    while time.monotonic() < until:
        n += 1
        body = body_for(n) if callable(body_for) else body_for
        sent = time.monotonic()
        first = 0.0
        try:
            async with http.stream("POST", url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    level.errors[f"HTTP {response.status_code}"] += 1
                    await response.aread()
                    continue
                async for line in response.aiter_lines():
                    if not first and _has_text(line, chat):
                        first = time.monotonic() - sent
        except httpx.HTTPError as exc:
            level.errors[type(exc).__name__] += 1
            continue
        if not first:
            level.errors["no text"] += 1
            continue
        level.ttft.append(first)
        level.total.append(time.monotonic() - sent)


def _has_text(line: str, chat: bool) -> bool:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return False
    data = json.loads(line[6:])
    if chat:
        return bool(data.get("text"))
    choices = data.get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


async def _measure(
    url: str, *, clients: int, seconds: float, headers: dict[str, str], chat: bool,
    unique: bool, pids: dict[str, list[int]],
) -> Level:  # fmt: skip
    level = Level()
    salt = os.urandom(4).hex()

    def body(n: int, client: int) -> dict[str, object]:
        question = f"Question {salt} {client} {n}" if unique else "Tell me about owls"
        if chat:
            return {"message": question, "max_tokens": TOKENS, "stream": True}
        return {
            "model": "fake",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": TOKENS,
            "stream": True,
        }

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        # Warm-up: connections opened, first-call costs paid.
        await _client(http, url, body(0, 0), headers, Level(), time.monotonic() + 1, chat)
        before = _cpu_s(pids)
        began = time.monotonic()
        until = began + seconds
        await asyncio.gather(
            *(
                _client(http, url, lambda n, c=c: body(n, c), headers, level, until, chat)
                for c in range(clients)
            )
        )
        level.wall = time.monotonic() - began
        after = _cpu_s(pids)
    done = max(len(level.total), 1)
    level.cpu_ms = {name: 1000 * (after[name] - before[name]) / done for name in pids}
    return level


def _row(name: str, clients: int, level: Level, engine: Level | None) -> list[str]:
    def p(values: list[float], q: float) -> str:
        return f"{1000 * pct(values, q):.0f}" if values else "-"

    added = "-"
    if engine is not None and engine.ttft and level.ttft:
        added = f"{1000 * (statistics.median(level.ttft) - statistics.median(engine.ttft)):.0f}"
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in level.cpu_ms.items() if v >= 0.05) or "-"
    errors = ", ".join(f"{k}: {v}" for k, v in level.errors.items()) or "0"
    rate = len(level.total) / level.wall if level.wall else 0.0
    return [
        name, str(clients), p(level.ttft, 50), p(level.ttft, 99), added,
        p(level.total, 50), p(level.total, 99), f"{rate:.1f}", errors, cpu,
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    chosen = [s for s in SCENARIOS if s in args.only.split(",")]
    print(machine(), flush=True)
    litellm = _ensure_litellm() if "litellm" in chosen else None
    engine_port, litellm_port = pick_free_ports(2)
    scratch = Path(tempfile.mkdtemp(prefix="parley-peer-"))
    engine_cmd = [sys.executable, "-m", "bench._fake_openai", "--port", str(engine_port)]
    engine_cmd += ["--ttft", str(TTFT_S)]
    config = scratch / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: fake\n    litellm_params:\n      model: openai/fake\n"
        f"      api_base: http://127.0.0.1:{engine_port}/v1\n      api_key: none\n"
    )
    results: dict[tuple[str, int], Level] = {}
    with _process(engine_cmd, scratch / "engine.log") as engine_pid:
        _wait_http(f"http://127.0.0.1:{engine_port}/v1/models")
        engine_url = f"http://127.0.0.1:{engine_port}/v1/chat/completions"
        if "engine" in chosen:
            for clients in levels:
                results["engine", clients] = asyncio.run(
                    _measure(engine_url, clients=clients, seconds=args.seconds, headers={},
                             chat=False, unique=True, pids={"engine": [engine_pid]})
                )  # fmt: skip
        if litellm is not None:
            command = [str(litellm), "--config", str(config), "--port", str(litellm_port)]
            command += ["--num_workers", "1"]
            # Like Parley, the proxy checks a key on every request (it refuses to start without).
            master = "sk-" + os.urandom(32).hex()
            auth = {"Authorization": f"Bearer {master}"}
            litellm_env = {"LITELLM_MASTER_KEY": master}
            with _process(command, scratch / "litellm.log", litellm_env) as litellm_pid:
                _wait_http(f"http://127.0.0.1:{litellm_port}/health/liveliness")
                for clients in levels:
                    results["litellm", clients] = asyncio.run(
                        _measure(f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                                 clients=clients, seconds=args.seconds, headers=auth, chat=False,
                                 unique=True,
                                 pids={"litellm": [litellm_pid], "engine": [engine_pid]})
                    )  # fmt: skip
    parley = [s for s in chosen if s.startswith("parley")]
    if parley:
        _run_parley(parley, levels, args.seconds, scratch, results)
    _print(results, levels, chosen)


def _run_parley(
    scenarios: list[str], levels: list[int], seconds: float, scratch: Path,
    results: dict[tuple[str, int], Level],
) -> None:  # fmt: skip
    with LocalStack(scratch / "stack") as stack:
        platform = Platform(
            stack.addresses,
            run_dir=scratch / "run",
            model_dir=None,
            engine="fake",
            service_env={
                "worker": {"FAKE_TTFT_S": str(TTFT_S), "MAX_CONCURRENCY": "256"},
                "gateway": {"MAX_QUEUE_DEPTH": "100000"},
            },
        )
        with platform:
            admin = {"Authorization": f"Bearer {platform.admin_api_key}"}
            with httpx.Client(base_url=platform.gateway_url, headers=admin, timeout=30) as http:
                user = http.post("/admin/users", json={"name": "peer-bench"}).json()
                key = http.post(f"/admin/users/{user['user_id']}/keys", json={"name": "b"}).json()
            headers = {"Authorization": f"Bearer {key['api_key']}"}
            pids = {p.name.split("-")[0]: [] for p in platform.processes}
            for proc in platform.processes:
                if proc.proc is not None:
                    pids[proc.name.split("-")[0]].append(proc.proc.pid)
            pids["stack"] = stack.pids
            for name in scenarios:
                chat = name == "parley-chat"
                path = "/chat" if chat else "/v1/chat/completions"
                extra = {"Cache-Control": "no-cache"} if name == "parley-v1" else {}
                for clients in levels:
                    results[name, clients] = asyncio.run(
                        _measure(platform.gateway_url + path, clients=clients, seconds=seconds,
                                 headers={**headers, **extra}, chat=chat, unique=True, pids=pids)
                    )  # fmt: skip


def _print(results: dict[tuple[str, int], Level], levels: list[int], chosen: list[str]) -> None:
    print("\n## Side by side: the fake engine alone, LiteLLM's proxy, Parley\n")
    print(
        "| scenario | clients | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | total p50 ms | "
        "total p99 ms | req/s | errors | CPU ms per request |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in chosen:
        for clients in levels:
            if (name, clients) in results:
                row = _row(name, clients, results[name, clients], results.get(("engine", clients)))
                print("| " + " | ".join(row) + " |")
    print()
    for clients in levels:
        peer = results.get(("litellm", clients))
        if peer is None or not peer.ttft:
            continue
        for name in chosen:
            mine = results.get((name, clients))
            if not name.startswith("parley") or mine is None or not mine.ttft:
                continue
            ttft = statistics.median(mine.ttft) / statistics.median(peer.ttft)
            rate = (len(mine.total) / mine.wall) / max(len(peer.total) / peer.wall, 1e-9)
            print(f"- {clients} clients, {name} / litellm: TTFT p50 {ttft:.2f}x, req/s {rate:.2f}x")


if __name__ == "__main__":
    main()
