"""Service behaviours and isolation modes, as `isthmus trace` shows them on manifests applied offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from isthmus.cli.main import cli
from tests.conftest import manifest

SEEDS = Path(__file__).parents[2] / "examples" / "seeds"
NODES = [
    {"apiVersion": "isthmus.io/v1", "kind": "Node", "metadata": {"name": n}, "spec": {"address": a}}
    for n, a in (("node-1", "192.0.2.11"), ("node-2", "192.0.2.12"))
]


def _pod(
    name: str, node: str, labels: dict[str, str], ports: list[dict[str, Any]], **status: Any
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "web", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "agnhost", "ports": ports}]},
    }
    if status:
        pod["status"] = status
    return pod


def _service(name: str, selector: dict[str, str], target: int | str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "web"},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": target}], **spec},
    }


def _cli(state: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--state", str(state), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "json" in args else result.output


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Namespace web: pods a (node-1, port "http" 8080) and b (node-2, "http" 9090), c not ready
    (node-1); services: named target port, numeric, none selected, not-ready published, affinity."""
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    docs = [
        *NODES,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}},
        _pod("a", "node-1", {"app": "web", "pod": "a"}, [{"name": "http", "containerPort": 8080}], **ready),
        _pod("b", "node-2", {"app": "web", "pod": "b"}, [{"name": "http", "containerPort": 9090}], **ready),
        _pod(
            "c",
            "node-1",
            {"app": "slow"},
            [{"name": "http", "containerPort": 80}],
            conditions=[{"type": "Ready", "status": "False"}],
        ),
        _service("named", {"app": "web"}, "http"),
        _service("only-a", {"pod": "a"}, 8080),
        _service("empty", {"app": "nothing"}, 80),
        _service("unready", {"app": "slow"}, 80),
        _service("published", {"app": "slow"}, 80, publishNotReadyAddresses=True),
        _service(
            "sticky",
            {"app": "web"},
            "http",
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
        ),
        _service("external", {"pod": "a"}, 8080, externalIPs=["198.51.100.20"]),
        _service("nodeport", {"pod": "a"}, 8080, type="NodePort"),
    ]
    path = tmp_path / "m.yaml"
    path.write_text(manifest(*docs))
    _cli(tmp_path / "state", "apply", "-f", str(path))
    return tmp_path / "state"


def _trace(state: Path, src: str, dst: str, port: int = 80, protocol: str = "TCP") -> Any:
    return _cli(state, "trace", src, dst, "--port", str(port), "--protocol", protocol, "-o", "json")


def test_named_target_ports_resolve_per_backend(state: Path) -> None:
    walked = _trace(state, "web/c", "svc/web/named")
    assert walked["verdict"] == "allow"
    ports = sorted(b["port"] for b in walked["backends"])
    assert ports == [8080, 9090]  # "http" is 8080 on a and 9090 on b
    dnat = next(h for h in walked["hops"] if h["step"] == "service")
    assert dnat["rule"] == "ServiceVIP web/named" and "1 of 2 backends" in dnat["detail"]


def test_a_service_without_endpoints_rejects(state: Path) -> None:
    for service in ("empty", "unready"):
        walked = _trace(state, "web/a", f"svc/web/{service}")
        assert walked["verdict"] == "deny"
        assert walked["hops"][-1]["detail"].endswith("rejected: no endpoints")


def test_not_ready_backends_are_used_only_when_published(state: Path) -> None:
    walked = _trace(state, "web/a", "svc/web/published")
    assert walked["verdict"] == "allow" and [b["port"] for b in walked["backends"]] == [80]


def test_client_ip_affinity_is_in_the_compiled_service(state: Path) -> None:
    walked = _trace(state, "web/a", "svc/web/sticky")
    dnat = next(h for h in walked["hops"] if h["step"] == "service")
    assert "ClientIP affinity 600 s" in dnat["detail"]


def test_hairpin_a_pod_reaches_itself_through_its_service(state: Path) -> None:
    walked = _trace(state, "web/a", "svc/web/only-a")
    assert walked["verdict"] == "allow"
    assert "hairpin" in next(h for h in walked["hops"] if h["step"] == "service")["detail"]


def test_cross_node_traffic_goes_through_vxlan(state: Path) -> None:
    walked = _trace(state, "web/a", "web/b", port=9090)
    assert walked["verdict"] == "allow"
    route = next(h for h in walked["hops"] if h["step"] == "route")
    assert route["node"] == "node-1" and "VXLAN" in route["detail"] and "192.0.2.12" in route["detail"]
    assert walked["hops"][-1] == {
        "node": "node-2",
        "step": "deliver",
        "detail": f"to web/b {route['detail'].split(':')[0]}:9090/TCP",
        "rule": "",
    }


def test_node_ports_are_served_on_every_node_address(state: Path) -> None:
    services = _cli(state, "get", "services", "-n", "web", "-o", "json")
    found = services if isinstance(services, list) else services.get("items", [services])
    nodeport = next(s for s in found if s["metadata"]["name"] == "nodeport")["spec"]["ports"][0]["nodePort"]
    for node in ("192.0.2.11", "192.0.2.12"):
        walked = _trace(state, "web/b", node, port=nodeport)
        assert walked["verdict"] == "allow" and walked["backends"] == [
            {"address": walked["backends"][0]["address"], "port": 8080, "verdict": "allow"}
        ]


def test_pods_reach_node_addresses_but_not_their_infrastructure(state: Path, tmp_path: Path) -> None:
    own = _trace(state, "web/b", "192.0.2.12", port=6443)  # b is on node-2
    assert own["verdict"] == "allow" and own["hops"][-1]["detail"].startswith("192.0.2.12: node node-2's own")
    other = _trace(state, "web/b", "192.0.2.11", port=80)
    assert other["verdict"] == "allow"
    assert [h["detail"] for h in other["hops"][1:]] == [
        "192.0.2.11: node node-1's address, through node-2's uplink",
        "source NAT to node-2's address",
        "to node node-1's host stack",
    ]
    for port, protocol, what in ((179, "TCP", "BGP"), (4789, "UDP", "VXLAN")):
        guarded = _trace(state, "web/b", "192.0.2.11", port=port, protocol=protocol)
        assert guarded["verdict"] == "deny" and guarded["hops"][-1]["rule"] == "node infrastructure"
        assert what in guarded["hops"][-1]["detail"]
    kept = tmp_path / "kept.yaml"
    annotations = {"isthmus.io/isolation": "namespace", "isthmus.io/node-access": "false"}
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "kept", "annotations": annotations},
    }
    pod = _pod("k", "node-1", {}, []) | {"metadata": {"name": "k", "namespace": "kept"}}
    kept.write_text(manifest(namespace, pod))
    _cli(state, "apply", "-f", str(kept))
    walked = _trace(state, "kept/k", "192.0.2.11", port=80)
    assert (
        walked["verdict"] == "deny"
        and walked["hops"][-1]["rule"] == "VirtualNetwork kept/pods nodeAccess: false"
    )


def test_udp_traces_the_reply_and_external_ips_are_served(state: Path) -> None:
    assert _trace(state, "web/b", "198.51.100.20", port=80)["verdict"] == "allow"
    walked = _trace(state, "web/b", "web/a", port=53, protocol="UDP")
    assert walked["hops"][-1]["step"] == "reply"


def test_pods_leave_the_cluster_through_source_nat_to_their_node(state: Path) -> None:
    for pod, node, address in (("web/a", "node-1", "192.0.2.11"), ("web/b", "node-2", "192.0.2.12")):
        walked = _trace(state, pod, "198.51.100.7", port=443)
        assert walked["verdict"] == "allow"
        route, snat = walked["hops"][-2:]
        assert (
            route["node"] == node
            and route["detail"] == f"198.51.100.7: leaves the cluster through {node}'s uplink"
        )
        assert route["rule"].startswith("0.0.0.0/0 egress in table")
        assert snat["step"] == "snat" and snat["detail"].endswith(f"-> {address} (masquerade)")
        assert snat["rule"] == "VirtualNetwork isthmus-system/pods egress"
    reply = _trace(state, "web/a", "198.51.100.7", port=53, protocol="UDP")["hops"][-1]
    assert reply["step"] == "reply" and reply["detail"].startswith("198.51.100.7:53 -> 192.0.2.11:")


@pytest.mark.parametrize(
    "destination",
    [
        "10.33.0.9",  # in the pod CIDR, in no allocated block
        "10.254.200.200",  # in the service CIDR, no service
    ],
)
def test_cluster_addresses_never_leave_through_egress(state: Path, destination: str) -> None:
    walked = _trace(state, "web/a", destination, port=22)
    assert walked["verdict"] == "deny"
    assert walked["hops"][-1]["detail"] == f"{destination}: unreachable"
    assert "(cluster-internal) in table" in walked["hops"][-1]["rule"]


def test_egress_policy_ip_blocks_apply_to_addresses_outside(state: Path, tmp_path: Path) -> None:
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "outside", "namespace": "web"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}}],
                    "ports": [{"port": 443}],
                }
            ],
        },
    }
    (tmp_path / "p.yaml").write_text(manifest(policy))
    _cli(state, "apply", "-f", str(tmp_path / "p.yaml"))
    assert _trace(state, "web/a", "198.51.100.7", port=443)["verdict"] == "allow"
    for destination, port in (("198.51.100.7", 80), ("198.51.100.200", 443)):
        walked = _trace(state, "web/a", destination, port=port)
        assert walked["verdict"] == "deny" and walked["hops"][-1]["rule"] == "web/outside"
    assert _trace(state, "web/b", "198.51.100.200", port=80)["verdict"] == "allow"  # not selected


def test_from_outside_only_services_lead_in(state: Path) -> None:
    pod = _trace(state, "web/a", "198.51.100.7", port=443)["hops"][0]["detail"].split()[1]
    walked = _trace(state, "198.51.100.7", pod, port=8080)
    assert walked["verdict"] == "deny"
    assert walked["hops"][-1]["detail"] == f"{pod}: not routed into the cluster from outside"
    walked = _trace(state, "198.51.100.7", "198.51.100.20", port=80)
    assert walked["verdict"] == "allow" and walked["hops"][-1]["detail"] == f"to web/a {pod}:8080/TCP"


def test_from_outside_a_floating_ip_enters_a_node_with_a_backend_and_stays_there(state: Path) -> None:
    lb = _service("lb", {"app": "web"}, "http", type="LoadBalancer")
    path = state.parent / "lb.yaml"
    path.write_text(manifest(lb))
    _cli(state, "apply", "-f", str(path))
    fip = _cli(state, "get", "service", "lb", "-n", "web", "-o", "json")["status"]["loadBalancer"]["ingress"][
        0
    ]["ip"]
    walked = _trace(state, "198.51.100.7", fip)
    hops = [(h["node"], h["step"]) for h in walked["hops"]]
    assert hops[:3] == [("node-1", "source"), ("node-1", "enter"), ("node-1", "service")]
    assert (
        walked["hops"][1]["detail"]
        == f"{fip} is announced by node-1, node-2; the router spreads flows over them"
    )
    assert "(1 of 1 local backends, random)" in walked["hops"][2]["detail"]  # b, on node-2, is not chosen
    assert walked["verdict"] == "allow" and walked["hops"][-1]["detail"].startswith("to web/a ")


def test_the_matrix_grid_marks_allowed_and_denied(state: Path) -> None:
    grid = _cli(state, "matrix", "--port", "80", "--to", "services", "-n", "web").splitlines()
    assert grid[0].split("\t")[0] == "-" and "web/empty" in grid[0].split("\t")
    header = grid[0].split("\t")
    row = dict(zip(header, grid[1].split("\t"), strict=True))
    assert row["-"] == "web/a" and row["web/empty"] == "X" and row["web/named"] == "."


def _leonardo(tmp_path: Path, mode: str) -> Path:
    files = tmp_path / "leonardo"
    files.mkdir()
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": {"isthmus.io/isolation": mode}},
    }
    (files / "00-ns.yaml").write_text(manifest(namespace, *NODES))
    for seed in SEEDS.glob("*.yaml"):
        (files / seed.name).write_text(
            seed.read_text().replace("metadata:", "metadata:\n  namespace: shop", 1)
        )
    _cli(tmp_path / "state", "apply", "-f", str(files))
    return tmp_path / "state"


def test_collection_mode_lets_nginx_use_ftleonardo_and_nothing_else(tmp_path: Path) -> None:
    state = _leonardo(tmp_path, "collection")
    result = _cli(state, "matrix", "--port", "8000", "--to", "services", "-n", "shop", "-o", "json")
    for source, row in result["allowed"].items():
        assert row["shop/ftleonardo"] is True, source  # leonardo pods: own collection; nginx: uses
    pods = {p.split("/")[1].split("-")[0]: p for p in result["sources"]}
    walked = _trace(state, pods["nginx"], "svc/shop/ftleonardo", port=8000)
    assert [h["rule"] for h in walked["hops"] if h["step"] == "policy"] == ["shop/uses-ftleonardo rules[0]"]
    denied = _trace(state, pods["leonardo"], "svc/shop/nginx", port=80)
    assert denied["verdict"] == "deny"
    assert denied["hops"][-1]["rule"].startswith("unreachable 10.32.0.0/12 (cluster-internal) in table")
    assert denied["hops"][-1]["rule"].endswith("of network shop/leonardo")
    direct = _trace(state, pods["nginx"], pods["leonardo"], port=8000)  # not through the VIP
    assert direct["verdict"] == "deny" and "leaked only for traffic to" in direct["hops"][-1]["detail"]


def test_cluster_mode_reaches_everything_and_tenants_are_isolated_in_namespace_mode(tmp_path: Path) -> None:
    state = _leonardo(tmp_path, "cluster")
    result = _cli(state, "matrix", "--port", "80", "--to", "pods", "-n", "shop", "-o", "json")
    assert all(all(row.values()) for row in result["allowed"].values())
    other = tmp_path / "other"
    other.mkdir()
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "rival", "annotations": {"isthmus.io/isolation": "namespace"}},
    }
    pod = _pod("r", "node-1", {"app": "r"}, [{"containerPort": 80}])
    pod["metadata"]["namespace"] = "rival"
    (other / "rival.yaml").write_text(manifest(ns, pod))
    _cli(state, "apply", "-f", str(other))
    target = result["sources"][0]
    walked = _trace(state, "rival/r", target)
    assert walked["verdict"] == "deny" and walked["hops"][-1]["rule"].endswith("of network rival/pods")
