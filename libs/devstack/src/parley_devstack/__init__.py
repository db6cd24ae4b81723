"""Parley's local stack: a real MongoDB, Kafka (with ZooKeeper) and Qdrant on this machine.

```python
from parley_devstack import LocalStack

with LocalStack() as stack:                # installs what is missing, starts, waits for health
    env = stack.addresses.as_env()         # MONGODB_URI, KAFKA_ADDR, QDRANT_(GRPC_)ADDR
```

The same code backs the test fixtures (`parley_devstack.pytest_plugin`) and `make run`
(`python -m parley_devstack up`).
"""

from parley_devstack.errors import (
    DiskSpaceError,
    InstallError,
    JavaNotFoundError,
    NotInstalledError,
    PortInUseError,
    ServerExitedError,
    StackError,
    StartTimeoutError,
)
from parley_devstack.install import Installation
from parley_devstack.kafka import KafkaServer
from parley_devstack.mongo import MongoServer
from parley_devstack.qdrant import QdrantServer
from parley_devstack.stack import LocalStack, StackAddresses

__all__ = [
    "DiskSpaceError",
    "InstallError",
    "Installation",
    "JavaNotFoundError",
    "KafkaServer",
    "LocalStack",
    "MongoServer",
    "NotInstalledError",
    "PortInUseError",
    "QdrantServer",
    "ServerExitedError",
    "StackAddresses",
    "StackError",
    "StartTimeoutError",
]
