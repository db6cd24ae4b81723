"""The data folder of `make run`: everything the platform stores, kept across restarts.

```
<PARLEY_DATA_DIR or .data/>
  layout.json        the folder's layout version (checked at every start)
  run.lock           held by the running `make run` (a second one is refused)
  ports.json         the servers' ports, picked once and reused (MongoDB's replica set
                     configuration names its own address)
  secrets.json       0600: the admin API key, the demo user and its API key
  stack/mongo, stack/kafka, stack/qdrant   the servers' data and logs
```

```python
with DataDir.default().open() as data:      # checks, locks; raises DataDirError with the fix
    stack = LocalStack(data.stack_dir, **data.ports())
    secrets = data.secrets()
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from parley_devstack.errors import StackError
from parley_devstack.install import ensure_free_disk
from parley_devstack.ports import pick_free_ports

__all__ = [
    "DATA_DIR_ENV",
    "LAYOUT_VERSION",
    "DataDir",
    "DataDirError",
    "DataDirInUseError",
    "StackPorts",
]

DATA_DIR_ENV = "PARLEY_DATA_DIR"
LAYOUT_VERSION = 1
_DISK_NEEDED = 2**30
_MOVE_HINT = f"set {DATA_DIR_ENV} to another folder"


@dataclass(frozen=True)
class StackPorts:
    """The servers' ports, as `LocalStack` takes them."""

    mongo_port: int
    kafka_port: int
    zookeeper_port: int
    qdrant_port: int
    qdrant_grpc_port: int


class DataDirError(StackError):
    """The data folder cannot be used as it is: the message says why and what to do."""


class DataDirInUseError(DataDirError):
    """Another `make run` holds the data folder."""


class DataDir:
    """One platform's data folder; `open()` checks and locks it, `close()` releases it."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self._lock: IO[str] | None = None

    @classmethod
    def default(cls, repo: Path) -> DataDir:
        """`$PARLEY_DATA_DIR`, else `.data/` in the checkout."""
        configured = os.environ.get(DATA_DIR_ENV)
        return cls(Path(configured) if configured else repo / ".data")

    @property
    def stack_dir(self) -> Path:
        return self.root / "stack"

    @property
    def is_new(self) -> bool:
        return not (self.root / "secrets.json").exists()

    def open(self) -> DataDir:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DataDirError(
                f"cannot create the data folder {self.root}: {exc.strerror}; create it with "
                f"write access for this user, or {_MOVE_HINT}."
            ) from exc
        self._check_writable()
        self._check_layout()
        self._acquire_lock()
        try:
            ensure_free_disk(self.root, _DISK_NEEDED, "MongoDB, Kafka and Qdrant's data")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> DataDir:
        return self.open() if self._lock is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ports(self) -> StackPorts:
        """The servers' ports: those of the last start, or new free ones saved for the next."""
        saved = self._read_json("ports.json")
        names = [f.name for f in dataclasses.fields(StackPorts)]
        if saved and all(isinstance(saved.get(name), int) for name in names):
            return StackPorts(**{name: int(saved[name]) for name in names})
        ports = StackPorts(*pick_free_ports(len(names)))
        self._write_json("ports.json", dataclasses.asdict(ports))
        return ports

    def secrets(self) -> dict[str, str]:
        """The admin key (made once), and the demo user's id and key once they are saved."""
        saved = self._read_json("secrets.json") or {}
        if not isinstance(saved.get("admin_api_key"), str):
            saved = {"admin_api_key": "adm-" + secrets.token_urlsafe(24)}
            self._write_json("secrets.json", saved, private=True)
        return {key: str(value) for key, value in saved.items()}

    def save_secrets(self, values: dict[str, str]) -> None:
        self._write_json("secrets.json", {**self.secrets(), **values}, private=True)

    def reset(self) -> None:
        """Delete everything in the folder (it must not be in use)."""
        self._acquire_lock()
        try:
            for entry in self.root.iterdir():
                if entry.name == "run.lock":
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        finally:
            self.close()

    def _check_writable(self) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise DataDirError(
                f"the data folder {self.root} is not writable ({exc.strerror}); give this user "
                f"write access (`chown -R $USER {self.root}`), or {_MOVE_HINT}."
            ) from exc

    def _check_layout(self) -> None:
        layout = self.root / "layout.json"
        entries = {p.name for p in self.root.iterdir()} - {"run.lock"}
        if not layout.exists():
            if entries:
                raise DataDirError(
                    f"{self.root} holds files but no layout.json: it is not a Parley data folder, "
                    "or one of an older layout that this version cannot read. Nothing was "
                    f"changed. Move it away (or `make reset` to delete it), or {_MOVE_HINT}."
                )
            self._write_json("layout.json", {"layout": LAYOUT_VERSION})
            return
        found = (self._read_json("layout.json") or {}).get("layout")
        if found != LAYOUT_VERSION:
            newer = isinstance(found, int) and found > LAYOUT_VERSION
            raise DataDirError(
                f"{self.root} has data layout {found!r}; this version of Parley reads layout "
                f"{LAYOUT_VERSION}"
                + (" (the folder was written by a newer Parley: use that version)" if newer else "")
                + f". Nothing was changed. Use the matching version, or {_MOVE_HINT}."
            )

    def _acquire_lock(self) -> None:
        if self._lock is not None:
            return
        handle = open(self.root / "run.lock", "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataDirInUseError(
                f"another Parley (pid {holder}) is running on the data folder {self.root}; "
                f"stop it first (Ctrl-C in its terminal, or `kill {holder}`), or {_MOVE_HINT} "
                "to run a second platform beside it."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _read_json(self, name: str) -> dict[str, Any] | None:
        path = self.root / name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DataDirError(
                f"{path} is unreadable ({exc}); restore it, or `make reset` to start afresh."
            ) from exc
        return data if isinstance(data, dict) else None

    def _write_json(self, name: str, data: dict[str, Any], *, private: bool = False) -> None:
        path = self.root / name
        partial = path.with_name(f".{name}.{os.getpid()}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        descriptor = os.open(partial, flags, 0o600 if private else 0o644)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(path)
