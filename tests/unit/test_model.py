"""Model validation: every bad input is refused with a message naming the field and the value."""

from __future__ import annotations

from typing import Any

import pytest

from isthmus.model import LabelSelector, ManifestError, Subnet, lookup_kind, parse_manifests
from isthmus.model.netpol import parse_network_policy
from tests.conftest import manifest, obj


def error_of(*docs: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_manifests(manifest(*docs), "m.yaml")
    return str(caught.value)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            obj("Subnet", "s", "t", {"network": "n", "cidr": "10.0.0.1/24"}),
            "spec.cidr: '10.0.0.1/24' has host bits set; did you mean 10.0.0.0/24?",
        ),
        (
            obj("Subnet", "s", "t", {"network": "n", "cidr": "10.0.0.0/33"}),
            "spec.cidr: '10.0.0.0/33' is not a CIDR",
        ),
        (
            obj("Subnet", "s", "t", {"network": "n", "cidr": "10.0.0.0/24", "gateway": "10.9.0.1"}),
            "gateway 10.9.0.1 is outside 10.0.0.0/24",
        ),
        (
            obj(
                "Subnet",
                "s",
                "t",
                {
                    "network": "n",
                    "cidr": "10.0.0.0/24",
                    "allocationPools": [
                        {"start": "10.0.0.10", "end": "10.0.0.20"},
                        {"start": "10.0.0.15", "end": "10.0.0.30"},
                    ],
                },
            ),
            "allocation pools 10.0.0.10-10.0.0.20 and 10.0.0.15-10.0.0.30 overlap",
        ),
        (
            obj(
                "Subnet",
                "s",
                "t",
                {
                    "network": "n",
                    "cidr": "10.0.0.0/24",
                    "allocationPools": [{"start": "10.0.0.1", "end": "10.0.0.9"}],
                },
            ),
            "allocation pool 10.0.0.1-10.0.0.9 contains the gateway 10.0.0.1",
        ),
        (
            obj("VirtualNetwork", "v", "t", {"vni": 16777216}),
            "spec.vni: Input should be less than or equal to 16777215",
        ),
        (obj("VirtualNetwork", "v", "t", {"importTargets": ["65001:x"]}), "'65001:x' is not a route target"),
        (
            obj("VirtualNetwork", "v", "t", {"external": True, "egress": True}),
            "an external network is outside already",
        ),
        (
            obj("VirtualNetwork", "v", "t", {"exportTargets": ["70000:70000"]}),
            "route target '70000:70000' is out of range",
        ),
        (
            obj("VirtualNetwork", "v", "t", {"mode": "bridged"}),
            "spec.mode: Input should be 'overlay' or 'routed'",
        ),
        (obj("VirtualNetwork", "Bad_Name", "t"), "metadata.name: 'Bad_Name' is not a valid name"),
        (obj("VirtualNetwork", "v", "t", {"vnii": 5}), "spec.vnii: Extra inputs are not permitted"),
        (
            obj("Endpoint", "e", "t", {"network": "n", "mac": "01:00:00:00:00:01"}),
            "is a multicast MAC address",
        ),
        (
            obj("Endpoint", "e", "t", {"network": "n", "addresses": ["10.0.0.1", "10.0.0.1"]}),
            "addresses contain duplicates",
        ),
        (
            obj("Endpoint", "e", "t", {"network": "n", "kind": "container"}),
            "spec.kind: Input should be 'pod', 'vm' or 'host'",
        ),
        (
            obj("ServiceVIP", "s", "t", {"network": "n", "ports": [{"port": 80}, {"port": 80}]}),
            "port 80/TCP is listed twice",
        ),
        (
            obj("ServiceVIP", "s", "t", {"network": "n", "ports": [{"port": 0}]}),
            "spec.ports.0.port: Input should be greater",
        ),
        (
            obj("Policy", "p", "t", {"rules": [{"action": "allow", "ports": [{"port": 80}]}]}),
            "ports need protocol TCP, UDP or SCTP, not any",
        ),
        (
            obj(
                "Policy",
                "p",
                "t",
                {"rules": [{"action": "allow", "protocol": "TCP", "ports": [{"port": 90, "endPort": 80}]}]},
            ),
            "endPort 80 is below port 90",
        ),
        (
            obj(
                "Policy",
                "p",
                "t",
                {"rules": [{"action": "deny", "source": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]},
            ),
            "except 11.0.0.0/16 is not inside cidr 10.0.0.0/8",
        ),
        (
            obj("Node", "n1", "t", {"address": "192.168.0.1"}),
            "Node is not namespaced; remove metadata.namespace",
        ),
        (
            obj("Node", "n1", None, {"address": "192.168.0.1", "bgp": {"asn": 64512, "peers": []}}),
            "spec.bgp.peers: List should have at least 1 item",
        ),
        (
            obj(
                "Node",
                "n1",
                None,
                {
                    "address": "192.168.0.1",
                    "bgp": {"asn": 0, "peers": [{"address": "192.168.0.9", "asn": 1}]},
                },
            ),
            "spec.bgp.asn: Input should be greater than or equal to 1",
        ),
        (
            obj(
                "Node",
                "n1",
                None,
                {
                    "address": "192.168.0.1",
                    "bgp": {"asn": 1, "peers": [{"address": "192.168.0.9", "asn": 2}] * 2},
                },
            ),
            "peers repeat an address: 192.168.0.9, 192.168.0.9",
        ),
        (
            {"apiVersion": "isthmus.io/v1", "kind": "Gadget", "metadata": {"name": "g"}},
            "unknown kind 'Gadget'",
        ),
        (
            {"apiVersion": "isthmus.io/v2", "kind": "Tenant", "metadata": {"name": "g"}},
            "Tenant has no version 'v2'",
        ),
        ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}, "metadata: Field required"),
    ],
)
def test_invalid_objects_name_field_and_value(doc: dict[str, Any], expected: str) -> None:
    message = error_of(doc)
    assert message.startswith("m.yaml: document 1")
    assert expected in message


def test_malformed_yaml_names_the_place() -> None:
    with pytest.raises(
        ManifestError, match=r"m.yaml: malformed YAML at line 3, column 1: .*expected.* node content"
    ):
        parse_manifests("kind: Tenant\nmetadata: {name: [\n", "m.yaml")


def test_documents_default_namespace_and_keep_kubernetes_fields() -> None:
    text = manifest(
        obj("VirtualNetwork", "v"),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"app": "x"}, "generateName": "p-"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        },
    )
    network, pod = parse_manifests(text, namespace="team")
    assert network.metadata.namespace == "team"
    assert pod.metadata.namespace == "team"
    dumped = pod.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["spec"] == {"containers": [{"name": "c", "image": "nginx"}]}
    assert dumped["metadata"]["generateName"] == "p-"


def test_subnet_allocation_ranges_skip_network_gateway_and_broadcast() -> None:
    (subnet,) = parse_manifests(manifest(obj("Subnet", "s", "t", {"network": "n", "cidr": "10.0.0.0/29"})))
    assert isinstance(subnet, Subnet)
    assert subnet.spec.offset_ranges() == [(2, 6)]
    (mid,) = parse_manifests(
        manifest(obj("Subnet", "s", "t", {"network": "n", "cidr": "10.0.0.0/29", "gateway": "10.0.0.4"}))
    )
    assert isinstance(mid, Subnet)
    assert mid.spec.offset_ranges() == [(1, 3), (5, 6)]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "a"}, False),
        (
            {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
            {"a": "1"},
            False,
        ),
    ],
)
def test_label_selectors(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is matches


def test_selector_operators_check_their_values() -> None:
    with pytest.raises(ValueError, match="operator In on 'k' needs values"):
        LabelSelector.model_validate({"matchExpressions": [{"key": "k", "operator": "In"}]})


ALL_PODS = {"podSelector": {}}


@pytest.mark.parametrize(
    ("declared", "stored"),
    [  # a NetworkPolicy created in kube-apiserver 1.20.2 and its spec read back
        ({"spec": {"podSelector": None}}, ALL_PODS),
        ({"spec": {}}, ALL_PODS),
        ({"spec": None}, ALL_PODS),
        ({}, ALL_PODS),
        ({"spec": {"podSelector": None, "ingress": None, "egress": None, "policyTypes": None}}, ALL_PODS),
        (
            {
                "spec": {
                    "podSelector": {"matchLabels": None, "matchExpressions": None},
                    "ingress": [{"from": [{"podSelector": None, "namespaceSelector": {}}], "ports": None}],
                }
            },
            {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
        ),
        ({"spec": {"podSelector": {}, "ingress": [None]}}, {"podSelector": {}, "ingress": [{}]}),
        (
            {"spec": {"podSelector": {}, "ingress": [{"ports": [None, {"protocol": None, "port": None}]}]}},
            {"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP"}, {"protocol": "TCP"}]}]},
        ),
        (
            {
                "spec": {
                    "podSelector": {},
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": None}}]}],
                }
            },
            {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]},
        ),
    ],
)
def test_network_policy_nulls_read_as_the_api_server_stores_them(
    declared: dict[str, Any], stored: dict[str, Any]
) -> None:
    assert parse_network_policy(declared) == parse_network_policy({"spec": stored})


@pytest.mark.parametrize("peer", [{"podSelector": None}, None])
def test_a_network_policy_peer_of_nulls_is_no_peer(peer: dict[str, Any] | None) -> None:
    """kube-apiserver 1.20.2: spec.ingress[0].from[0]: Required value: must specify a peer."""
    with pytest.raises(ValueError, match="a peer needs podSelector, namespaceSelector or ipBlock"):
        parse_network_policy({"spec": {"podSelector": {}, "ingress": [{"from": [peer]}]}})


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("vn", "VirtualNetwork"),
        ("Endpoints", "Endpoint"),
        ("endpoints.core", "Endpoints"),
        ("svc", "Service"),
        ("fip", "FloatingIP"),
    ],
)
def test_kind_names_resolve(name: str, kind: str) -> None:
    assert lookup_kind(name).kind == kind
