"""The Kubernetes network manager against a real kube-apiserver and controller-manager (v1.20.2)."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.dynamic import DynamicClient

from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import Reconciler, reconcile
from isthmus.model import load_manifests, lookup_kind, parse_manifests
from isthmus.store import Ledger, MemoryLedger, objects, open_ledger
from isthmus.store.election import controllers
from tests.etcdenv import EtcdCluster
from tests.integration.kubeenv import Cluster, Manager, NodeStandIn, Proxy, eventually

pytestmark = pytest.mark.integration
SEEDS = Path(__file__).parents[2] / "examples" / "seeds"
LEONARDO = ("leonardo-rc.yaml", "leonardo-svc.yaml", "nginx-rc.yaml", "nginx-svc.yaml")


def listed(state: Path, kind: str, namespace: str | None = None) -> list[Any]:
    ledger = open_ledger(state)
    try:
        return objects.list_objects(ledger, lookup_kind(kind), namespace)[0]
    finally:
        ledger.close()


def summary(ledger: Ledger, namespace: str) -> dict[str, Any]:
    """A namespace's intent without what differs by nature between sources: pod names (generated),
    uids, MACs, and which address or node each pod got."""

    def of(kind: str) -> list[Any]:
        return objects.list_objects(ledger, lookup_kind(kind), namespace)[0]

    return {
        "networks": sorted(n.metadata.name for n in of("VirtualNetwork")),
        "endpoints": sorted(
            (e.spec.network, e.metadata.labels.get("name"), e.spec.node is not None) for e in of("Endpoint")
        ),
        "vips": {
            v.metadata.name: (
                v.spec.type,
                [p.model_dump() for p in v.spec.ports if not p.node_port] or len(v.spec.ports),
                len(v.spec.backends),
            )
            for v in of("ServiceVIP")
        },
        "floating": sorted((f.metadata.name, f.spec.service) for f in of("FloatingIP")),
        "policies": {p.metadata.name: p.spec.model_dump() for p in of("Policy")},
    }


def addresses(state: Path, namespace: str) -> dict[str, str]:
    return {e.metadata.name: str(e.spec.addresses[0]) for e in listed(state, "Endpoint", namespace)}


def test_leonardo_manifests_make_networks_addresses_vips_policy_and_a_floating_ip(
    cluster: Cluster, state: Path, managers: list[Manager]
) -> None:
    cluster.namespace("leonardo", isolation="collection")
    with socket.socket() as probe:  # a free port for the manager's metrics
        probe.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{probe.getsockname()[1]}"
    manager = Manager(state, cluster.kubeconfig, metrics=metrics)
    managers.append(manager)
    cluster.create(
        "leonardo",
        *(SEEDS / f for f in ("leonardo-rc.yaml", "leonardo-svc.yaml", "nginx-rc.yaml", "nginx-svc.yaml")),
    )

    def all_there() -> bool:
        vips = {v.metadata.name: v for v in listed(state, "ServiceVIP", "leonardo")}
        return (
            len(addresses(state, "leonardo")) == 6
            and all(len(v.spec.backends) == 3 for v in vips.values())
            and len(vips) == 2
        )

    eventually(all_there, what="6 endpoints and 2 VIPs with 3 backends each")
    endpoints = {e.metadata.name: e for e in listed(state, "Endpoint", "leonardo")}
    networks = {e.metadata.name.rsplit("-", 1)[0]: e.spec.network for e in endpoints.values()}
    assert networks == {"leonardo": "leonardo", "nginx": "nginx"}  # collection mode: a network per `name`
    assert {n.metadata.name for n in listed(state, "VirtualNetwork", "leonardo")} == {"leonardo", "nginx"}
    assert {e.spec.node for e in endpoints.values()} <= {"node-a", "node-b"}
    # the API server shows what the ledger allocated
    pods = {p.metadata.name: p for p in cluster.core.list_namespaced_pod("leonardo").items}
    eventually(
        lambda: all(cluster.core.read_namespaced_pod(n, "leonardo").status.pod_ip for n in pods),
        what="pod IPs",
    )
    shown = {n: cluster.core.read_namespaced_pod(n, "leonardo").status.pod_ip for n in pods}
    assert shown == addresses(state, "leonardo")
    vips = {v.metadata.name: v for v in listed(state, "ServiceVIP", "leonardo")}
    services = {s.metadata.name: s for s in cluster.core.list_namespaced_service("leonardo").items}
    assert {n: str(v.spec.vip) for n, v in vips.items()} == {
        n: s.spec.cluster_ip for n, s in services.items()
    }
    assert sorted(str(b.address) for b in vips["ftleonardo"].spec.backends) == sorted(
        a for n, a in shown.items() if n.startswith("leonardo-")
    )
    (fip,) = listed(state, "FloatingIP", "leonardo")
    assert fip.metadata.name == "nginx" and str(fip.spec.address).startswith("203.0.113.")

    def ingress() -> str | None:
        status = cluster.core.read_namespaced_service_status("nginx", "leonardo").status.load_balancer
        return status.ingress[0].ip if status and status.ingress else None

    assert eventually(ingress, what="LoadBalancer ingress") == str(fip.spec.address)
    (policy,) = listed(state, "Policy", "leonardo")
    assert policy.metadata.name == "uses-ftleonardo"
    assert policy.spec.rules[0].destination.service == "ftleonardo"
    exposed = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    counted = {line.split()[0]: float(line.split()[1]) for line in exposed.splitlines() if line[:1] != "#"}
    assert counted['isthmus_kube_events_total{kind="Pod"}'] >= 6
    assert counted["isthmus_kube_reconcile_seconds_count"] >= 1
    assert manager.terminate() == 0  # SIGTERM: a clean shutdown
    # the same manifests, offline, give the same networks, endpoints, VIPs, floating IP and policy
    offline = MemoryLedger()
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "leonardo", "annotations": {"isthmus.io/isolation": "collection"}},
    }
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n},
            "status": {"addresses": [{"type": "InternalIP", "address": a}]},
        }
        for n, a in NodeStandIn.NODES.items()
    ]
    docs = parse_manifests(yaml.safe_dump_all([namespace, *nodes]))
    reconcile(offline, KubeConfig(), [*docs, *load_manifests([str(SEEDS / f) for f in LEONARDO], "leonardo")])
    assert summary(offline, "leonardo") == summary(open_ledger(state), "leonardo")


def test_scaling_a_deployment_adds_and_removes_endpoints(
    cluster: Cluster, state: Path, managers: list[Manager]
) -> None:
    cluster.namespace("scale")
    manager = Manager(state, cluster.kubeconfig)
    managers.append(manager)
    template = {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }
    deployment = {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template},
    }
    cluster.apps.create_namespaced_deployment("scale", deployment)
    eventually(lambda: len(addresses(state, "scale")) == 2, what="2 endpoints")
    first = addresses(state, "scale")
    cluster.apps.patch_namespaced_deployment_scale("web", "scale", {"spec": {"replicas": 5}})
    eventually(lambda: len(addresses(state, "scale")) == 5, what="5 endpoints")
    grown = addresses(state, "scale")
    assert {n: grown[n] for n in first} == first  # nothing renumbered
    assert len(set(grown.values())) == 5
    cluster.apps.patch_namespaced_deployment_scale("web", "scale", {"spec": {"replicas": 1}})
    eventually(lambda: len(addresses(state, "scale")) == 1, what="1 endpoint")
    pods = [p.metadata.name for p in cluster.core.list_namespaced_pod("scale").items]
    eventually(lambda: list(addresses(state, "scale")) == pods, what="the remaining pod's endpoint")
    assert manager.terminate() == 0


def test_deleting_a_namespace_removes_everything_it_owned(
    cluster: Cluster, state: Path, managers: list[Manager]
) -> None:
    cluster.namespace("doomed", isolation="namespace")
    manager = Manager(state, cluster.kubeconfig)
    managers.append(manager)
    cluster.create("doomed", SEEDS / "nginx-rc.yaml", SEEDS / "nginx-svc.yaml")
    eventually(
        lambda: len(addresses(state, "doomed")) == 3 and listed(state, "FloatingIP", "doomed"),
        what="3 pods and a FIP",
    )
    cluster.core.delete_namespace("doomed")
    kinds = ("Endpoint", "ServiceVIP", "FloatingIP", "VirtualNetwork", "Subnet", "Policy", "Pod", "Service")
    eventually(
        lambda: not any(listed(state, k, "doomed") for k in kinds), timeout=90, what="nothing left in doomed"
    )
    eventually(lambda: "doomed" not in {t.metadata.name for t in listed(state, "Tenant")}, what="tenant gone")
    assert manager.terminate() == 0


def test_a_partition_with_compaction_loses_no_deletion_and_a_restart_no_address(
    cluster: Cluster, state: Path, tmp_path: Path, managers: list[Manager]
) -> None:
    cluster.namespace("split")
    proxy = Proxy(cluster.api_port())
    manager = Manager(state, cluster.kubeconfig_via(proxy.port, tmp_path / "kubeconfig"))
    managers.append(manager)
    cluster.create("split", SEEDS / "leonardo-rc.yaml", SEEDS / "leonardo-svc.yaml", SEEDS / "nginx-rc.yaml")
    eventually(lambda: len(addresses(state, "split")) == 6, what="6 endpoints")
    before = addresses(state, "split")
    # cut the watch streams; meanwhile delete the nginx controller, its pods and the service, compact etcd
    # and restart the API server (its watch cache starts over), so that the manager's next watch gets 410
    proxy.cut()
    cluster.core.delete_namespaced_replication_controller("nginx", "split", propagation_policy="Orphan")
    for pod in cluster.core.list_namespaced_pod("split", label_selector="app=nginx").items:
        cluster.core.delete_namespaced_pod(pod.metadata.name, "split", grace_period_seconds=0)
    cluster.core.delete_namespaced_service(
        "ftleonardo", "split", _preload_content=False
    )  # 1.20 answers a Status
    leonardo = [p.metadata.name for p in cluster.core.list_namespaced_pod("split").items]
    cluster.compact_etcd()
    cluster.restart_apiserver()
    proxy.mend()
    eventually(
        lambda: sorted(addresses(state, "split")) == sorted(leonardo), timeout=90, what="nginx endpoints gone"
    )
    assert "Pod: watch from" in manager.output() and "expired (410 Gone); listing again" in manager.output()
    # each kind relists on its own: the Service's deletion may land a batch after the pods'
    eventually(lambda: not listed(state, "ServiceVIP", "split"), what="ftleonardo's VIP gone")
    assert {p.metadata.name for p in listed(state, "Pod", "split")} == set(leonardo)
    # a restart allocates no new address for an existing pod
    assert manager.terminate() == 0
    again = Manager(state, cluster.kubeconfig)
    managers.append(again)
    cluster.core.patch_namespaced_pod(leonardo[0], "split", {"metadata": {"labels": {"touched": "yes"}}})
    eventually(
        lambda: "touched" in {k for p in listed(state, "Pod", "split") for k in p.metadata.labels},
        what="restarted",
    )
    assert addresses(state, "split") == {n: before[n] for n in leonardo}
    assert again.terminate() == 0
    proxy.close()


@contextmanager
def _two_replicas(
    cluster: Cluster, tmp_path: Path, managers: list[Manager], namespace: str
) -> Iterator[tuple[Ledger, Manager, Manager]]:
    """A namespace and two `kube watch` replicas on a new etcd ledger: `a` leads, `b` stands by."""
    (tmp_path / "etcd").mkdir()
    members = EtcdCluster(tmp_path / "etcd")
    try:
        ledger = members.ledger()
        cluster.namespace(namespace)
        first = Manager(tmp_path / "a", cluster.kubeconfig, members.url, "a")
        managers.append(first)
        eventually(lambda: _leaders(ledger) == [("a", [])], what="a leads")
        second = Manager(tmp_path / "b", cluster.kubeconfig, members.url, "b")
        managers.append(second)
        eventually(lambda: _leaders(ledger) == [("a", ["b"])], what="b stands by")
        yield ledger, first, second
    finally:
        members.stop()


def _deployment(cluster: Cluster, namespace: str, app: str, replicas: int) -> None:
    containers = [{"name": "c", "image": "nginx"}]
    template = {"metadata": {"labels": {"app": app}}, "spec": {"containers": containers}}
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": app}}, "template": template}
    cluster.apps.create_namespaced_deployment(namespace, {"metadata": {"name": app}, "spec": spec})


def test_two_replicas_lose_their_leader_while_100_pods_come(
    cluster: Cluster, tmp_path: Path, managers: list[Manager]
) -> None:
    """Two `kube watch` replicas on one etcd ledger; the leader SIGKILLed while a deployment of 100 pods
    comes: the standby takes over within 6 s and every pod gets an endpoint, a distinct address and its
    status in the API server."""
    with _two_replicas(cluster, tmp_path, managers, "ha") as (ledger, first, second):
        _deployment(cluster, "ha", "many", 100)
        eventually(lambda: len(_ledger_addresses(ledger, "ha")) >= 10, what="the first endpoints")
        first.kill()
        killed = time.monotonic()
        eventually(lambda: _leaders(ledger)[0][0] == "b", timeout=15, what="b leads")
        takeover = time.monotonic() - killed
        assert takeover < 6, takeover
        eventually(lambda: len(_ledger_addresses(ledger, "ha")) == 100, timeout=90, what="100 endpoints")
        held = _ledger_addresses(ledger, "ha")
        assert len(set(held.values())) == 100  # no address handed out twice

        def shown() -> dict[str, str]:
            return {p.metadata.name: p.status.pod_ip for p in cluster.core.list_namespaced_pod("ha").items}

        eventually(lambda: shown() == held, timeout=60, what="every pod's IP in the API server")
        print(f"takeover {takeover:.2f} s after the leader's SIGKILL")
        assert second.terminate() == 0


def _leaders(ledger: Ledger) -> list[tuple[str | None, list[str]]]:
    return [(c.leader, c.standbys) for c in controllers(ledger)]


def _ledger_addresses(ledger: Ledger, namespace: str) -> dict[str, str]:
    found = objects.list_objects(ledger, lookup_kind("Endpoint"), namespace)[0]
    return {e.metadata.name: str(e.spec.addresses[0]) for e in found}


def test_a_paused_leader_steps_down_and_writes_nothing(
    cluster: Cluster, tmp_path: Path, managers: list[Manager]
) -> None:
    """The leader SIGSTOPped beyond its lease: the standby takes over and serves a new deployment; the old
    leader, continued, finds itself deposed and stands by, and its stale view writes nothing."""
    with _two_replicas(cluster, tmp_path, managers, "pause") as (ledger, first, second):
        first.process.send_signal(signal.SIGSTOP)
        eventually(lambda: _leaders(ledger)[0][0] == "b", timeout=15, what="b leads")
        _deployment(cluster, "pause", "late", 5)
        eventually(lambda: len(_ledger_addresses(ledger, "pause")) == 5, what="5 endpoints by b")
        held = _ledger_addresses(ledger, "pause")
        revision = ledger.revision()
        first.process.send_signal(signal.SIGCONT)
        eventually(lambda: "standing by" in first.output(), timeout=20, what="a stands by")
        assert _leaders(ledger)[0][0] == "b"
        assert _ledger_addresses(ledger, "pause") == held
        term = ledger.get("/controllers/kube/leader")
        assert term is not None and b'"b"' in term.value and term.mod_revision <= revision
        assert second.terminate() == 0


def test_a_dual_stack_cluster_as_the_api_server_allocates_it(
    cluster: Cluster, state: Path, managers: list[Manager]
) -> None:
    """The API server runs dual stack (kube-testenv: IPv4 primary): the Services' ClusterIPs and families
    are its own, Isthmus's VIPs follow them, and the pods' podIPs it is given are of both families."""
    ledger = open_ledger(state)
    try:
        dual = KubeConfig.model_validate(
            {
                "podCidrs": ["10.32.0.0/12", "fd00:10:32::/56"],
                "serviceCidrs": ["10.254.0.0/16", "fd00:10:254::/112"],
                "externalPools": ["203.0.113.0/24", "2001:db8:113::/64"],
            }
        )
        Reconciler(ledger, KubeConfig()).configure(dual)
    finally:
        ledger.close()
    cluster.namespace("dual")
    manager = Manager(state, cluster.kubeconfig)
    managers.append(manager)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "web"}]},
    }
    services = {
        policy: {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": policy.lower()},
            "spec": {"ipFamilyPolicy": policy, "selector": {"app": "web"}, "ports": [{"port": 80}]},
        }
        for policy in ("SingleStack", "PreferDualStack", "RequireDualStack")
    }
    path = state.parent / "dual.yaml"
    path.write_text(yaml.safe_dump_all([pod, *services.values()]))
    cluster.create("dual", path)

    def pod_ips() -> list[str]:
        shown = cluster.core.read_namespaced_pod("web", "dual").status
        assert shown.pod_ips and len(shown.pod_ips) == 2
        return [p.ip for p in shown.pod_ips]

    ips = eventually(pod_ips, what="the pod's IPs of both families")
    assert [":" in ip for ip in ips] == [False, True]
    endpoint = {e.metadata.name: e for e in listed(state, "Endpoint", "dual")}["web"]
    assert [str(a) for a in endpoint.spec.addresses] == ips

    def vips() -> dict[str, list[str]]:
        found = {v.metadata.name: [str(a) for a in v.spec.vips] for v in listed(state, "ServiceVIP", "dual")}
        assert len(found) == 3
        return found

    made = eventually(vips, what="3 VIPs")
    for name in services:
        given = cluster.core.read_namespaced_service(name.lower(), "dual").spec
        assert made[name.lower()] == given.cluster_ips, name  # the API server's, in its order
        assert len(given.cluster_ips) == (1 if name == "SingleStack" else 2)
    slices = DynamicClient(cluster.api).resources.get(
        api_version="discovery.k8s.io/v1beta1", kind="EndpointSlice"
    )

    def families() -> set[str]:  # the endpointslice controller's, one slice per family of the service
        found = slices.get(namespace="dual", label_selector="kubernetes.io/service-name=preferdualstack")
        return {s.addressType for s in found.items if s.endpoints}

    eventually(lambda: families() == {"IPv4", "IPv6"}, what="EndpointSlices of both families")
    outside = {  # no selector: its backends are only in the EndpointSlice made for it
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "outside"},
        "spec": {"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]},
    }
    cluster.core.create_namespaced_service("dual", outside)
    slices.create(
        namespace="dual",
        body={
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "outside-v6", "labels": {"kubernetes.io/service-name": "outside"}},
            "addressType": "IPv6",
            "endpoints": [
                {"addresses": ["2001:db8:99::5"]},
                {"addresses": ["2001:db8:99::6"], "conditions": {"ready": False}},
            ],
            "ports": [{"port": 80}],
        },
    )

    def backends() -> list[tuple[str, bool]]:
        vip = {v.metadata.name: v for v in listed(state, "ServiceVIP", "dual")}["outside"]
        return [(str(b.address), b.ready) for b in vip.spec.backends]

    assert eventually(backends, what="the sliced backends") == [
        ("2001:db8:99::5", True),
        ("2001:db8:99::6", False),
    ]
