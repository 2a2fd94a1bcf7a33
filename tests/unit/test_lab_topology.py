"""Lab topology files: defaults, addresses, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from isthmus.lab.topology import DEFAULT, Topology, TopologyError, load


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
    ],
)
def test_bad_topologies_are_refused_naming_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TopologyError, match=r"t\.yaml") as caught:
        load_text(tmp_path, text)
    assert message in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml"):
        load(tmp_path / "nope.yaml")
