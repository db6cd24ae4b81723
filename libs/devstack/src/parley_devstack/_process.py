"""One server process: its own process group, its output in a log file, no orphan left behind."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["ManagedProcess", "parent_death_signal", "pid_alive", "wait_until"]

_PR_SET_PDEATHSIG = 1
# Java stack frames ("\tat kafka.Kafka.main(Kafka.scala)", "\t... 5 more") would crowd the
# exception's message out of a log tail.
_STACK_FRAME = re.compile(r"^\s+(at \S+\(.*\)|\.\.\. \d+ more)\s*$")
# log4j and Qdrant write the level as a word, mongod as "s":"E" (or "F") in its JSON.
_ERROR = re.compile(r'\b(ERROR|FATAL)\b|"s":"[EF]"')


class ManagedProcess:
    """A child process started in a new session, with stdout and stderr appended to `log_path`."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        format_line: Callable[[str], str] | None = None,
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self._format_line = format_line or (lambda line: line)
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._popen = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                # A session of its own: Ctrl-C in a terminal reaches only the Python process,
                # which then stops the servers in the right order.
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the process to exit; whether it did."""
        if self._popen is None:
            return True
        try:
            self._popen.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.wait(10.0)

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL when it has not exited after `timeout` seconds."""
        self.terminate()
        if not self.wait(timeout):
            self.kill()

    def log_tail(self, lines: int = 25) -> str:
        """The last `lines` lines this process wrote since it was last spawned."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                size = os.fstat(log.fileno()).st_size
                log.seek(max(self._log_offset, size - 64 * 1024))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if line.strip() and not _STACK_FRAME.match(line)]
        tail = kept[-lines:]
        # The first error explains more than the shutdown chatter that follows it.
        first_error = next((line for line in kept if _ERROR.search(line)), None)
        if first_error is not None and first_error not in tail:
            tail = [first_error, "...", *tail]
        return (
            "\n".join(f"    {self._format_line(line)}" for line in tail) or "    (the log is empty)"
        )

    def _signal(self, signum: signal.Signals) -> None:
        if self._popen is None or self._popen.poll() is not None:
            return
        # The whole group, in case a server started helpers of its own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)


def parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook that has the kernel SIGKILL the child when this process dies.

    This covers what atexit cannot: the test runner or `make run` being killed with SIGKILL.
    Linux sends the signal when the *thread* that forked the child exits, so the hook is only
    set for children started from the main thread, which lives as long as the process.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)

    return hook


def pid_alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
