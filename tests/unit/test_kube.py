"""The Kubernetes network manager on manifests: the seeds' scenario, isolation modes, scaling, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from isthmus.intent import IntentError
from isthmus.kube.config import KubeConfig
from isthmus.kube.sync import reconcile
from isthmus.kube.translate import TranslationError
from isthmus.model import (
    Endpoint,
    FloatingIP,
    KubeObject,
    Policy,
    ServiceVIP,
    load_manifests,
    lookup_kind,
    parse_manifests,
)
from isthmus.store import Ledger, objects

SEEDS = Path(__file__).parents[2] / "examples" / "seeds"


def listed(ledger: Ledger, kind: str, namespace: str | None = None) -> list[Any]:
    return objects.list_objects(ledger, lookup_kind(kind), namespace)[0]


def kube(*docs: dict[str, Any]) -> list[Any]:
    return parse_manifests(yaml.safe_dump_all(list(docs)))


def namespace(name: str, isolation: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "annotations": {"isthmus.io/isolation": isolation}},
    }


def snapshot(ledger: Ledger) -> list[tuple[str, bytes]]:
    return [(kv.key, kv.value) for kv in ledger.list("/")[0]]


def test_seeds_manifests_give_pods_vips_and_a_floating_ip(ledger: Ledger) -> None:
    reconcile(ledger, KubeConfig(), load_manifests([str(SEEDS)]))
    pods = listed(ledger, "Pod", "default")
    assert sorted(p.metadata.name.rsplit("-", 1)[0] for p in pods) == ["leonardo"] * 3 + ["nginx"] * 3
    addresses = {p.metadata.name: p.body["status"]["podIP"] for p in pods}
    assert len(set(addresses.values())) == 6 and all(a.startswith("10.32.0.") for a in addresses.values())
    endpoints = {e.metadata.name: e for e in listed(ledger, "Endpoint", "default")}
    assert {n: str(e.spec.addresses[0]) for n, e in endpoints.items()} == addresses
    vips = {v.metadata.name: v for v in listed(ledger, "ServiceVIP", "default")}
    assert isinstance(vips["ftleonardo"], ServiceVIP)
    assert sorted(str(b.address) for b in vips["ftleonardo"].spec.backends) == sorted(
        a for n, a in addresses.items() if n.startswith("leonardo")
    )
    assert [p.port for p in vips["ftleonardo"].spec.ports] == [8000]
    (fip,) = listed(ledger, "FloatingIP", "default")
    assert (
        isinstance(fip, FloatingIP)
        and fip.spec.service == "nginx"
        and str(fip.spec.address).startswith("203.0.113.")
    )
    services = {s.metadata.name: s.body for s in listed(ledger, "Service", "default")}
    assert services["ftleonardo"]["spec"]["clusterIP"] == str(vips["ftleonardo"].spec.vip)
    assert services["nginx"]["status"]["loadBalancer"]["ingress"] == [{"ip": str(fip.spec.address)}]
    assert 30000 <= services["nginx"]["spec"]["ports"][0]["nodePort"] <= 32767
    revision = ledger.revision()
    again = reconcile(ledger, KubeConfig(), load_manifests([str(SEEDS)]))  # level-triggered: changes nothing
    assert {a.action for a in again} == {"unchanged"} and ledger.revision() == revision


def test_collection_mode_gives_a_network_per_collection_and_uses_policies(ledger: Ledger) -> None:
    manifests = [
        namespace("default", "collection"),
        *(yaml.safe_load(p.read_text()) for p in sorted(SEEDS.iterdir())),
    ]
    reconcile(ledger, KubeConfig(), kube(*manifests))
    networks = {(n.metadata.namespace, n.metadata.name) for n in listed(ledger, "VirtualNetwork")}
    assert {("default", "leonardo"), ("default", "nginx")} <= networks
    endpoints = {
        e.metadata.name.rsplit("-", 1)[0]: e.spec.network for e in listed(ledger, "Endpoint", "default")
    }
    assert endpoints == {"leonardo": "leonardo", "nginx": "nginx"}
    (policy,) = listed(ledger, "Policy", "default")
    assert isinstance(policy, Policy) and policy.metadata.name == "uses-ftleonardo"
    rule = policy.spec.rules[0]
    assert (rule.action, rule.destination.service) == ("allow", "ftleonardo")
    assert rule.source.selector is not None and rule.source.selector.match_labels == {"uses": "ftleonardo"}
    subnets = {s.spec.network: str(s.spec.cidr) for s in listed(ledger, "Subnet", "default")}
    assert len(set(subnets.values())) == 2  # each collection its own block of the pod CIDR


def test_a_pod_keeps_its_network_and_address_for_life(ledger: Ledger) -> None:
    seeds = [yaml.safe_load(p.read_text()) for p in sorted(SEEDS.iterdir())]
    reconcile(ledger, KubeConfig(), kube(*seeds))  # cluster mode: every pod on isthmus-system/pods
    before = {
        e.metadata.name: (e.spec.network, e.spec.addresses) for e in listed(ledger, "Endpoint", "default")
    }
    nginx = next(p for p in listed(ledger, "Pod", "default") if p.metadata.name.startswith("nginx"))
    pod = nginx.model_dump(by_alias=True, exclude_none=True)
    relabelled = pod | {"metadata": {**pod["metadata"], "labels": {"name": "other"}}}
    reconcile(ledger, KubeConfig(), kube(namespace("default", "collection"), relabelled))
    after = {
        e.metadata.name: (e.spec.network, e.spec.addresses) for e in listed(ledger, "Endpoint", "default")
    }
    assert after == before  # the namespace's isolation and the pod's labels changed: nothing moved
    held = {p.metadata.name: p.body["status"]["podIP"] for p in listed(ledger, "Pod", "default")}
    assert held == {name: str(addresses[0]) for name, (_, addresses) in before.items()}
    moved = {
        e.metadata.name: e.metadata.annotations.get("isthmus.io/declared-network")
        for e in listed(ledger, "Endpoint", "default")
    }
    assert moved[nginx.metadata.name] == "other" and set(moved.values()) == {"other", "leonardo", "nginx"}
    # a pod made afterwards lands in the network its namespace and labels declare now
    scaled = next(
        d for d in seeds if d["kind"] == "ReplicationController" and d["metadata"]["name"] == "nginx"
    )
    scaled["spec"]["replicas"] = 4
    reconcile(ledger, KubeConfig(), kube(scaled))
    endpoints = {e.metadata.name: e for e in listed(ledger, "Endpoint", "default")}
    (new,) = set(endpoints) - set(before)
    assert (
        endpoints[new].spec.network == "nginx"
        and "isthmus.io/declared-network" not in endpoints[new].metadata.annotations
    )
    assert {(e.metadata.namespace, e.metadata.name) for e in listed(ledger, "VirtualNetwork")} >= {
        ("isthmus-system", "pods"),
        ("default", "nginx"),
    }
    # deleted and made again, a pod is a new pod: it goes where it is declared
    reconcile(ledger, KubeConfig(), removed=[(lookup_kind("Pod"), "default", nginx.metadata.name)])
    reconcile(
        ledger,
        KubeConfig(),
        kube(relabelled | {"metadata": {k: v for k, v in relabelled["metadata"].items() if k != "uid"}}),
    )
    again = {e.metadata.name: e for e in listed(ledger, "Endpoint", "default")}[nginx.metadata.name]
    assert again.spec.network == "other"


def test_scaling_and_deleting_controllers_and_namespaces(ledger: Ledger) -> None:
    rc = yaml.safe_load((SEEDS / "nginx-rc.yaml").read_text())
    rc["metadata"]["namespace"] = "web"
    reconcile(
        ledger, KubeConfig(), kube({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}}, rc)
    )
    assert len(listed(ledger, "Endpoint", "web")) == 3
    kept = {e.metadata.name: e.spec.addresses for e in listed(ledger, "Endpoint", "web")}
    rc["spec"]["replicas"] = 5
    reconcile(ledger, KubeConfig(), kube(rc))
    grown = {e.metadata.name: e.spec.addresses for e in listed(ledger, "Endpoint", "web")}
    assert len(grown) == 5 and all(grown[n] == a for n, a in kept.items())  # no pod renumbered
    rc["spec"]["replicas"] = 1
    reconcile(ledger, KubeConfig(), kube(rc))
    assert len(listed(ledger, "Pod", "web")) == len(listed(ledger, "Endpoint", "web")) == 1
    reconcile(ledger, KubeConfig(), removed=[(lookup_kind("Namespace"), None, "web")])
    assert listed(ledger, "Pod", "web") == listed(ledger, "Endpoint", "web") == []
    assert listed(ledger, "ReplicationController", "web") == []
    assert "web" not in {t.metadata.name for t in listed(ledger, "Tenant")}


@pytest.mark.parametrize(
    ("docs", "error", "message"),
    [
        (
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "s"},
                    "spec": {"ports": [{"name": "http"}]},
                }
            ],
            TranslationError,
            "Service default/s: spec.ports[0].port must be a number, got None",
        ),
        (
            [
                {
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "metadata": {"name": "p"},
                    "spec": {
                        "podSelector": {
                            "matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]
                        }
                    },
                }
            ],
            TranslationError,
            "NetworkPolicy default/p: spec.podSelector.matchExpressions.0.operator",
        ),
        ([namespace("default", "tribal")], TranslationError, "annotation isthmus.io/isolation is 'tribal'"),
    ],
)
def test_bad_kubernetes_input_changes_nothing(
    ledger: Ledger, docs: list[dict[str, Any]], error: type[Exception], message: str
) -> None:
    reconcile(ledger, KubeConfig(), load_manifests([str(SEEDS / "leonardo-rc.yaml")]))
    before = snapshot(ledger)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        reconcile(ledger, KubeConfig(), kube(*docs))
    assert snapshot(ledger) == before


def test_an_exhausted_pod_cidr_is_a_clear_error(ledger: Ledger) -> None:
    config = KubeConfig(pod_cidrs=["10.32.0.0/29"], pod_block=29)  # type: ignore[list-item]
    rc = yaml.safe_load((SEEDS / "nginx-rc.yaml").read_text())
    reconcile(ledger, config, kube(rc))
    before = snapshot(ledger)
    rc["spec"]["replicas"] = 8
    with pytest.raises(IntentError, match=r"subnet pool kube-pods \(10.32.0.0/29\) is exhausted"):
        reconcile(ledger, config, kube(rc))
    assert snapshot(ledger) == before


def test_an_exhausted_floating_ip_pool_is_a_clear_error_and_keeps_the_rest(ledger: Ledger) -> None:
    config = KubeConfig(external_pools=["203.0.113.0/30"])  # type: ignore[list-item]

    def lb(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]},
        }

    reconcile(ledger, config, kube(lb("one")))  # a /30 holds one floating IP beside its gateway
    before = snapshot(ledger)
    with pytest.raises(IntentError, match=r"isthmus-system/public is exhausted \(203.0.113.0/30\)"):
        reconcile(ledger, config, kube(lb("two")))
    assert snapshot(ledger) == before  # the first service and its floating IP stay as they were


def test_pods_are_placed_on_declared_nodes(ledger: Ledger) -> None:
    nodes = [
        {
            "apiVersion": "isthmus.io/v1",
            "kind": "Node",
            "metadata": {"name": f"n{i}"},
            "spec": {"address": f"192.0.2.{i}"},
        }
        for i in (1, 2, 3)
    ]
    reconcile(ledger, KubeConfig(), kube(*nodes))
    rc = yaml.safe_load((SEEDS / "leonardo-rc.yaml").read_text())
    rc["spec"]["replicas"] = 12
    reconcile(ledger, KubeConfig(), kube(rc))
    placed = {e.spec.node for e in listed(ledger, "Endpoint", "default") if isinstance(e, Endpoint)}
    assert placed == {"n1", "n2", "n3"}
    assert {
        p.body["status"]["hostIP"] for p in listed(ledger, "Pod", "default") if isinstance(p, KubeObject)
    } == {"192.0.2.1", "192.0.2.2", "192.0.2.3"}


def test_declared_nodes_are_never_replaced_by_the_default_one(ledger: Ledger) -> None:
    node = {
        "apiVersion": "isthmus.io/v1",
        "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {"address": "198.51.100.1"},
    }
    reconcile(ledger, KubeConfig(), kube(node, yaml.safe_load((SEEDS / "nginx-rc.yaml").read_text())))
    (stored,) = listed(ledger, "Node")
    assert str(stored.spec.address) == "198.51.100.1"


def _shop(egress: str) -> list[dict[str, Any]]:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"isthmus.io/egress-ip": egress}},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": "web"}]},
    }
    return [namespace, pod]


def test_a_namespace_egress_address_becomes_its_egress_ip(ledger: Ledger) -> None:
    reconcile(ledger, KubeConfig(), kube(*_shop("203.0.113.200")))
    (egress,) = listed(ledger, "EgressIP", "shop")
    assert (str(egress.spec.address), egress.spec.pool) == ("203.0.113.200", "isthmus-system/public")
    # the namespace and its pod deleted together (as `delete -f` of this manifest does)
    removed = [(lookup_kind("Namespace"), None, "shop"), (lookup_kind("Pod"), "shop", "web")]
    reconcile(ledger, KubeConfig(), removed=removed)
    assert listed(ledger, "EgressIP", "shop") == [] and listed(ledger, "Endpoint", "shop") == []


@pytest.mark.parametrize(
    ("address", "error", "message"),
    [
        ("198.51.100.77", IntentError, "198.51.100.77 is in no subnet of network isthmus-system/public"),
        ("not-an-ip", TranslationError, "annotation isthmus.io/egress-ip is 'not-an-ip', not an IP address"),
    ],
)
def test_an_egress_address_outside_the_pool_is_a_clear_error(
    ledger: Ledger, address: str, error: type[Exception], message: str
) -> None:
    reconcile(ledger, KubeConfig(), kube(*_shop("203.0.113.200")))
    before = snapshot(ledger)
    with pytest.raises(error, match=message):
        reconcile(ledger, KubeConfig(), kube(*_shop(address)))
    assert snapshot(ledger) == before


def test_a_namespace_network_mode_makes_its_own_networks_routed(ledger: Ledger) -> None:
    routed = {"isthmus.io/isolation": "namespace", "isthmus.io/network-mode": "routed"}
    flat = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flat", "annotations": routed}}
    reconcile(
        ledger,
        KubeConfig(),
        kube(flat, {**_shop("203.0.113.200")[1], "metadata": {"name": "web", "namespace": "flat"}}),
    )
    (network,) = listed(ledger, "VirtualNetwork", "flat")
    assert network.spec.mode == "routed"
    (block,) = listed(ledger, "Subnet", "flat")
    assert block.spec.node == "node-1"  # the pod's node (the default one, here)
    before = snapshot(ledger)
    cluster = {**flat, "metadata": {"name": "flat", "annotations": {"isthmus.io/network-mode": "routed"}}}
    with pytest.raises(
        TranslationError, match=r"annotation isthmus\.io/network-mode is 'routed'; overlay or routed"
    ):
        reconcile(ledger, KubeConfig(), kube(cluster))
    assert snapshot(ledger) == before


def test_route_targets_of_a_namespace_go_to_its_named_networks(ledger: Ledger) -> None:
    annotations = {
        "isthmus.io/isolation": "collection",
        "isthmus.io/route-targets": "leonardo=64600:1,64600:2",
    }
    space = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cms", "annotations": annotations}}
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "cms", "labels": {"name": name}},
            "spec": {"containers": [{"name": name, "image": name}]},
        }
        for name in ("leonardo", "nginx")
    ]
    reconcile(ledger, KubeConfig(), kube(space, *pods))
    networks = {n.metadata.name: n.spec for n in listed(ledger, "VirtualNetwork", "cms")}
    assert (
        networks["leonardo"].import_targets == networks["leonardo"].export_targets == ["64600:1", "64600:2"]
    )
    assert networks["nginx"].import_targets == []
    before = snapshot(ledger)
    for bad, message in (("leonardo", "is not NETWORK=RT"), ("leonardo=65536:70000", "out of range")):
        broken = {
            **space,
            "metadata": {"name": "cms", "annotations": {**annotations, "isthmus.io/route-targets": bad}},
        }
        with pytest.raises(TranslationError, match=message):
            reconcile(ledger, KubeConfig(), kube(broken, *pods))
        assert snapshot(ledger) == before


def test_a_network_policy_with_icmp_ports_is_refused(ledger: Ledger) -> None:
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "ping"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
    }
    with pytest.raises(TranslationError, match="protocol ICMP is not one of TCP, UDP, SCTP"):
        reconcile(ledger, KubeConfig(), kube(policy))
