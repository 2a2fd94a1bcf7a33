"""How `isthmus get` shows objects: kubectl-like tables, or the objects as JSON or YAML."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from isthmus.kube.conditions import NETWORK
from isthmus.model import KindInfo, KubeObject, Object, ServiceVIP

Column = tuple[str, Callable[[Any], str], bool]  # header, cell, wide only


def _ports(svc: ServiceVIP) -> str:
    return ",".join(f"{p.port}/{p.protocol}" for p in svc.spec.ports)


def _join(items: Sequence[object]) -> str:
    return ",".join(str(i) for i in items) or "<none>"


def _get(obj: KubeObject, section: str, key: str) -> Any:
    return (obj.body.get(section) or {}).get(key)


def _external_ips(svc: KubeObject) -> str:
    ingress = (_get(svc, "status", "loadBalancer") or {}).get("ingress") or []
    found = [i.get("ip") for i in ingress if i.get("ip")] + list(_get(svc, "spec", "externalIPs") or [])
    return ",".join(found) or "<none>"


def _pod_network(pod: KubeObject) -> str:
    """The network the pod holds (and the one it declares, when another), from its condition."""
    found = [c for c in _get(pod, "status", "conditions") or [] if c.get("type") == NETWORK]
    return str(found[0].get("message", "")) if found else "<none>"


def _kube_ports(svc: KubeObject) -> str:
    shown = []
    for p in _get(svc, "spec", "ports") or []:
        node = f":{p['nodePort']}" if p.get("nodePort") else ""
        shown.append(f"{p.get('port')}{node}/{p.get('protocol', 'TCP')}")
    return ",".join(shown) or "<none>"


COLUMNS: dict[str, list[Column]] = {
    "Node": [("ADDRESS", lambda o: str(o.spec.address), False)],
    "VirtualNetwork": [
        ("MODE", lambda o: o.spec.mode, False),
        ("VNI", lambda o: str(o.spec.vni), False),
        ("EXTERNAL", lambda o: str(o.spec.external).lower(), False),
        ("SHARED", lambda o: str(o.spec.shared).lower(), True),
        ("IMPORT", lambda o: _join(o.spec.import_targets), True),
        ("EXPORT", lambda o: _join(o.spec.export_targets), True),
    ],
    "Subnet": [
        ("NETWORK", lambda o: o.spec.network, False),
        ("CIDR", lambda o: str(o.spec.cidr), False),
        ("GATEWAY", lambda o: str(o.spec.effective_gateway() or "<none>"), False),
    ],
    "Endpoint": [
        ("KIND", lambda o: o.spec.kind, False),
        ("NETWORK", lambda o: o.spec.network, False),
        ("ADDRESSES", lambda o: _join(o.spec.addresses), False),
        ("NODE", lambda o: o.spec.node or "<none>", False),
        ("MAC", lambda o: o.spec.mac or "<none>", True),
        ("LABELS", lambda o: _join([f"{k}={v}" for k, v in sorted(o.metadata.labels.items())]), True),
    ],
    "ServiceVIP": [
        ("VIP", lambda o: _join(o.spec.vips), False),
        ("PORT(S)", _ports, False),
        ("BACKENDS", lambda o: _join([a for b in o.spec.backends for a in b.addresses]), False),
        ("AFFINITY", lambda o: o.spec.session_affinity, True),
    ],
    "FloatingIP": [
        ("ADDRESS", lambda o: _join(o.spec.addresses), False),
        ("POOL", lambda o: o.spec.pool, False),
        (
            "TARGETS",
            lambda o: _join([*o.spec.endpoints, *([f"svc/{o.spec.service}"] if o.spec.service else [])]),
            False,
        ),
    ],
    "EgressIP": [
        ("ADDRESS", lambda o: _join(o.spec.addresses), False),
        ("POOL", lambda o: o.spec.pool, False),
        ("NODE", lambda o: o.spec.node or "<by hash>", False),
    ],
    "Policy": [
        ("PRIORITY", lambda o: str(o.spec.priority), False),
        ("RULES", lambda o: str(len(o.spec.rules)), False),
    ],
    "Pod": [
        ("STATUS", lambda o: _get(o, "status", "phase") or "Pending", False),
        ("IP", lambda o: _get(o, "status", "podIP") or "<none>", False),
        ("NODE", lambda o: _get(o, "spec", "nodeName") or "<none>", False),
        ("NETWORK", _pod_network, True),
        ("LABELS", lambda o: _join([f"{k}={v}" for k, v in sorted(o.metadata.labels.items())]), True),
    ],
    "Service": [
        ("TYPE", lambda o: _get(o, "spec", "type") or "ClusterIP", False),
        ("CLUSTER-IP", lambda o: _get(o, "spec", "clusterIP") or "<none>", False),
        ("EXTERNAL-IP", _external_ips, False),
        ("PORT(S)", _kube_ports, False),
        (
            "SELECTOR",
            lambda o: _join([f"{k}={v}" for k, v in sorted((_get(o, "spec", "selector") or {}).items())]),
            False,
        ),
    ],
    "ReplicationController": [("DESIRED", lambda o: str(_get(o, "spec", "replicas") or 1), False)],
    "ReplicaSet": [("DESIRED", lambda o: str(_get(o, "spec", "replicas") or 1), False)],
    "Deployment": [("DESIRED", lambda o: str(_get(o, "spec", "replicas") or 1), False)],
}


def table(info: KindInfo, items: Sequence[Object], all_namespaces: bool, wide: bool) -> str:
    columns: list[Column] = [("NAME", lambda o: o.metadata.name, False)]
    if all_namespaces and info.namespaced:
        columns.insert(0, ("NAMESPACE", lambda o: o.metadata.namespace or "", False))
    columns += [c for c in COLUMNS.get(info.kind, []) if wide or not c[2]]
    return aligned([[h for h, _, _ in columns]] + [[cell(o) for _, cell, _ in columns] for o in items])


def aligned(rows: list[list[str]]) -> str:
    """Rows as columns, the first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def document(items: Sequence[Object], single: bool, fmt: str) -> str:
    dumped = [o.model_dump(mode="json", by_alias=True, exclude_none=True) for o in items]
    data: dict[str, Any] = dumped[0] if single else {"apiVersion": "v1", "kind": "List", "items": dumped}
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False).rstrip()


FLOW_HEADER = (
    f"{'TIME':<15} {'NODE':<10} {'SOURCE':<30} {'DESTINATION':<30} {'PROTO':<5} {'STATE':<11} "
    f"{'VERDICT':<8} RULE"
)


def flow_row(record: dict[str, Any]) -> str:
    """A flow record as a line under FLOW_HEADER: an end is NAMESPACE/NAME:PORT, else ADDRESS:PORT; a
    DNATed flow shows its service; the state is new, established or closed; the rule is empty when
    nothing isolates the flow."""

    def end(e: dict[str, Any]) -> str:
        who = f"{e['namespace']}/{e['name']}" if e.get("name") else e.get("address", "?")
        return f"{who}:{e.get('port', 0)}"

    when = time.strftime("%H:%M:%S", time.localtime(record["time"])) + f"{record['time'] % 1:.3f}"[1:]
    destination = end(record["destination"]) + (
        f" (svc {record['service']})" if record.get("service") else ""
    )
    return (
        f"{when:<15} {record['node']:<10} {end(record['source']):<30} {destination:<30} "
        f"{record['protocol']:<5} {record.get('state', 'new'):<11} {record['verdict']:<8} {record['rule']}"
    )
