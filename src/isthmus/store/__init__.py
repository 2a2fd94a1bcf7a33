"""The ledger: one store of all intent and allocations, with revisions, watches and transactions."""

from isthmus.store.etcd import EtcdLedger
from isthmus.store.etcd_gateway import Credentials, Refused
from isthmus.store.ledger import (
    Compacted,
    Conflict,
    Event,
    EventType,
    KeyValue,
    Ledger,
    LedgerError,
    Unavailable,
    Watch,
)
from isthmus.store.location import BadStore, open_ledger, open_store
from isthmus.store.memory import MemoryLedger
from isthmus.store.sqlite import SqliteLedger
from isthmus.store.txn import Txn, transact

__all__ = [
    "BadStore",
    "Compacted",
    "Conflict",
    "Credentials",
    "EtcdLedger",
    "Event",
    "EventType",
    "KeyValue",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "Refused",
    "SqliteLedger",
    "Txn",
    "Unavailable",
    "Watch",
    "open_ledger",
    "open_store",
    "transact",
]
