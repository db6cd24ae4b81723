"""Command line: `python -m parley_devstack install` and `python -m parley_devstack up`.

`up` installs what is missing, starts MongoDB, Kafka and Qdrant, prints their addresses as
`KEY=value` lines on stdout (and into `--env-file` once they are ready), then stays in the
foreground until Ctrl-C or SIGTERM and stops them cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from parley_devstack.errors import StackError
from parley_devstack.install import Installation
from parley_devstack.stack import LocalStack

_WATCH_INTERVAL = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parley_devstack",
        description="Install and run Parley's local stack: MongoDB, Kafka (with ZooKeeper), Qdrant.",
    )
    parser.add_argument(
        "--stack-dir",
        type=Path,
        help="where the binaries are installed (default: $PARLEY_STACK_DIR or .stack/)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install the servers' binaries (idempotent)")
    up = commands.add_parser(
        "up", help="install, start, print the addresses, run until Ctrl-C or SIGTERM"
    )
    up.add_argument(
        "--env-file", type=Path, help="also write the KEY=value lines here once the stack is ready"
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        help="keep the servers' data and logs here across runs "
        "(default: a new folder under .stack/run/, removed on a clean stop)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            Installation.at(args.stack_dir).install(log=_say)
            _say(f"installed under {Installation.at(args.stack_dir).root}")
            return 0
        return _up(args.stack_dir, args.data_dir, args.env_file)
    except StackError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


def _up(stack_dir: Path | None, data_dir: Path | None, env_file: Path | None) -> int:
    # SIGTERM and SIGHUP end the stack the way Ctrl-C does: through KeyboardInterrupt, so that
    # every server is stopped cleanly, also while the stack is still starting. SIGINT is set too
    # because a shell starts background jobs (`make run &`) with it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    stack = LocalStack(data_dir, stack_dir=stack_dir)
    stack.install(log=_say)
    _say("starting MongoDB, Kafka (with ZooKeeper) and Qdrant ...")
    started = time.monotonic()
    try:
        addresses = stack.start()
        print(addresses.env_lines(), end="", flush=True)
        if env_file is not None:
            _write_atomically(env_file, addresses.env_lines())
        _say(
            f"ready in {time.monotonic() - started:.1f} s; data and logs in {stack.data_dir}. "
            "Ctrl-C stops the stack."
        )
        while True:
            time.sleep(_WATCH_INTERVAL)
            stack.check()
    except KeyboardInterrupt:
        _say("stopping ...")
        return 0
    finally:
        if env_file is not None:
            env_file.unlink(missing_ok=True)
        stack.stop()
        _say("stopped")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def _say(message: str) -> None:
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
