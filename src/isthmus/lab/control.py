"""A lab as its user sees it: brought up from a topology, changed through its ledger, settled (every agent
has programmed the latest change and every pod has its sandbox), probed with real connections, its router's
sessions and routes read, and torn down. Everything of a lab lives in one directory: its ledger (`state`),
logs, the router's files, and what it started."""

from __future__ import annotations

import ipaddress
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from isthmus import intent
from isthmus.agent.cni import ask
from isthmus.compile.source import compiled
from isthmus.dataplane.trace import Tracer
from isthmus.dataplane.trace.matrix import destinations
from isthmus.kube.conditions import NETWORK
from isthmus.kube.sync import Reconciler
from isthmus.lab import probe
from isthmus.lab.fabric import Fabric, ip
from isthmus.lab.router import Peer, config
from isthmus.lab.topology import OUTSIDE6_CLIENT, Topology
from isthmus.model import Endpoint, KubeObject, Node, lookup_kind
from isthmus.store import Credentials, Ledger, LedgerError, objects, open_ledger
from isthmus.store.etcd_gateway import Gateway

Echo = Callable[[str], None]


class LabError(Exception):
    pass


@dataclass
class Pod:
    namespace: str
    name: str
    node: str
    address: str
    phase: str
    problem: str  # why it does not run
    network: str  # the network it holds, and the one it now declares when they differ
    addresses: list[str]  # status.podIPs: `address` and, dual stack, one of the other family

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Machine:
    """A VM or host of the lab: its cluster, NAMESPACE/NAME, kind, node, addresses, and whether its
    sandbox is up."""

    cluster: str
    ref: str
    kind: str
    node: str | None
    addresses: str
    up: bool


def _member_status(fabric: Fabric, cluster: str, member: str) -> dict[str, str]:
    """One member's health, leadership and revision, asked over its own socket (this member alone)."""
    pki = fabric.pki(cluster)
    credentials = Credentials(user="admin", password=(pki / "admin.password").read_text().strip())
    gateway = Gateway(member, [str(fabric.member_socket(member))], credentials, timeout=2.0)
    try:
        status = gateway.call("/v3/maintenance/status", {})
    except LedgerError as exc:
        return {"health": f"unhealthy: {exc}", "leader": "-", "revision": "-"}
    finally:
        gateway.close()
    leads = status.get("leader") == status["header"]["member_id"]
    return {"health": "healthy", "leader": "yes" if leads else "no", "revision": status["header"]["revision"]}


def _spec(node: Peer, router: Peer | None, tunnel: int) -> dict[str, Any]:
    """A ledger Node's spec: its underlay addresses (that of the `tunnel` family first) and, with a router,
    its BGP speaker peering with it."""
    addresses = [a for a in (node.address, node.address6) if a][:: -1 if tunnel == 6 else 1]
    spec: dict[str, Any] = {"address": addresses[0], "addresses": addresses}
    if router is None:
        return spec
    peers = [
        {"address": a, "asn": router.asn} for a in (router.address, router.address6) if a and node.address6
    ]
    return spec | {
        "bgp": {"asn": node.asn, "peers": peers or [{"address": router.address, "asn": router.asn}]}
    }


class Lab:
    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self._ledgers: dict[str, Ledger] = {}

    @property
    def ledger(self) -> Ledger:
        """The main cluster's ledger."""
        return self.ledger_of("")

    @classmethod
    def open(cls, work: Path) -> Lab:
        if not (work / "fabric.json").exists():
            raise LabError(f"no lab in {work}: `isthmus lab up` makes one")
        return cls(Fabric.load(work))

    @classmethod
    def up(cls, topology: Topology, work: Path, echo: Echo) -> Lab:
        """Build the lab: nodes in the ledger, the underlay switch, each node with its agent and kubelet.
        A step that fails names the node and the reason; what was made is removed again."""
        if (work / "fabric.json").exists():
            if Fabric.load(work).namespaces():
                raise LabError(f"a lab is already up in {work}: `isthmus lab down` first")
            shutil.rmtree(work)
        work.mkdir(parents=True)
        lab = cls(Fabric(f"{topology.name}-", work / "state", work))
        addresses = topology.addresses()
        six = topology.addresses6()
        peers = [Peer(n.name, addresses[n.name], n.asn, six.get(n.name)) for n in topology.nodes]
        router = (
            Peer("router", topology.router_address(), topology.router.asn, six.get("router"))
            if topology.router
            else None
        )
        clusters = {n.name: n.cluster for n in topology.nodes if n.cluster}
        lab.fabric.clusters = clusters
        try:
            lab.fabric.build(addresses, topology.underlay.prefixlen, router.address if router else None)
            echo(f"underlay switch {lab.fabric.underlay}: {topology.underlay}")
            for cluster, members in topology.members().items():
                mine = [p.name for p in peers if clusters.get(p.name, "") == cluster]
                try:
                    lab.fabric.start_store(cluster, members, topology.underlay.prefixlen, mine)
                except Exception as exc:
                    raise LabError(f"store of cluster {cluster or 'main'}: {exc}") from None
                shown = ", ".join(f"{m} {a}" for m, a in lab.fabric.stores[cluster].items())
                state = lab.fabric.state_of(cluster)
                echo(f"cluster {cluster or 'main'}: etcd {shown} (TLS and roles; {state} leads to it)")
            for cluster in {"", *clusters.values()}:
                nodes = [
                    Node.model_validate(
                        {"metadata": {"name": p.name}, "spec": _spec(p, router, topology.tunnel)}
                    )
                    for p in peers
                    if clusters.get(p.name, "") == cluster
                ]
                intent.apply(lab.ledger_of(cluster), nodes)
            for cluster, kube in topology.kube_configs().items():
                Reconciler(lab.ledger_of(cluster), kube).configure(kube)
                cidrs = ", ".join(map(str, kube.pod_cidrs))
                echo(f"cluster {cluster or 'main'}: Kubernetes pods in {cidrs}, the first family primary")
            if router:
                lab._router(router, peers, topology, echo)
            elif topology.underlay6 is not None:
                lab.fabric.add_ipv6(topology.addresses6(), topology.underlay6.prefixlen)
            for node, address in addresses.items():
                step = "agent"
                try:
                    lab.fabric.start_agent(node)
                    step = "kubelet"
                    lab.fabric.start_kubelet(node)
                except Exception as exc:
                    raise LabError(f"node {node}: {step} failed: {exc}") from None
                netns = lab.fabric.node_netns(node)
                of = f" of cluster {clusters[node]}" if node in clusters else ""
                echo(f"node {node}{of}: {address} on the underlay, agent and kubelet running (netns {netns})")
            lab._speakers(topology, echo)
        except BaseException:
            lab.fabric.destroy()
            raise
        return lab

    def ledger_of(self, cluster: str) -> Ledger:
        """The ledger of a cluster of the lab ("" the main one), as its state directory leads to it."""
        if cluster and cluster not in set(self.fabric.clusters.values()):
            raise LabError(f"this lab has no cluster {cluster}")
        if cluster not in self._ledgers:
            self._ledgers[cluster] = open_ledger(str(self.fabric.state_of(cluster)))
        return self._ledgers[cluster]

    def members(self) -> list[dict[str, str]]:
        """Each etcd member of the lab: cluster, name, address, health, whether it leads, its revision."""
        found = []
        for cluster, members in sorted(self.fabric.stores.items()):
            for member, address in members.items():
                row = {"cluster": cluster or "main", "member": member, "address": address}
                found.append(row | _member_status(self.fabric, cluster, member))
        return found

    def _speakers(self, topology: Topology, echo: Echo) -> None:
        """With other clusters: each cluster's federation speakers (`controllers` replicas), each peering
        with every other cluster's."""
        speakers = topology.speakers()
        for name, speaker in speakers.items():
            peers = [f"{o.address}:{o.asn}" for o in speakers.values() if o.cluster != speaker.cluster]
            self.fabric.start_speaker(name, speaker, topology.underlay.prefixlen, peers)
            where = f"{speaker.address}, AS {speaker.asn}"
            echo(f"cluster {speaker.cluster or 'main'}: federation speaker {name} {where}")

    def _router(self, router: Peer, peers: list[Peer], topology: Topology, echo: Echo) -> None:
        """The router with a session to every node, and the outside client behind it if declared."""
        outside = str(topology.outside.address) if topology.outside else None
        try:
            self.fabric.build_router(router.address, topology.underlay.prefixlen, outside)
            if topology.underlay6 is not None:
                self.fabric.add_ipv6(topology.addresses6(), topology.underlay6.prefixlen)
            self.fabric.start_router(config(router.address, router.asn, peers, router.address6))
        except Exception as exc:
            raise LabError(f"router: {exc}") from None
        netns = self.fabric.router_netns
        both = f" and {router.address6}" if router.address6 else ""
        echo(
            f"router {router.address}{both}: BIRD 2, AS {router.asn}, sessions with each node (netns {netns})"
        )
        if outside:
            six = f" and {OUTSIDE6_CLIENT}" if router.address6 else ""
            echo(f"outside client {outside}{six}, behind the router (netns {self.fabric.outside_netns})")

    def pods(self) -> list[Pod]:
        """The Pods of the ledger, with their sandbox's state as the kubelets reported it."""
        found: list[Pod] = []
        for obj in objects.list_objects(self.ledger, lookup_kind("Pod"))[0]:
            if not isinstance(obj, KubeObject):
                continue
            status = obj.body.get("status") or {}
            conditions = {c.get("type"): c for c in status.get("conditions") or []}
            network = conditions.pop(NETWORK, {})
            reasons = [
                f"{c.get('reason')}: {c.get('message')}" for c in conditions.values() if c.get("reason")
            ]
            found.append(
                Pod(
                    obj.metadata.namespace or "",
                    obj.metadata.name,
                    str((obj.body.get("spec") or {}).get("nodeName", "")),
                    str(status.get("podIP", "")),
                    str(status.get("phase", "Pending")),
                    "; ".join(reasons),
                    str(network.get("message", "")),
                    [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")],
                )
            )
        return found

    def machines(self) -> list[Machine]:
        """The VMs and hosts bound to the lab's nodes, of every cluster, and whether they are up."""
        booted = self._booted()
        found = []
        for cluster in sorted({"", *self.fabric.clusters.values()}):
            for e in objects.list_objects(self.ledger_of(cluster), lookup_kind("Endpoint"))[0]:
                if isinstance(e, Endpoint) and e.spec.kind != "pod" and e.spec.node in self.fabric.nodes:
                    ref = f"{e.metadata.namespace}/{e.metadata.name}"
                    addresses = ",".join(map(str, e.spec.addresses))
                    found.append(
                        Machine(cluster or "main", ref, e.spec.kind, e.spec.node, addresses, ref in booted)
                    )
        return found

    def _booted(self) -> set[str]:
        """What the kubelets have attached and started (NAMESPACE/NAME), as they record it."""
        saved = (self.fabric.work / f"{node}.pods.json" for node in self.fabric.nodes)
        return {ref for path in saved if path.exists() for ref in json.loads(path.read_text())}

    def agent(self, node: str) -> dict[str, Any]:
        """The agent's report (revision, endpoints, problems, metrics), or its error."""
        try:
            answer = ask(self.fabric.socket(node), {"command": "AGENT"})
        except OSError as exc:
            return {"error": f"agent not answering: {exc.strerror or exc}"}
        return dict(answer.get("result") or answer)

    def settle(self, timeout: float, echo: Echo) -> list[str]:
        """Wait until every agent has programmed the ledger as it is now, every pod on a lab node is
        running or has failed, every machine (VM, host) on one has its sandbox, and no pod that is gone has
        a sandbox; what is wrong then (empty when all is well)."""
        revisions = {c: self.ledger_of(c).revision() for c in {"", *self.fabric.clusters.values()}}
        deadline = time.monotonic() + timeout
        shown: set[str] = set()
        while True:
            agents = {n: self.agent(n) for n in self.fabric.nodes}
            behind = [
                n
                for n, a in agents.items()
                if int(a.get("revision", -1)) < revisions[self.fabric.clusters.get(n, "")]
            ]
            pods = [p for p in self.pods() if p.node in self.fabric.nodes]
            waiting = [p for p in pods if p.phase != "Running" and not p.problem]
            machines = self.machines()
            kept = {self.fabric.sandbox(p.namespace, p.name) for p in pods}
            kept |= {self.fabric.sandbox(*m.ref.split("/", 1)) for m in machines}
            left = [
                n
                for n in self.fabric.namespaces()
                if n.startswith(f"{self.fabric.prefix}p-") and n not in kept
            ]
            for pod in pods:
                if pod.phase == "Running" and pod.ref not in shown:
                    shown.add(pod.ref)
                    echo(f"pod {pod.ref}: running on {pod.node} at {pod.address}")
            booting = sorted(m.ref for m in machines if not m.up)
            if (not behind and not waiting and not left and not booting) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        problems = [
            f"node {n}: {agents[n].get('error', 'has not programmed the latest change')}" for n in behind
        ]
        problems += [
            f"node {n}: {k}: {v}" for n, a in agents.items() for k, v in (a.get("problems") or {}).items()
        ]
        problems += [f"pod {p.ref} on {p.node}: {p.problem}" for p in pods if p.problem]
        problems += [f"pod {p.ref} on {p.node}: no sandbox after {timeout:.0f} s" for p in waiting]
        for node in sorted(
            {p.node for p in waiting if p.node in self.fabric.nodes}
        ):  # why: its kubelet's log
            log = self.fabric.log("kubelet", node)
            tail = log.read_text(errors="replace").splitlines()[-8:] if log.exists() else ["(no log)"]
            problems.append(f"kubelet of {node}, last lines of {log}:\n    " + "\n    ".join(tail))
        problems += [f"sandbox {n}: its pod is gone, yet it is still there" for n in left]
        problems += [f"machine {n}: no sandbox after {timeout:.0f} s" for n in booting]
        return problems

    def netns(self, name: str) -> str:
        """The network namespace of a node (NODE), the `router`, the `outside` client, an etcd member
        (etcd-I, etcd-CLUSTER-I), or a pod (NAMESPACE/POD, or POD in default)."""
        if name in self.fabric.nodes:
            return self.fabric.node_netns(name)
        if name == "router" and self.fabric.router:
            return self.fabric.router_netns
        if name == "outside" and self.fabric.outside:
            return self.fabric.outside_netns
        if any(name in members for members in self.fabric.stores.values()):
            return self.fabric.prefix + name
        namespace, _, pod = name.rpartition("/")
        sandbox = self.fabric.sandbox(namespace or "default", pod)
        if sandbox not in self.fabric.namespaces():
            raise LabError(f"{name}: no such node or running pod in the lab")
        return sandbox

    def sessions(self) -> dict[str, dict[str, str]]:
        """The router's BGP session with each node (by name): state, neighbor address and AS, routes,
        last error."""
        self._has_router()
        try:
            return self.fabric.bird.sessions()
        except RuntimeError as exc:
            raise LabError(f"router: {exc}") from None

    def routes(self, prefix: str | None = None) -> tuple[str, str]:
        """The router's BGP routes (`birdc show route all`) and its kernel's (`ip route` of each family),
        of `prefix` only when given."""
        self._has_router()
        try:
            network = ipaddress.ip_network(prefix, strict=False) if prefix else None
            only = [str(network)] if network else []
            bgp = self.fabric.bird.ask("show", "route", *only, "all")
        except (ValueError, RuntimeError) as exc:
            raise LabError(f"router: {exc}") from None
        families = [network.version] if network else [4, 6]
        kernel = (
            ip("-n", self.fabric.router_netns, f"-{v}", "route", "show", *only).stdout for v in families
        )
        return bgp, "".join(kernel)

    def _has_router(self) -> None:
        if not self.fabric.router:
            raise LabError("this lab has no router (the topology's `router`)")

    def probe(
        self,
        port: int,
        protocol: str,
        to: Literal["pods", "services"],
        namespaces: tuple[str, ...] = (),
        family: int = 4,
    ) -> dict[str, Any]:
        """Real connections in `family` from every pod to every destination, in the shape of `isthmus
        matrix`."""
        tracer = Tracer(compiled(self.ledger)[0])
        sources = list(destinations(tracer, "pods", namespaces, family))
        found = destinations(tracer, to, namespaces, family)
        targets = {name: str(address) for name, address in found.items()}
        existing = set(self.fabric.namespaces())
        sandboxes = {s: self.fabric.sandbox(*s.split("/", 1)) for s in sources}
        answers = probe.probe({s: n for s, n in sandboxes.items() if n in existing}, targets, port, protocol)
        return probe.as_matrix(answers, port, protocol, to, sources, list(targets))

    def down(self) -> None:
        """Every process and namespace of the lab, and its directory."""
        self.fabric.destroy()
        shutil.rmtree(self.fabric.work, ignore_errors=True)
