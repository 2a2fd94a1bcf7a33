"""Objects in the ledger: their keys, their encoding, typed reads and writes, and the reference index.

Keys: /objects/GROUP/KIND/NAMESPACE/NAME (or /objects/GROUP/KIND/NAME for cluster-scoped kinds).
Every reference an object makes is indexed as /refs<target key>|<referrer key>, so "is this in use?" is one
bounded range read. metadata.resourceVersion is the key's mod revision and is never stored.
"""

from __future__ import annotations

import json
from typing import Any

from isthmus.model import VirtualNetwork
from isthmus.model.kinds import ISTHMUS, KINDS, KindInfo, Object, kind_of, parse_object
from isthmus.store import channels
from isthmus.store.ledger import KeyValue, Ledger, prefix_end
from isthmus.store.txn import Txn

OBJECTS = "/objects/"
STATUS = "/status/nodes/"  # NODE -> its agent's report (JSON): endpoints programmed or why not, BGP
REFS = "/refs"
_BY_PATH = {(k.group, k.kind): k for k in KINDS}
_NETWORK = _BY_PATH[(ISTHMUS, "VirtualNetwork")]


def kind_prefix(info: KindInfo, namespace: str | None = None) -> str:
    base = f"{OBJECTS}{info.group}/{info.kind}/"
    return base + f"{namespace}/" if namespace and info.namespaced else base


def key_of(info: KindInfo, namespace: str | None, name: str) -> str:
    return kind_prefix(info, namespace) + name


def object_key(obj: Object) -> str:
    return key_of(kind_of(obj), obj.metadata.namespace, obj.metadata.name)


def parse_key(key: str) -> tuple[KindInfo, str | None, str]:
    """The kind, namespace and name a key stands for."""
    group, kind, *rest = key.removeprefix(OBJECTS).split("/")
    info = _BY_PATH[(group, kind)]
    return (info, rest[0], rest[1]) if info.namespaced else (info, None, rest[0])


def encode(obj: Object) -> bytes:
    return obj.model_dump_json(
        by_alias=True, exclude_none=True, exclude={"metadata": {"resource_version"}}
    ).encode()


def decode(kv: KeyValue) -> Object:
    return _decode(kv.value, kv.mod_revision)


def _decode(value: bytes, revision: int | None) -> Object:
    data = json.loads(value)
    if revision is not None:
        data["metadata"]["resourceVersion"] = revision
    return parse_object(data)


def get(txn: Txn, info: KindInfo, namespace: str | None, name: str) -> Object | None:
    """The stored object, recording a check on it (a concurrent change makes the commit conflict)."""
    key = key_of(info, namespace, name)
    value = txn.get(key)
    if value is None:
        return None
    return _decoded(txn, key, value, None if key in txn.writes else txn.checks[key])


def exists(txn: Txn, info: KindInfo, namespace: str | None, name: str) -> bool:
    """Whether the object is stored, recording a check on it as `get` does, without decoding it."""
    return txn.get(key_of(info, namespace, name)) is not None


def put(txn: Txn, obj: Object, old: Object | None) -> None:
    """Store `obj` (replacing `old`, as read in this transaction), its copies in its channels, and
    re-index its references."""
    key = object_key(obj)
    value = encode(obj)
    txn.put(key, value)
    if obj.metadata.resource_version is None:  # as it will read back in this transaction
        txn.decoded[key] = (value, None, obj)
    now, before = _channels(txn, obj), _channels(txn, old)
    for channel in before - now:
        txn.delete(_copy(channel, key))
    for channel in now:
        txn.put(_copy(channel, key), value)
    _stamp(txn, now | before)
    new_refs = set(_ref_keys(obj, key))
    old_refs = set(_ref_keys(old, key)) if old is not None else set()
    for ref in old_refs - new_refs:
        txn.delete(ref)
    for ref in new_refs - old_refs:
        txn.put(ref, b"")


def delete(txn: Txn, obj: Object) -> None:
    key = object_key(obj)
    txn.delete(key)
    gone = _channels(txn, obj)
    for channel in gone:
        txn.delete(_copy(channel, key))
    _stamp(txn, gone)
    for ref in _ref_keys(obj, key):
        txn.delete(ref)
    named = channels.named_after(obj)
    if named is not None:
        txn.delete(channels.stamp(named))


def _channels(txn: Txn, obj: Object | None) -> set[str]:
    """The channels the object is copied into (`channels.py`)."""
    if obj is None:
        return set()

    def network(namespace: str, name: str) -> VirtualNetwork | None:
        found = get(txn, _NETWORK, namespace, name)
        return found if isinstance(found, VirtualNetwork) else None

    return channels.channels(obj, network)


def _copy(channel: str, key: str) -> str:
    return channels.prefix(channel) + key.removeprefix(OBJECTS)


def _stamp(txn: Txn, changed: set[str]) -> None:
    for channel in changed:
        txn.put(channels.stamp(channel), b"")


def referrers(txn: Txn, info: KindInfo, namespace: str | None, name: str, limit: int = 5) -> list[str]:
    """Keys of the objects (after this transaction's writes) that name this one."""
    prefix = f"{REFS}{key_of(info, namespace, name)}|"
    return [key.removeprefix(prefix) for key, _ in txn.range(prefix, prefix_end(prefix), limit)]


def _ref_keys(obj: Object, key: str) -> list[str]:
    return [f"{REFS}{key_of(_BY_PATH[(ISTHMUS, kind)], ns, name)}|{key}" for kind, ns, name in obj.refs()]


def list_objects(ledger: Ledger, info: KindInfo, namespace: str | None = None) -> tuple[list[Object], int]:
    """Every object of a kind (in one namespace, or all), and the revision of the read."""
    items, revision = ledger.list(kind_prefix(info, namespace))
    return [decode(kv) for kv in items], revision


def scan(txn: Txn, info: KindInfo, namespace: str | None = None) -> list[Object]:
    """Objects of a kind as this transaction sees them (no checks recorded)."""
    prefix = kind_prefix(info, namespace)
    return [_decoded(txn, k, v, None) for k, v in txn.range(prefix, prefix_end(prefix))]


def _decoded(txn: Txn, key: str, value: bytes, revision: int | None) -> Object:
    """Decode once per transaction: a value read again decodes to the same (immutable) object."""
    hit = txn.decoded.get(key)
    if hit is not None and hit[0] == value and hit[1] == revision:
        found: Object = hit[2]
        return found
    obj = _decode(value, revision)
    txn.decoded[key] = (value, revision, obj)
    return obj


def list_one(ledger: Ledger, info: KindInfo, namespace: str | None, name: str) -> Object | None:
    kv = ledger.get(key_of(info, namespace, name))
    return decode(kv) if kv else None


def statuses(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Each node's agent report, as the agent last published it."""
    return {kv.key.removeprefix(STATUS): json.loads(kv.value) for kv in ledger.list(STATUS)[0]}
