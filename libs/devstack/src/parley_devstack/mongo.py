"""MongoDB 6.0 as a one-node replica set, so that transactions and change streams work."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

from parley_devstack._process import ManagedProcess
from parley_devstack._server import Server
from parley_devstack.ports import HOST

if TYPE_CHECKING:
    from pymongo import MongoClient

__all__ = ["REPLICA_SET", "MongoServer"]

REPLICA_SET = "rs0"
_ALREADY_INITIALIZED = 23


class MongoServer(Server):
    """`mongod` on 127.0.0.1, replica set `rs0` initiated and PRIMARY once started."""

    name: ClassVar[str] = "MongoDB"
    port_guess: ClassVar[str] = "another MongoDB?"
    disk_needed: ClassVar[int] = 512 * 2**20

    _process: ManagedProcess | None = None
    _client: MongoClient[dict[str, Any]] | None = None

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def uri(self) -> str:
        return f"mongodb://{HOST}:{self.port}/?replicaSet={REPLICA_SET}"

    def _spawn(self) -> None:
        db_path = self.data_dir / "db"
        db_path.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(
            [
                str(self.installation.mongod()),
                "--dbpath",
                str(db_path),
                "--bind_ip",
                HOST,
                "--port",
                str(self.port),
                "--replSet",
                REPLICA_SET,
                "--wiredTigerCacheSizeGB",
                "0.25",
                "--oplogSize",
                "256",
                "--nounixsocket",
                "--setParameter",
                "diagnosticDataCollectionEnabled=false",
            ],
            log_path=self.data_dir / "mongod.log",
            cwd=self.data_dir,
            format_line=_readable,
        )
        self._process.spawn()

    def _advance(self) -> bool:
        # Imported here so that `import parley_devstack` does not need PyMongo.
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        assert self._process is not None
        self._check_alive(self._process)
        if self._client is None:
            self._client = MongoClient(
                HOST,
                self.port,
                directConnection=True,
                connectTimeoutMS=1000,
                serverSelectionTimeoutMS=1000,
            )
        try:
            hello = self._client.admin.command("hello")
            if hello.get("isWritablePrimary"):
                self._close_client()
                return True
            if "setName" not in hello:
                self._initiate(self._client)
        except PyMongoError:
            return False
        return False

    def _initiate(self, client: MongoClient[dict[str, Any]]) -> None:
        from pymongo.errors import OperationFailure

        config = {"_id": REPLICA_SET, "members": [{"_id": 0, "host": f"{HOST}:{self.port}"}]}
        try:
            client.admin.command("replSetInitiate", config)
        except OperationFailure as exc:
            if exc.code != _ALREADY_INITIALIZED:
                raise

    def _processes(self) -> list[ManagedProcess]:
        return [self._process] if self._process is not None else []

    def _stopped(self) -> None:
        self._close_client()
        super()._stopped()

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _readable(line: str) -> str:
    """mongod logs one JSON object a line; keep what a person reads."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "msg" not in entry:
        return line
    attributes = entry.get("attr")
    suffix = f" {json.dumps(attributes)}" if attributes else ""
    return f"{entry.get('s', '')} {entry['msg']}{suffix}"
