"""`make run` on a data folder: what a person stored is there after a restart and after a crash.

Each test runs the launcher (`python -m parley_devstack.launcher`, what `make run` runs) as a
process on a data folder of its own, with the fake engine: persistence needs no language, and a
fake engine makes a turn's timing controllable. Its stack, its services and its data folder are
its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley_devstack.ports import pick_free_ports
from tests.conftest import REPO, eventually

pytestmark = pytest.mark.faults

_BANNER = re.compile(r"demo API key:\s+(\S+)\n\s+admin API key:\s+(\S+)")


class Launcher:
    """One `make run` process on `data_dir`; its output is kept in `log`."""

    def __init__(self, data_dir: Path, log: Path, *, tokens_per_s: float = 0) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = pick_free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens_per_s = tokens_per_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "PARLEY_DATA_DIR": str(self.data_dir),
            "FAKE_TOKENS_PER_S": str(self.tokens_per_s),
            "COMPLETION_TIMEOUT_S": "120",
        }
        command = [sys.executable, "-m", "parley_devstack.launcher", "run", "--engine", "fake"]
        command += ["--port", str(self.port), "--run-dir", str(self.log.parent / "services")]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )

    def wait_up(self, timeout: float = 180) -> tuple[str, str]:
        """Wait for the banner; return the demo and the admin API keys it shows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            text = self.log.read_text(errors="replace")
            found = list(_BANNER.finditer(text))
            if found and text.rfind("Parley is up") > text.rfind("Starting MongoDB"):
                return found[-1][1], found[-1][2]
            if self.proc.poll() is not None:
                raise AssertionError(f"the launcher exited:\n{text[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"no banner after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def interrupt(self, timeout: float = 90) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill_everything(self) -> int:
        """SIGKILL the launcher and every process under it at once, as a power cut would."""
        assert self.proc is not None
        pids = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(30)
        return len(pids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_everything()


@pytest.fixture
def launchers(tmp_path: Path) -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.stop()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _messages(client: httpx.Client, chat_id: str) -> list[dict[str, Any]]:
    got = client.get(f"/chat/{chat_id}")
    assert got.status_code == 200, got.text
    messages: list[dict[str, Any]] = got.json()["messages"]
    return messages


def test_everything_stored_survives_a_restart(tmp_path: Path, launchers: list[Launcher]) -> None:
    data = tmp_path / "data"
    first = Launcher(data, tmp_path / "first.log")
    launchers.append(first)
    first.start()
    demo_key, admin_key = first.wait_up()
    secrets_file = data / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert admin_key in secrets_file.read_text()

    # A second `make run` on the same folder is refused, clearly, and changes nothing.
    second = subprocess.run(
        [sys.executable, "-m", "parley_devstack.launcher", "run", "--engine", "fake"],
        env={**os.environ, "PARLEY_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert second.returncode == 1
    assert f"another Parley (pid {first.proc.pid if first.proc else ''})" in second.stderr
    assert str(data) in second.stderr

    with _client(first.url, demo_key) as demo, _client(first.url, admin_key) as admin:
        bot = demo.post("/bots", json={"name": "Keeper", "system_prompt": "Be brief."})
        assert bot.status_code == 201, bot.text
        turn = demo.post("/chat", json={"message": "Remember the owls"})
        assert turn.status_code == 200, turn.text
        chat_id = turn.json()["chat_id"]
        stored = eventually(
            lambda: (m := _messages(demo, chat_id)) and len(m) == 2 and m, what="the answer"
        )
        rated = demo.post(
            f"/chat/{chat_id}/messages/{stored[1]['message_id']}/feedback", json={"rating": "up"}
        )
        assert rated.status_code in (200, 201, 204), rated.text
        # The answer enters the cache from the results topic, a moment later.
        time.sleep(1)
        cached = demo.post("/chat", json={"message": "Remember the owls"})
        assert cached.json()["answer"]["cached"] is True, cached.text
        chats_before = {c["chat_id"] for c in demo.get("/chats").json()["chats"]}
        before = _messages(demo, chat_id)
        feedback_before = admin.get("/feedback").json()

    assert first.interrupt() == 0
    assert "Your data stays in" in first.log.read_text()

    again = Launcher(data, tmp_path / "again.log")
    launchers.append(again)
    again.start()
    demo_again, admin_again = again.wait_up()
    assert (demo_again, admin_again) == (demo_key, admin_key)
    with _client(again.url, demo_key) as demo, _client(again.url, admin_key) as admin:
        listed = demo.get("/chats")
        assert listed.status_code == 200, listed.text
        assert {c["chat_id"] for c in listed.json()["chats"]} == chats_before
        assert _messages(demo, chat_id) == before
        bots = [b["name"] for b in demo.get("/bots").json()["bots"]]
        assert "Keeper" in bots
        assert admin.get("/feedback").json() == feedback_before
        # The cache entry is there too: a new chat asking the same question is answered from it.
        hit = demo.post("/chat", json={"message": "Remember the owls"})
        assert hit.json()["answer"]["cached"] is True, hit.text
    assert again.interrupt() == 0


def test_acknowledged_turns_survive_a_crash_of_everything(
    tmp_path: Path, launchers: list[Launcher]
) -> None:
    data = tmp_path / "data"
    # 20 tokens a second: a long answer is still being generated when the power goes.
    first = Launcher(data, tmp_path / "first.log", tokens_per_s=20)
    launchers.append(first)
    first.start()
    demo_key, _ = first.wait_up()

    answered: dict[str, str] = {}  # chat id -> request id, answers returned to the client
    accepted: dict[str, str] = {}  # completion id -> chat id, 202s
    with _client(first.url, demo_key) as demo:
        for i in range(3):
            turn = demo.post(
                "/chat", json={"message": f"short question {i}", "max_tokens": 3, "no_cache": True}
            )
            assert turn.status_code == 200, turn.text
            answered[turn.json()["chat_id"]] = turn.json()["request_id"]
        for i in range(3):
            submitted = demo.post(
                "/chat?mode=async",
                json={"message": f"long question {i}", "max_tokens": 200, "no_cache": True},
            )
            assert submitted.status_code == 202, submitted.text
            accepted[submitted.json()["completion_id"]] = submitted.json()["chat_id"]
        time.sleep(1)  # the long answers are under way

    assert first.kill_everything() >= 8  # launcher, 4 services, mongod, Kafka, ZooKeeper, Qdrant

    again = Launcher(data, tmp_path / "again.log", tokens_per_s=200)
    launchers.append(again)
    again.start()
    assert again.wait_up()[0] == demo_key
    with _client(again.url, demo_key) as demo:
        for chat_id in answered:
            # The answer may have been on the results topic only: it is stored after the restart.
            messages = eventually(
                lambda chat_id=chat_id: (m := _messages(demo, chat_id)) and len(m) >= 2 and m,
                what="an answered turn's stored answer",
            )
            assert [m["role"] for m in messages] == ["user", "assistant"], messages
        for completion_id, chat_id in accepted.items():

            def done(completion_id: str = completion_id) -> dict[str, Any] | None:
                got = demo.get(f"/completions/{completion_id}")
                assert got.status_code == 200, got.text
                body: dict[str, Any] = got.json()
                return body if body["state"] == "done" else None

            eventually(done, timeout=120, what=f"completion {completion_id} after the crash")
            messages = eventually(
                lambda chat_id=chat_id: (m := _messages(demo, chat_id)) and len(m) >= 2 and m,
                what="the stored answer",
            )
            assert [m["role"] for m in messages] == ["user", "assistant"], messages
    assert again.interrupt() == 0


def test_reset_asks_unless_forced_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("not Parley's")
    env = {**os.environ, "PARLEY_DATA_DIR": str(data)}
    launcher = [sys.executable, "-m", "parley_devstack.launcher"]

    refused = subprocess.run(
        [*launcher, "run", "--engine", "fake"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "not a Parley data folder" in refused.stderr
    assert (data / "notes.txt").exists()

    unconfirmed = subprocess.run(
        [*launcher, "reset"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert unconfirmed.returncode == 2
    assert "FORCE=1" in unconfirmed.stderr
    assert (data / "notes.txt").exists()

    forced = subprocess.run(
        [*launcher, "reset", "--force"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert not (data / "notes.txt").exists()
