"""Lab topology files: defaults, addresses, the router and the outside client, and errors that name the
problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from isthmus.lab.topology import DEFAULT, Speaker, Topology, TopologyError, load

WITH_ROUTER = DEFAULT.with_name("three-nodes-router.yaml")


def load_text(tmp_path: Path, text: str) -> Topology:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return load(path)


def test_the_default_topology_has_three_nodes_and_the_seeds() -> None:
    topology = load(DEFAULT)
    assert topology.addresses() == {
        "node-1": "192.168.77.10",
        "node-2": "192.168.77.11",
        "node-3": "192.168.77.12",
    }
    assert all(Path(m).exists() for m in topology.manifests)


def test_the_router_topology_has_the_router_the_outside_client_and_the_seeds() -> None:
    topology = load(WITH_ROUTER)
    assert topology.router is not None and topology.router.asn == 64500
    assert topology.router_address() == "192.168.77.1"
    assert topology.outside is not None and str(topology.outside.address) == "198.51.100.10"
    assert [n.asn for n in topology.nodes] == [64512] * 3
    assert list(topology.addresses().values()) == ["192.168.77.10", "192.168.77.11", "192.168.77.12"]
    assert topology.manifests == load(DEFAULT).manifests


def test_router_outside_and_node_asn_have_defaults(tmp_path: Path) -> None:
    topology = load_text(
        tmp_path,
        "name: t\nunderlay: 10.9.0.0/24\nrouter: {}\noutside: {}\nnodes: [{name: a}, {name: b, asn: 65001}]",
    )
    assert topology.router is not None and topology.router.asn == 64500
    assert topology.router_address() == "10.9.0.1"
    assert topology.outside is not None and str(topology.outside.address) == "198.51.100.10"
    assert [n.asn for n in topology.nodes] == [64512, 65001]


def test_given_addresses_are_kept_and_the_others_skip_them(tmp_path: Path) -> None:
    topology = load_text(
        tmp_path, "name: t\nunderlay: 10.9.0.0/24\nnodes: [{name: a, address: 10.9.0.10}, {name: b}]"
    )
    assert topology.addresses() == {"a": "10.9.0.10", "b": "10.9.0.11"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: t\nnodes: [{name: a}\n", "not YAML"),
        ("name: T!\nnodes: [{name: a}]", "name"),
        ("name: t\nnodes: []", "nodes"),
        ("name: t\nnodes: [{name: a}, {name: a}]", "node names repeat"),
        ("name: t\nnodes: [{name: a, address: 10.0.0.1}]", "not in the underlay 192.168.77.0/24"),
        ("name: t\nunderlay: 8.8.8.0/24\nnodes: [{name: a}]", "must be a private subnet"),
        ("name: t\nnodes: [{name: a}]\nrouters: []", "routers"),
        ("name: t\nnodes: [{name: a}]\nmanifests: [nowhere.yaml]", "manifests not found"),
        ("name: t\nnodes: [{name: a}]\noutside: {}", "outside: the outside client needs a router"),
        ("name: t\nnodes: [{name: a}]\nrouter: {asn: 0}", "router.asn: Input should be greater"),
        ("name: t\nnodes: [{name: a}]\nrouter: {as: 1}", "router.as: Extra inputs"),
        ("name: t\nnodes: [{name: a, asn: 64500}]\nrouter: {}", "node a: asn 64500 is the router's"),
        ("name: t\nnodes: [{name: a, address: 192.168.77.1}]\nrouter: {}", "192.168.77.1 is the router's"),
        ("name: t\nnodes: [{name: router}]", "node router: the names underlay, router, outside are"),
        ("name: t\nnodes: [{name: a}]\nrouter: {}\noutside: {address: 203.0.113.5}", "outside.address"),
        ("name: t\nnodes: [{name: a}]\nrouter: {}\noutside: {address: 198.51.100.1}", "other than the"),
        ("name: t\nnodes: [{name: a}]\nrouter: {}\noutside: {address: 10.0.0.1}", "host of 198.51.100.0/24"),
        ("name: t\nunderlay: 198.51.100.0/24\nnodes: [{name: a}]", "apart from the lab's public"),
        ("name: t\nnodes: [{name: a, cluster: os}]", "node a: cluster os is not one of `clusters`"),
        ("name: t\nclusters: [{name: os, asn: 64600}]\nnodes: [{name: a}]", "an AS of its own"),
        ("name: t\nclusters: [{name: main, asn: 1}]\nnodes: [{name: a}]", "use `main`"),
        (
            "name: t\nclusters: [{name: os, asn: 1}]\nnodes: [{name: a, address: 192.168.77.3}]",
            "192.168.77.3 is a federation speaker's address",
        ),
    ],
)
def test_bad_topologies_are_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=r"t\.yaml") as caught:
        load_text(tmp_path, text)
    assert message in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml"):
        load(tmp_path / "nope.yaml")


def test_each_cluster_has_a_speaker_on_the_underlay(tmp_path: Path) -> None:
    text = "name: t\nclusters: [{name: os, asn: 64601}]\nnodes: [{name: a}, {name: b, cluster: os}]"
    topology = load_text(tmp_path, text)
    assert topology.speakers() == {
        "main": Speaker("", "192.168.77.2", 64600),
        "os": Speaker("os", "192.168.77.3", 64601),
    }
    doubled = topology.model_copy(update={"controllers": 2}).speakers()
    assert [(n, s.address) for n, s in doubled.items()] == [
        ("main", "192.168.77.2"),
        ("os", "192.168.77.3"),
        ("main-2", "192.168.77.4"),
        ("os-2", "192.168.77.5"),
    ]
    assert load_text(tmp_path, "name: t\nnodes: [{name: a}]").speakers() == {}
